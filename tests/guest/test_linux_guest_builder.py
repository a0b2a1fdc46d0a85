"""The test guest's initramfs writer produces a newc archive the real `cpio` tool reads back."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from linux_guest.builder import INIT_SCRIPT, LinuxKernel, _modinfo_depends, build_initramfs  # noqa: E402


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed")
def test_initramfs_is_a_valid_newc_archive(tmp_path):
    mods = tmp_path / "modules"
    mods.mkdir()
    (mods / "virtio.ko").write_bytes(b"\x7fELF fake module\x00depends=\x00")
    (mods / "order").write_text("virtio\n")
    kernel = LinuxKernel("linux-image-test", tmp_path / "vmlinuz", tmp_path / "map", tmp_path / "cfg", mods)
    out = build_initramfs(tmp_path / "initramfs.cpio", kernel)
    archive = out.read_bytes()
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True)
    lines = {line.split()[-1]: line for line in listing.stdout.decode().splitlines()}
    assert {"init", "bin/busybox", "dev/console", "lib/modules/virtio.ko", "lib/modules/order"} <= set(lines)
    assert lines["dev/console"].startswith("crw") and "5,   1" in lines["dev/console"]
    extracted = tmp_path / "x"
    extracted.mkdir()
    subprocess.run(
        ["cpio", "-id", "--no-absolute-filenames", "init", "lib/modules/order"],
        input=archive, cwd=extracted, capture_output=True, check=True,
    )  # fmt: skip
    assert (extracted / "init").read_text() == INIT_SCRIPT
    assert (extracted / "lib/modules/order").read_text() == "virtio\n"


def test_modinfo_depends_parsing(tmp_path):
    ko = tmp_path / "m.ko"
    ko.write_bytes(b"junk\x00license=GPL\x00depends=virtio,virtio_ring\x00vermagic=6.1\x00")
    assert _modinfo_depends(ko) == ["virtio", "virtio_ring"]
    ko.write_bytes(b"junk\x00depends=\x00")
    assert _modinfo_depends(ko) == []

"""`fbsd-hil repro --kernel K --root-image IMG` end to end on the MockFreeBSDKernel (a STAND-IN, NOT FreeBSD).

The real chain: a GRUB ISO with the root image as a ``type=mfs_root`` module and ``-s`` -> libvirt + QEMU
TCG -> the single-user stage (init's "Enter full pathname of shell ...") -> our marker-wrapped shell
session on the console (``mount -u -o rw /``, ``dumpon``, ``sysctl``) -> the shell-driven triggers ->
the dump on the raw dump disk -> host extraction and verification. The mock's shell is a line
interpreter imitating only what these steps need (``src/mock_sh.h``); the real kernel's dialogue is
replayed in tests/freebsd/test_single_user.py. The root images are real UFS2 images made by Debian's
makefs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mock_freebsd_kernel import build_mock_freebsd_kernel

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def mock_kernel() -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    return build_mock_freebsd_kernel()


@pytest.fixture(scope="module")
def root_image(tmp_path_factory) -> Path:
    if shutil.which("makefs") is None:
        pytest.skip("needs Debian's makefs (Debian package makefs)")
    base = tmp_path_factory.mktemp("root")
    (base / "src" / "sbin").mkdir(parents=True)
    (base / "src" / "README").write_text("fbsd-hil test root image for the mock kernel stand-in\n")
    image = base / "root.ufs"
    subprocess.run(
        ["makefs", "-t", "ffs", "-o", "version=2", "-s", "4m", str(image), str(base / "src")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    image.chmod(0o444)
    return image


def _libvirt_or_skip() -> None:
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _repro(kernel: Path, image: Path, tmp_path: Path, *args: str) -> tuple[int, dict | None, str, str]:
    """`fbsd-hil repro --kernel K --root-image IMG` as a user runs it: (exit, report, stderr, console)."""
    report = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--root-image", str(image),
        "--memory", "128", "--accel", "tcg", "--artifacts", str(tmp_path / "artifacts"),
        "--report", str(report), "--boot-timeout", "120", "--keep-images", *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    consoles = sorted((tmp_path / "artifacts").glob("*/*/console.log"))
    console = consoles[-1].read_text(errors="replace").replace("\r", "") if consoles else ""
    return proc.returncode, json.loads(report.read_text()) if report.is_file() else None, proc.stderr, console


def _passed(rc: int, report: dict | None, stderr: str, kind: str) -> None:
    assert rc == 0 and report is not None, stderr[-4000:]
    assert report["passed"] is True and report["dump_kind"] == kind
    assert report["pages_differing_unexplained"] == 0 and report["missing_pages"] == 0
    assert all(c["ok"] for c in report["crosschecks"])


def test_sysctl_trigger_from_the_single_user_shell(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    before = _sha(root_image)
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "sysctl")
    _passed(rc, report, stderr, "mini")
    assert "Enter full pathname of shell or RETURN for /bin/sh: " in console
    assert "mount -u -o rw /" in console and "kernel dumps on /dev/vtbd0" in console
    assert "KDB: enter: sysctl debug.kdb.enter" in console
    assert _sha(root_image) == before, "the user's root image must never be written"


def test_panic_trigger_from_the_single_user_shell(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "panic")
    _passed(rc, report, stderr, "mini")
    assert "sysctl debug.kdb.panic=1" in console and "panic: kdb_sysctl_panic" in console


def test_full_dump_selected_by_sysctl_at_runtime(mock_kernel, root_image, tmp_path):
    """The boot's kernel environment asks for a minidump; the shell's `sysctl debug.minidump=0` wins."""
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(
        mock_kernel, root_image, tmp_path, "--trigger", "sysctl", "--minidump", "0",
        "--kenv", "debug.minidump=1",
    )
    _passed(rc, report, stderr, "full")
    assert "debug.minidump: 1 -> 0" in console


def test_a_root_image_that_does_not_mount_stops_at_once(mock_kernel, tmp_path):
    _libvirt_or_skip()
    junk = tmp_path / "not-ufs.img"
    junk.write_bytes(bytes(range(256)) * 8192)
    before = _sha(junk)
    rc, report, stderr, _ = _repro(mock_kernel, junk, tmp_path, "--trigger", "sysctl")
    assert rc == 2 and report is None
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("fbsd-hil repro: FAILED at boot: RootImageNotMounted: ")
    assert str(junk) in line and "mountroot> prompt" in line
    assert "Mounting from ufs:/dev/md0 failed with error 19." in line
    assert _sha(junk) == before

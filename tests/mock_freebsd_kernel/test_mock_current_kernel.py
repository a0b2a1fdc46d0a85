"""The MockFreeBSDKernel in "current kernel" mode (a stand-in, NOT FreeBSD): at GRUB's hand-over it
behaves like a FreeBSD 13+ kernel (preload_initkmdp(): metadata only under the module type "elf kernel",
otherwise a panic before any console, i.e. a silent triple fault).

`fbsd-hil repro --kernel` must run the whole chain on it through the product's GRUB ISO, and with the
GRUB kernel-type fix disabled (``FBSD_HIL_GRUB_FIXES=relocator``) must fail at boot within seconds with
the cause in its one-line error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mock_freebsd_kernel import build_mock_freebsd_kernel
from mock_runs import libvirt_or_skip as _libvirt_or_skip

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def current_kernel() -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    return build_mock_freebsd_kernel(current_kernel=True)


def test_current_mode_is_a_separate_build_with_its_own_identity(current_kernel, tmp_path):
    from elftools.elf.elffile import ELFFile

    old = build_mock_freebsd_kernel()
    assert old != current_kernel and old.parent != current_kernel.parent, "distinct cache keys"
    notes = {}
    for path in (old, current_kernel):
        with open(path, "rb") as f:
            section = ELFFile(f).get_section_by_name(".note.tag")
            assert section is not None, path
            note = next(iter(section.iter_notes()))
            desc = section.data()[-4:]
        assert note["n_name"] == "FreeBSD" and note["n_descsz"] == 4
        notes[path] = int.from_bytes(desc, "little")
    assert notes == {old: 1201000, current_kernel: 1500000}
    data = current_kernel.read_bytes()
    assert b"\0elf kernel\0" in data and b"elf64 kernel" not in data
    assert b"unable to find kernel metadata" in data and b"15.0-MOCK" in data
    assert b"\0elf64 kernel\0" in old.read_bytes(), "12.x mode accepts GRUB's type too"


def _repro(kernel: Path, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--memory", "128",
           "--accel", "tcg", "--artifacts", str(tmp_path / "artifacts"), "--report", str(tmp_path / "r.json"),
           "--boot-timeout", "600"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False,
                          env={**os.environ, **(env or {})})


@pytest.mark.vm
def test_repro_runs_the_whole_chain_on_a_current_kernel(current_kernel, tmp_path):
    _libvirt_or_skip()
    proc = _repro(current_kernel, tmp_path, {"FBSD_HIL_GRUB_FIXES": "relocator,kernel-type"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True and report["dump_kind"] == "mini"
    assert "boot: grub after" in proc.stdout + proc.stderr, "boot progress is printed"
    import reader

    with reader.open_vmcore(report["dump"], kernel=current_kernel) as vm:
        assert vm.info["header"]["version"] == 3, "13+ kernels write minidump v3"
        assert "FreeBSD 15.0-MOCK" in vm.msgbuf()


@pytest.mark.vm
def test_repro_without_the_type_fix_names_the_cause_in_seconds(current_kernel, tmp_path):
    _libvirt_or_skip()
    t = time.monotonic()
    proc = _repro(current_kernel, tmp_path, {"FBSD_HIL_GRUB_FIXES": "relocator"})
    took = time.monotonic() - t
    assert proc.returncode == 2, proc.stderr[-4000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "FAILED at boot" in line and "QEMU logged a triple fault" in line
    assert 'only under the module type "elf kernel"' in line and '"elf64 kernel"' in line
    assert took < 120, f"took {took:.0f} s with a 600 s boot timeout"

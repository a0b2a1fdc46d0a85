"""`fbsd-hil repro` on the mock kernel when the dump cannot finish: the guest hangs or resets halfway
through the dump (``mock.fault_in_dump=hang|reset``), or the dump disk is too small
(``--dump-disk-mib``). Each ends with exit status 2 at step dump, "dump incomplete", the console tail
and the run directory kept - within seconds, not at the size-based deadline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mock_runs import libvirt_or_skip as _libvirt_or_skip

ROOT = Path(__file__).resolve().parents[2]


def _repro_fails(kernel: Path, tmp_path: Path, *args: str) -> tuple[str, Path]:
    """Run repro expecting exit 2; returns (stderr, the run directory)."""
    artifacts = tmp_path / "artifacts"
    cmd = [sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--memory", "128",
           "--accel", "tcg", "--artifacts", str(artifacts), "--boot-timeout", "120", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "verification PASSED" not in proc.stdout + proc.stderr
    (run_dir,) = artifacts.iterdir()
    return proc.stderr, run_dir


@pytest.mark.vm
@pytest.mark.parametrize(
    ("knob", "why"),
    [
        ("hang", "the guest hung (no console output and no write to the dump disk for 10 s)"),
        ("reset", "the console closed (the guest reset, crashed or was destroyed mid-dump)"),
    ],
)
def test_a_guest_that_hangs_or_resets_mid_dump(mock_kernel, tmp_path, knob, why):  # noqa: F811
    _libvirt_or_skip()
    stderr, run_dir = _repro_fails(mock_kernel, tmp_path, "--kenv", f"mock.fault_in_dump={knob}")
    line = next(ln for ln in stderr.splitlines() if "FAILED at" in ln)
    assert "FAILED at dump: dump incomplete: ddb dump did not return to db>: " + why in line, stderr[-4000:]
    assert "last progress: minidump of" in line and str(run_dir) in line
    tail = (run_dir / "console-tail.txt").read_text()
    assert "Dumping " in tail and "..50%" in tail  # the evidence: the dump started, then stopped
    assert (run_dir / "dump-disk.raw").exists() and (run_dir / "live-before.raw").exists()


@pytest.mark.vm
def test_a_dump_disk_too_small(mock_kernel, tmp_path):  # noqa: F811
    _libvirt_or_skip()
    stderr, run_dir = _repro_fails(mock_kernel, tmp_path, "--dump-disk-mib", "4")
    line = next(ln for ln in stderr.splitlines() if "FAILED at" in ln)
    assert "FAILED at dump: dump incomplete: ddb dump failed: Dump failed. Partition too small" in line
    assert "Partition too small" in (run_dir / "console-tail.txt").read_text()

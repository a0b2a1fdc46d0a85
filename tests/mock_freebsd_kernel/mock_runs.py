"""`fbsd-hil repro` runs on the MockFreeBSDKernel stand-in as a user types them, for the tests here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def libvirt_or_skip() -> None:
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args: list[str], report: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness", "repro", *args, "--report", str(report)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)


def repro_bare_kernel(kernel: Path, tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    """`fbsd-hil repro --kernel K` (no root image): (exit status, JSON report, stderr)."""
    report = tmp_path / "report.json"
    proc = _run(
        ["--kernel", str(kernel), "--memory", "128", "--accel", "tcg",
         "--artifacts", str(tmp_path / "artifacts"), "--boot-timeout", "120", *args],
        report,
    )
    assert report.is_file(), f"no report; exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.returncode, json.loads(report.read_text()), proc.stderr


def repro_with_root_image(
    kernel: Path, image: Path, tmp_path: Path, *args: str
) -> tuple[int, dict | None, str, str]:
    """`fbsd-hil repro --kernel K --root-image IMG --keep-images`: (exit, report, stderr, console)."""
    report = tmp_path / "report.json"
    proc = _run(
        ["--kernel", str(kernel), "--root-image", str(image), "--memory", "128", "--accel", "tcg",
         "--artifacts", str(tmp_path / "artifacts"), "--boot-timeout", "120", "--keep-images", *args],
        report,
    )
    consoles = sorted((tmp_path / "artifacts").glob("*/*/console.log"))
    console = consoles[-1].read_text(errors="replace").replace("\r", "") if consoles else ""
    return proc.returncode, json.loads(report.read_text()) if report.is_file() else None, proc.stderr, console


def last_run_dir(tmp_path: Path) -> Path | None:
    runs = sorted(p for p in (tmp_path / "artifacts").glob("*") if p.is_dir())
    return runs[-1] if runs else None


def assert_passed(rc: int, report: dict | None, stderr: str, kind: str) -> None:
    """Exit 0, a verified dump of `kind`, nothing unexplained or missing, every cross-check agreeing."""
    assert rc == 0 and report is not None, stderr[-4000:]
    assert report["passed"] is True and report["dump_kind"] == kind
    assert report["pages_differing_unexplained"] == 0 and report["missing_pages"] == 0
    assert all(c["ok"] for c in report["crosschecks"])

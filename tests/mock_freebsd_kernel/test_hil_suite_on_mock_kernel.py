"""The `hil` tests themselves, run against the MockFreeBSDKernel (a stand-in, NOT FreeBSD).

In the default run every `hil` test skips (no FreeBSD here), so nothing would notice a broken fixture,
matrix cell or plugin path until a user ran `tox -e hil`. Here a child pytest runs the HIL suite with
`--fbsd-kernel <mock>`: the bare-kernel cells must pass, the cells a bare kernel cannot run (shell,
swap, compression) must skip with their reason, and none may fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from mock_freebsd_kernel import build_mock_freebsd_kernel

ROOT = Path(__file__).resolve().parents[2]
HIL_TESTS = ["tests/hil", "tests/freebsd/test_hil.py", "tests/images/test_images_hil.py"]


@pytest.mark.vm
def test_hil_suite_passes_on_the_mock_kernel(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    kernel = build_mock_freebsd_kernel()
    junit = tmp_path / "hil.xml"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)  # CI's --junitxml belongs to the outer run
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-m", "hil", "-p", "no:cacheprovider",
        "--fbsd-kernel", str(kernel), "--fbsd-memory", "128",
        "--fbsd-artifacts", str(tmp_path / "artifacts"), f"--junitxml={junit}", *HIL_TESTS,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"child pytest exited {proc.returncode}:\n{tail}"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    failed = int(suite.get("failures")) + int(suite.get("errors"))
    assert failed == 0, tail
    # the NMI/BREAK/ALT-break mini and full dump cells and the ddb session tests really ran
    assert tests - skipped >= 8, f"only {tests - skipped} of {tests} hil tests ran:\n{tail}"
    ran = {
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("skipped") is None and case.find("failure") is None and case.find("error") is None
    }
    for required in ("test_textdump_matches_the_console",):  # needs only ddb: runs on a bare kernel
        assert required in ran, f"{required} did not run:\n{tail}"
    reasons = [s.get("message", "") for s in suite.iter("skipped")]
    assert all(r.strip() for r in reasons), "every skipped cell says why"


@pytest.mark.vm
def test_hil_suite_with_a_root_image_runs_the_shell_driven_cells(tmp_path):
    """`--fbsd-kernel <mock> --fbsd-root-image <UFS2 image>`: the single-user shell is there, so the
    sysctl and panic trigger cells and the gzip/zstd (`dumpon -z/-Z`) cells must run and pass; what still
    skips says exactly why."""
    if shutil.which("gcc") is None or shutil.which("makefs") is None:
        pytest.skip("needs gcc and Debian's makefs (Debian packages gcc, makefs)")
    kernel = build_mock_freebsd_kernel()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "README").write_text("fbsd-hil test root image (mock kernel stand-in)\n")
    image = tmp_path / "root.ufs"
    subprocess.run(
        ["makefs", "-t", "ffs", "-o", "version=2", "-s", "4m", str(image), str(tmp_path / "root")],
        check=True, stdout=subprocess.DEVNULL,
    )
    junit = tmp_path / "hil.xml"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-m", "hil", "-p", "no:cacheprovider",
        "--fbsd-kernel", str(kernel), "--fbsd-root-image", str(image), "--fbsd-memory", "128",
        "--fbsd-artifacts", str(tmp_path / "artifacts"), f"--junitxml={junit}", *HIL_TESTS,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"child pytest exited {proc.returncode}:\n{tail}"
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    ran = {
        case.get("name")
        for case in suite.iter("testcase")
        if case.find("skipped") is None and case.find("failure") is None and case.find("error") is None
    }
    for cell in ("mini-sysctl-disk-none", "full-sysctl-disk-none", "mini-panic-disk-none",
                 "full-panic-disk-none",
                 # dumps onto the freebsd-swap partition of a GPT dump disk (dumpon /dev/vtbd0p2)
                 "mini-sysctl-swap-none", "full-panic-swap-none", "mini-nmi-swap-none",
                 "full-break-swap-none",
                 # dumpon -z / -Z in the shell: the mock kernel's own gzip / zstd encoders (mock_compress.h)
                 "mini-sysctl-disk-gzip", "full-sysctl-disk-zstd", "mini-nmi-disk-zstd",
                 "full-panic-disk-gzip"):
        assert f"test_dump_matrix[{cell}]" in ran, f"{cell} did not run:\n{tail}"
    assert "test_swap_partition_too_small_is_dump_incomplete" in ran, tail
    for test in ("test_dump_twice_in_one_ddb_session", "test_dump_twice_toggled_by_sysctl_from_the_shell",
                 "test_in_guest_witness_agrees_with_the_dump"):
        assert test in ran, f"{test} did not run:\n{tail}"
    reasons = [s.get("message", "") for s in suite.iter("skipped")]
    assert not any("has no shell" in r or "no userland" in r for r in reasons), reasons
    assert all(r.strip() for r in reasons), "every skipped cell says why"

"""Fixtures of the MockFreeBSDKernel's tests (a stand-in, NOT FreeBSD): the built kernel and a read-only
single-user root image made with Debian's makefs, shared by every test file here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mock_freebsd_kernel import build_mock_freebsd_kernel


@pytest.fixture(scope="session")
def mock_kernel() -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    return build_mock_freebsd_kernel()


@pytest.fixture(scope="session")
def root_image(tmp_path_factory) -> Path:
    """A tiny UFS2 image (read-only: a run must never write the user's root image)."""
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

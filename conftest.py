"""Repository-wide pytest configuration: where the shared real material lives.

The fbsd-hil pytest plugin itself (options such as --fbsd-image, the `hil` skip rule) is
registered through the package's ``pytest11`` entry point, so it also works for users who
install fbsd-hil into their own test suites.
"""

from __future__ import annotations

import bz2
import lzma
import os
from pathlib import Path

import pytest

# pytester drives the plugin tests in tests/plugin; pytest only accepts this in the rootdir conftest.
pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parent
TESTS_DATA = REPO_ROOT / "tests" / "data"
LLDB_FIXTURES = TESTS_DATA / "lldb-freebsd"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tests_data() -> Path:
    return TESTS_DATA


def _decompress_sparse(opener, src: Path, dst: Path) -> None:
    """Decompress, seeking over all-zero 64 KiB blocks: the LLDB vmcores are 75-127 MB of mostly zeros."""
    with opener(src, "rb") as fin, open(dst, "wb") as out:
        while block := fin.read(1 << 16):
            if block.count(0) == len(block):
                out.seek(len(block), 1)
            else:
                out.write(block)
        out.truncate()


@pytest.fixture(scope="session")
def lldb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real LLDB vmcores and kernels (tests/data/lldb-freebsd), decompressed once, read-only."""
    if not LLDB_FIXTURES.is_dir():
        pytest.fail(f"missing {LLDB_FIXTURES}: the real LLDB FreeBSD fixtures belong in the repository")
    out = tmp_path_factory.mktemp("lldb-freebsd")
    for src in sorted(LLDB_FIXTURES.glob("*.bz2")) + sorted(LLDB_FIXTURES.glob("*.xz")):
        dst = out / src.name.rsplit(".", 1)[0]
        _decompress_sparse(bz2.open if src.suffix == ".bz2" else lzma.open, src, dst)
        os.chmod(dst, 0o444)
    return out

"""Real LLDB FreeBSD fixtures for verification (decompressed once by the rootdir conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def lldb_fixtures(lldb_dir: Path) -> dict[str, Path]:
    """The real amd64 minidump, full dump and kernel (decompressed once by the rootdir conftest)."""
    return {
        "mini": lldb_dir / "vmcore-amd64-minidump",
        "full": lldb_dir / "vmcore-amd64-full",
        "kernel": lldb_dir / "kernel-amd64.elf",
    }


@pytest.fixture(scope="module")
def mini(lldb_fixtures):
    """The real amd64 minidump, opened with its kernel (cut short by LLDB: zero-filled tail)."""
    import reader

    with reader.open_vmcore(lldb_fixtures["mini"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        yield vm


@pytest.fixture
def mini_live(mini, lldb_fixtures, tmp_path):
    """A live image derived from the minidump (path, page-table root)."""
    from livebuild import write_live_from_minidump

    live, root = write_live_from_minidump(mini, lldb_fixtures["mini"], tmp_path / "live.raw")
    live.close()
    return tmp_path / "live.raw", root

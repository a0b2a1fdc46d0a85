"""Real LLDB FreeBSD fixtures, decompressed sparsely into the session's temporary directory."""

from __future__ import annotations

import bz2
import lzma
from pathlib import Path

import pytest

from harness.verify.live import PAGE_SIZE

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "lldb-freebsd"


def _decompress_sparse(src: Path, dst: Path, opener) -> Path:
    """Write the decompressed stream with all-zero pages left as holes (the files are mostly zeros)."""
    zero = bytes(PAGE_SIZE)
    with opener(src, "rb") as fin, open(dst, "wb") as fout:
        while True:
            block = fin.read(1 << 20)
            if not block:
                break
            for i in range(0, len(block), PAGE_SIZE):
                piece = block[i : i + PAGE_SIZE]
                if piece == zero[: len(piece)]:
                    fout.seek(len(piece), 1)
                else:
                    fout.write(piece)
        fout.truncate()
    return dst


@pytest.fixture(scope="session")
def lldb_fixtures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not FIXTURES.is_dir():
        pytest.fail(f"missing {FIXTURES} (reader-core copies the LLDB fixtures there)")
    out = tmp_path_factory.mktemp("lldb-freebsd")
    files = {
        "mini": ("vmcore-amd64-minidump.bz2", bz2.open),
        "full": ("vmcore-amd64-full.bz2", bz2.open),
        "kernel": ("kernel-amd64.elf.xz", lzma.open),
    }
    return {
        key: _decompress_sparse(FIXTURES / name, out / name.rsplit(".", 1)[0], opener)
        for key, (name, opener) in files.items()
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

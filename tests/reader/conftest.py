"""Real LLDB vmcores, decompressed once per session into a temp dir (sparse; never into the repo)."""

from __future__ import annotations

import bz2
import lzma
import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "lldb-freebsd"
FIXTURES = {
    "amd64-minidump": ("vmcore-amd64-minidump.bz2", "kernel-amd64.elf.xz"),
    "amd64-full": ("vmcore-amd64-full.bz2", "kernel-amd64.elf.xz"),
    "i386-minidump": ("vmcore-i386-minidump.bz2", "kernel-i386.elf.xz"),
    "arm64-minidump": ("vmcore-arm64-minidump.bz2", "kernel-arm64.elf.xz"),
}


def _sparse_copy(src, dst: Path) -> None:
    """Copy a decompressing stream, seeking over all-zero 64 KiB blocks (the fixtures are ~99% zero)."""
    zero = bytes(1 << 16)
    with open(dst, "wb") as out:
        while True:
            block = src.read(1 << 16)
            if not block:
                break
            if block == zero[: len(block)]:
                out.seek(len(block), 1)
            else:
                out.write(block)
        out.truncate()


@pytest.fixture(scope="session")
def lldb_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lldb-freebsd")
    for vmcore, kernel in FIXTURES.values():
        out = d / vmcore.removesuffix(".bz2")
        if not out.exists():
            with bz2.open(DATA / vmcore) as src:
                _sparse_copy(src, out)
        kout = d / kernel.removesuffix(".xz")
        if not kout.exists():
            with lzma.open(DATA / kernel) as src, open(kout, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return d


@pytest.fixture(scope="session")
def lldb_paths(lldb_dir):
    """name -> (vmcore path, kernel path)."""
    return {name: (lldb_dir / v.removesuffix(".bz2"), lldb_dir / k.removesuffix(".xz"))
            for name, (v, k) in FIXTURES.items()}

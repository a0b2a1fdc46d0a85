"""Real LLDB vmcores by name; the rootdir conftest decompresses them once (`lldb_dir`)."""

from __future__ import annotations

import pytest

FIXTURES = {
    "amd64-minidump": ("vmcore-amd64-minidump.bz2", "kernel-amd64.elf.xz"),
    "amd64-full": ("vmcore-amd64-full.bz2", "kernel-amd64.elf.xz"),
    "i386-minidump": ("vmcore-i386-minidump.bz2", "kernel-i386.elf.xz"),
    "arm64-minidump": ("vmcore-arm64-minidump.bz2", "kernel-arm64.elf.xz"),
}


@pytest.fixture(scope="session")
def lldb_paths(lldb_dir):
    """name -> (vmcore path, kernel path)."""
    return {name: (lldb_dir / v.removesuffix(".bz2"), lldb_dir / k.removesuffix(".xz"))
            for name, (v, k) in FIXTURES.items()}

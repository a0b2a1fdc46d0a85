"""Fixtures for the container tests: the real LLDB vmcores, decompressed sparse once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

NAMES = ("vmcore-amd64-minidump", "vmcore-amd64-full", "vmcore-i386-minidump", "vmcore-arm64-minidump")


@pytest.fixture(scope="session")
def lldb_vmcores(lldb_dir: Path) -> dict[str, Path]:
    """name -> the sparse, read-only vmcore the rootdir conftest decompressed."""
    return {name: lldb_dir / name for name in NAMES}


@pytest.fixture(scope="session")
def rsa_keys():
    """Two real 2048-bit RSA key pairs (the dump's and a wrong one) and a 3072-bit one, made once."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    return {
        "right": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "wrong": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "big": rsa.generate_private_key(public_exponent=65537, key_size=3072),
    }


@pytest.fixture(scope="session")
def lldb_kernels(lldb_dir: Path) -> dict[str, Path]:
    """The fixtures' kernel symbol tables (kernel-ARCH.elf)."""
    return {arch: lldb_dir / f"kernel-{arch}.elf" for arch in ("amd64", "i386", "arm64")}

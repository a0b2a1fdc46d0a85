"""Fixtures for the container tests: the real LLDB vmcores, decompressed sparse once per session."""

from __future__ import annotations

import bz2
import os
from pathlib import Path

import pytest

REPO_FIXTURES = Path(__file__).resolve().parents[1] / "data" / "lldb-freebsd"
SHARED_FIXTURES = Path("/work/shared/fixtures/lldb-freebsd")
NAMES = ("vmcore-amd64-minidump", "vmcore-amd64-full", "vmcore-i386-minidump", "vmcore-arm64-minidump")


def fixture_dir() -> Path:
    """The repository copy once reader-core has committed it, else the shared read-only one."""
    if (REPO_FIXTURES / f"{NAMES[0]}.bz2").exists():
        return REPO_FIXTURES
    return SHARED_FIXTURES


def _bunzip_sparse(src: Path, dst: Path) -> None:
    """bunzip2 into a sparse file: the vmcores are 75-127 MB of mostly zeros."""
    with bz2.open(src, "rb") as f, open(dst, "wb") as out:
        pos = 0
        while True:
            block = f.read(1 << 16)
            if not block:
                break
            if block.count(0) != len(block):
                out.seek(pos)
                out.write(block)
            pos += len(block)
        out.truncate(pos)


@pytest.fixture(scope="session")
def lldb_vmcores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    src = fixture_dir()
    if not (src / f"{NAMES[0]}.bz2").exists():
        pytest.fail(f"the real LLDB vmcores are missing from {REPO_FIXTURES} and {SHARED_FIXTURES}")
    out = tmp_path_factory.mktemp("lldb-vmcores")
    result = {}
    for name in NAMES:
        dst = out / name
        _bunzip_sparse(src / f"{name}.bz2", dst)
        os.chmod(dst, 0o444)
        result[name] = dst
    return result


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
def lldb_kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixtures' kernel symbol tables (kernel-ARCH.elf.xz), decompressed once."""
    import lzma

    out = tmp_path_factory.mktemp("lldb-kernels")
    result = {}
    for arch in ("amd64", "i386", "arm64"):
        dst = out / f"kernel-{arch}.elf"
        dst.write_bytes(lzma.decompress((fixture_dir() / f"kernel-{arch}.elf.xz").read_bytes()))
        result[arch] = dst
    return result

"""gzip/zstd vmcores (real `gzip`/`zstd` tools and Python libraries) and kernel-compressed device payloads."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest
import zstandard

from reader import device, source
from reader.errors import FormatError, TruncatedError
from tests.dumpwriter import containers as cw

FIXTURE = "vmcore-i386-minidump"


@pytest.fixture(scope="module")
def payload(lldb_vmcores) -> bytes:
    return lldb_vmcores[FIXTURE].read_bytes()


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed (it is in harness/data/debian-packages.txt's base set)")


@pytest.mark.parametrize("tool", ["gzip", "zstd"])
def test_real_tool_compressed_vmcore(tmp_path: Path, lldb_vmcores, payload: bytes, tool: str) -> None:
    _needs(tool)
    src = tmp_path / "vmcore.0"
    shutil.copyfile(lldb_vmcores[FIXTURE], src)
    subprocess.run([tool, "-q", "-k", str(src)] if tool == "zstd" else [tool, "-k", str(src)], check=True)
    comp = tmp_path / ("vmcore.0.gz" if tool == "gzip" else "vmcore.0.zst")
    assert source.detect(comp) == tool
    with source.open_payload(comp) as p:
        assert p.container == tool and p.header is None
        assert len(p.buffer) == len(payload) and p.buffer == payload


def test_python_libraries_and_multi_member(tmp_path: Path, payload: bytes) -> None:
    gz = tmp_path / "vmcore.1.gz"
    half = len(payload) // 2
    gz.write_bytes(gzip.compress(payload[:half]) + gzip.compress(payload[half:]))  # `cat a.gz b.gz`
    with source.open_payload(gz) as p:
        assert p.buffer == payload
    zst = tmp_path / "vmcore.1.zst"
    c = zstandard.ZstdCompressor(write_checksum=True)
    zst.write_bytes(c.compress(payload[:half]) + c.compress(payload[half:]))  # two frames, like pzstd
    with source.open_payload(zst) as p:
        assert p.buffer == payload


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_and_corrupt_streams(tmp_path: Path, payload: bytes, kind: str) -> None:
    blob = cw.kernel_gzip(payload) if kind == "gzip" else cw.kernel_zstd(payload)
    suffix = ".gz" if kind == "gzip" else ".zst"
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(TruncatedError) as e:
        source.open_payload(cut)
    assert str(cut) in str(e.value) and e.value.offset == len(blob) * 2 // 3
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xA5
    corrupt = tmp_path / f"corrupt{suffix}"
    corrupt.write_bytes(bytes(bad))
    with pytest.raises(FormatError) as e:
        source.open_payload(corrupt)
    assert "corrupt" in str(e.value) and str(corrupt) in str(e.value) and e.value.offset is not None
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(blob + b"trailing garbage")
    with pytest.raises(FormatError) as e:
        source.open_payload(junk)
    assert e.value.offset == len(blob)
    padded = tmp_path / f"padded{suffix}"
    padded.write_bytes(blob + b"\0" * 1000)  # a block's NUL tail is not an error
    with source.open_payload(padded) as p:
        assert p.buffer == payload


@pytest.mark.parametrize(
    ("comp", "suffix", "tool"), [(cw.COMP_GZIP, "gz", "gzip"), (cw.COMP_ZSTD, "zst", "zstd")]
)
def test_kernel_compressed_device_payload(
    tmp_path: Path, payload: bytes, comp: int, suffix: str, tool: str
) -> None:
    _needs(tool)
    blob = cw.kernel_gzip(payload) if comp == cw.COMP_GZIP else cw.kernel_zstd(payload)
    img = tmp_path / "dump.img"
    # the extent reserves the uncompressed size; the rest of it (and the last block's tail) is stale
    lay = cw.write_device_image(
        img,
        blob,
        compression=comp,
        dumpextent=len(payload),
        stale_fill=b"STALE-DATA" * 100,
        architecture="i386",
    )
    dd = device.find_dump(img)
    assert dd.compression == tool and dd.payload_length == len(blob) and dd.payload_offset == lay.payload
    with source.open_payload(img) as p:
        assert p.container == f"device+{tool}" and p.buffer == payload
    res = device.extract(img, tmp_path / "crash")
    assert res.vmcore.name == f"vmcore.0.{suffix}"
    assert res.vmcore.read_bytes() == blob  # savecore copies the compressed bytes unchanged
    assert f"  Compression: {tool}\n" in res.info.read_text()
    assert os_readlink(tmp_path / "crash" / f"vmcore.last.{suffix}") == f"vmcore.0.{suffix}"
    # the real tool accepts what the kernel wrote
    out = subprocess.run([tool, "-dc", str(res.vmcore)], check=True, capture_output=True).stdout
    assert out == payload
    with source.open_payload(res.vmcore) as p:
        assert p.buffer == payload


def os_readlink(p: Path) -> str:
    import os

    return os.readlink(p)


def test_compressed_device_payload_cut_short(tmp_path: Path, payload: bytes) -> None:
    blob = cw.kernel_zstd(payload)
    img = tmp_path / "dump.img"
    # a header that claims fewer compressed bytes than the stream has: the frame never ends
    cw.write_device_image(img, blob[: len(blob) - 100], compression=cw.COMP_ZSTD, dumpextent=len(payload))
    with pytest.raises(TruncatedError) as e:
        source.open_payload(img)
    assert str(img) in str(e.value)


def test_decompressed_payload_spools_sparse_not_into_memory(tmp_path: Path) -> None:
    """256 MiB of zero pages with a few marked pages: decoded into a sparse temp file and mapped."""
    page = b"\0" * 4096
    marked = {0: b"minidump FreeBSD/amd64".ljust(4096, b"\x01"), 40000: b"\x02" * 4096, 65535: b"\x03" * 4096}
    c = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    parts = [c.compress(marked.get(i, page)) for i in range(65536)]
    parts.append(c.flush())
    zst = tmp_path / "big.zst"
    zst.write_bytes(b"".join(parts))
    with source.open_payload(zst) as p:
        assert len(p.buffer) == 256 << 20
        for i, data in marked.items():
            assert p.buffer[i * 4096 : (i + 1) * 4096] == data
        assert p.buffer[4096:8192] == page

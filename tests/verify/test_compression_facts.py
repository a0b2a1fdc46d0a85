"""`harness.verify.compression`: a compressed dump checked against its kerneldumpheader and the console.

The header values follow FreeBSD 12+ `dump_start()`/`dump_finish()`: `dumplength` = compressed bytes,
`dumpextent` = the uncompressed size reserved (or the device's rest when that does not fit)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.verify.compression import compression_facts, stream_kind


@dataclass
class FakeVmcore:
    """What the checks read of a reader `Vmcore`."""

    payload_container: str
    payload_size: int


def _file(tmp_path: Path, size: int) -> Path:
    p = tmp_path / "vmcore.0.gz"
    p.write_bytes(b"\x1f\x8b" + bytes(size - 2))
    return p


def _header(comp: str, length: int, extent: int) -> dict:
    return {"compression_name": comp, "dumplength": length, "dumpextent": extent}


def test_stream_kind_from_the_readers_container():
    assert stream_kind("gzip") == "gzip" and stream_kind("device+encrypted+zstd") == "zstd"
    assert stream_kind("plain") == "none" and stream_kind("device") == "none"


def test_an_uncompressed_dump_has_no_facts(tmp_path):
    facts, checks = compression_facts(FakeVmcore("device", 4096), _file(tmp_path, 4096), None, 0)
    assert facts is None and checks == []


def test_a_consistent_gzip_dump(tmp_path):
    path = _file(tmp_path, 1000)
    facts, checks = compression_facts(
        FakeVmcore("gzip", 3 << 20), path, _header("gzip", 1000, 3 << 20), 3
    )
    assert facts.to_dict() == {
        "kind": "gzip", "compressed_bytes": 1000, "uncompressed_bytes": 3 << 20, "dumpextent": 3 << 20,
        "ratio": round((3 << 20) / 1000, 1),
    }
    assert "gzip-compressed dump: 1000 bytes compressed" in facts.describe()
    assert len(checks) == 4 and all(c.ok for c in checks), checks


def test_each_disagreement_fails_its_check(tmp_path):
    path = _file(tmp_path, 1000)
    vm = FakeVmcore("zstd", 3 << 20)
    # the header names gzip, the stream is zstd; dumplength is not the file's size; the stream decoded to
    # less than the kernel reserved (a stream that ended early); the console announced 7 MB
    facts, checks = compression_facts(vm, path, _header("gzip", 999, (3 << 20) + 4096), 7)
    bad = {c.what.split(":")[0].split(" vs")[0] for c in checks if not c.ok}
    assert bad == {"compression", "compressed size", "decoded size"}, checks
    assert [c.ok for c in checks] == [False, False, False, False]


def test_an_extent_cut_to_the_device_is_explained(tmp_path):
    """dump_start() gives a compressed dump the rest of a too-small device: decoded > dumpextent is fine."""
    path = _file(tmp_path, 1000)
    vm = FakeVmcore("gzip", 128 << 20)
    facts, checks = compression_facts(vm, path, _header("gzip", 1000, 2 << 20), 128)
    extent = [c for c in checks if "dumpextent" in c.what]
    assert extent and extent[0].ok and "cut to the device" in extent[0].what
    assert facts.dumpextent == 2 << 20


def test_after_savecore_without_a_header_the_stream_alone_speaks(tmp_path):
    path = _file(tmp_path, 500)
    facts, checks = compression_facts(FakeVmcore("zstd", 1 << 20), path, None, None)
    assert facts.kind == "zstd" and facts.compressed_bytes == 500 and facts.dumpextent is None
    assert checks == []

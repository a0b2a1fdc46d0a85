"""struct kerneldumpheader v1..v4: layout, parity, decoding, info.N rendering."""

from __future__ import annotations

import json
import struct

import pytest

from reader import kerneldumpheader as kdh
from reader.errors import FormatError
from tests.dumpwriter import containers as cw

# Field offsets from sys/sys/kerneldump.h (v4 current; v1 the 2002-2012 revision; v2/v3 per
# netdumpd's kerneldump_compat.h) -- see shared/reference/freebsd-dump-formats.md §1.3.
OFFSETS = {
    1: {"dumptime": 48, "blocksize": 56, "hostname": 60, "versionstring": 124, "panicstring": 316},
    2: {"dumptime": 48, "dumpkeysize": 56, "blocksize": 60, "hostname": 64, "versionstring": 128,
        "panicstring": 320},
    3: {"dumpextent": 48, "dumptime": 56, "dumpkeysize": 64, "blocksize": 68, "compression": 72,
        "hostname": 73, "versionstring": 137, "panicstring": 329},
    4: {"dumptime": 48, "dumpkeysize": 56, "blocksize": 60, "hostname": 64, "versionstring": 128,
        "panicstring": 320, "compression": 495, "dumpextent": 496},
}  # fmt: skip


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_layout_offsets_match_kerneldump_h(version: int) -> None:
    layout = kdh.LAYOUTS[version]
    assert layout.sizeof() == 512
    offsets, pos = {}, 0
    for sc in layout.subcons:
        offsets[sc.name] = pos
        pos += sc.subcon.sizeof()
    assert offsets["version"] == 32 and offsets["dumplength"] == 40 and offsets["parity"] == 508
    for name, off in OFFSETS[version].items():
        assert offsets[name] == off, name


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_parse_independent_writer(version: int) -> None:
    raw = cw.kernel_header(
        version=version,
        dumplength=0x2A00000,
        dumptime=1574123456,
        dumpkeysize=512 if version >= 2 else 0,
        blocksize=512,
        hostname="guest.example",
        versionstring="FreeBSD 12.1-STABLE #0 r356059: Tue Dec 10 2019\n    root@build:/GENERIC\n",
        panicstring="mountroot: unable to (re-)mount root." if version != 1 else "",
        compression=2 if version >= 3 else 0,
        dumpextent=0x3000000 if version >= 3 else None,
    )
    h = kdh.parse(raw)
    assert h.parity_ok and h.kind == "kernel"
    assert h.version == version and h.architecture == "amd64" and h.architectureversion == 2
    assert h.dumplength == 0x2A00000 and h.dumptime == 1574123456 and h.blocksize == 512
    assert h.hostname == "guest.example"
    assert h.versionstring.startswith("FreeBSD 12.1-STABLE") and h.versionstring.endswith("\n")
    assert h.dumpkeysize == (512 if version >= 2 else 0)
    assert h.compression == (2 if version >= 3 else 0)
    # v1/v2 have no extent: the payload filled it exactly
    assert h.dumpextent == (0x3000000 if version >= 3 else 0x2A00000)
    json.dumps(h.to_dict())


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_build_is_byte_identical_to_independent_writer(version: int) -> None:
    fields = dict(
        dumplength=123 * 4096, dumptime=1700000000, hostname="h", versionstring="v\n", panicstring="p"
    )
    extra = dict(dumpkeysize=1024, compression=1, dumpextent=500 * 4096) if version == 4 else {}
    assert kdh.build(version=version, **fields, **extra) == cw.kernel_header(
        version=version, **fields, **extra
    )


def test_parity_is_xor_of_words_and_detects_any_flip() -> None:
    raw = cw.kernel_header(dumplength=4096)
    assert kdh.kerneldump_parity(raw) == 0
    for bit in (0, 8 * 40 + 3, 8 * 508, 8 * 511 + 7):
        bad = bytearray(raw)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert kdh.kerneldump_parity(bytes(bad)) != 0
        assert not kdh.parse(bytes(bad)).parity_ok


def test_magics_and_versionstring_truncation() -> None:
    assert kdh.parse(cw.kernel_header(magic=cw.TEXTDUMPMAGIC, dumplength=512)).kind == "text"
    assert kdh.parse(cw.kernel_header(magic=cw.KERNELDUMPMAGIC_CLEARED, dumplength=512)).kind == "cleared"
    assert kdh.parse(cw.kernel_header(magic=b"garbage", dumplength=512)).kind == "unknown"
    # dump_init_header(): an over-long version string is cut and forced to end in "\n"
    raw = kdh.build(dumplength=1, versionstring="x" * 400)
    assert kdh.parse(raw).versionstring == "x" * 190 + "\n"


def test_unknown_version_and_short_header_are_format_errors() -> None:
    raw = bytearray(cw.kernel_header(dumplength=4096))
    raw[32:36] = struct.pack(">I", 9)
    with pytest.raises(FormatError) as e:
        kdh.parse(bytes(raw), path="disk.img", offset=0x1000)
    assert e.value.field == "version" and e.value.offset == 0x1020 and "disk.img" in str(e.value)
    with pytest.raises(FormatError):
        kdh.parse(b"\0" * 100)


def test_render_info_matches_savecore_printheader() -> None:
    raw = cw.kernel_header(
        dumplength=44040192,
        dumptime=0,
        hostname="",
        versionstring="FreeBSD 12.1-STABLE GENERIC\n",
        panicstring="",
        compression=2,
    )
    h = kdh.parse(raw)
    text = kdh.render_info(h, device="/dev/vtbd1", bounds=3, status="good", tz="UTC")
    (parity_host,) = struct.unpack("<I", raw[508:])
    assert text == (
        "Dump header from device: /dev/vtbd1\n"
        "  Architecture: amd64\n"
        "  Architecture Version: 2\n"
        "  Dump Length: 44040192\n"
        "  Blocksize: 512\n"
        "  Compression: zstd\n"
        "  Dumptime: 1970-01-01 00:00:00 +0000\n"
        "  Hostname: \n"
        "  Magic: FreeBSD Kernel Dump\n"
        "  Version String: FreeBSD 12.1-STABLE GENERIC\n"
        "  Panic String: \n"
        f"  Dump Parity: {parity_host}\n"
        "  Bounds: 3\n"
        "  Dump Status: good\n"
    )

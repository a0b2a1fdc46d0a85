"""Minidump payloads (`minidump FreeBSD/<arch>`): header, sections, bitmap, page tables.

Layout (every section page-aligned, `sys/<arch>/<arch>/minidump_machdep.c`): header page,
msgbuf, [dump_avail], bitmap, page-table section, then one 4 KiB data page per set bitmap
bit in ascending physical order. Every size comes from the header, so each is checked against
the payload length before anything is allocated; only the data-page area may be cut short
(such a dump opens, and reads past its end raise `TruncatedError` unless zero-filling).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arch import BY_MINIDUMP_MAGIC, Arch
from .errors import FormatError, TruncatedError
from .physmem import PAGE_SIZE, BitmapIndex

MAGIC_PREFIX = b"minidump"
HEADER_PAGE = PAGE_SIZE
#: KVA dump_avail entries are vm_paddr_t (u64) on every arch, pairs ending with end == 0
DUMP_AVAIL_ENTRY = 8


@dataclass
class Minidump:
    arch: Arch
    header: dict[str, Any]
    offsets: dict[str, int]
    dump_avail: list[tuple[int, int]] | None
    phys: BitmapIndex
    page_table: memoryview
    expected_size: int


def _pfn_floor(x: int) -> int:
    return x >> 12


def _pfn_ceil(x: int) -> int:
    return (x + PAGE_SIZE - 1) >> 12


def parse_dump_avail(raw: bytes | memoryview, path: Path, offset: int) -> list[tuple[int, int]]:
    """Pairs (start, end) until an entry with end == 0, as libkvm `_kvm_pt_init()` reads them."""
    n = len(raw) // (2 * DUMP_AVAIL_ENTRY)
    pairs = struct.unpack_from(f"<{2 * n}Q", raw) if n else ()
    out: list[tuple[int, int]] = []
    prev_end = 0
    for i in range(n):
        start, end = pairs[2 * i], pairs[2 * i + 1]
        if end == 0:
            break
        field_off = offset + 16 * i
        if start >= end:
            raise FormatError(f"dump_avail[{2 * i}] range [{start:#x}, {end:#x}) is empty or reversed",
                              path=path, offset=field_off, field=f"dump_avail[{2 * i}]",
                              expected="start < end")
        if start < prev_end:
            raise FormatError(f"dump_avail range [{start:#x}, {end:#x}) overlaps the previous one",
                              path=path, offset=field_off, field=f"dump_avail[{2 * i}]",
                              expected=f"start >= {prev_end:#x} (ascending ranges)")
        out.append((start, end))
        prev_end = end
    return out


def parse(buf: Any, path: Path) -> Minidump:
    size = len(buf)
    if size < 32:
        raise TruncatedError(f"payload is only {size} bytes", path=path, offset=0, field="magic",
                             expected="a 4096-byte minidump header page")
    magic = bytes(buf[:24])
    arch = BY_MINIDUMP_MAGIC.get(magic)
    if arch is None:
        shown = magic.rstrip(b"\0")
        raise FormatError(f"unknown minidump magic {shown!r}", path=path, offset=0,
                          field="magic", expected=" or ".join(
                              repr(m.rstrip(b"\0").decode()) for m in BY_MINIDUMP_MAGIC))
    if size < HEADER_PAGE:
        raise TruncatedError(f"payload is only {size} bytes", path=path, offset=size, field="header",
                             expected="a 4096-byte minidump header page")
    (version,) = struct.unpack_from("<I", buf, 24)
    if version not in arch.minidump_versions:
        raise FormatError(f"{arch.name} minidump version {version} is not supported", path=path,
                          offset=24, field="version",
                          expected=" or ".join(str(v) for v in sorted(arch.minidump_versions)))
    fields = arch.header_fields(version)
    fmt = "<" + "".join(code for _, code in fields)
    values = struct.unpack_from(fmt, buf, 24)
    hdr: dict[str, Any] = {"magic": magic.rstrip(b"\0").decode()}
    hdr.update(zip((n for n, _ in fields), values, strict=True))
    field_offsets = {}
    off = 24
    for name, code in fields:
        field_offsets[name] = off
        off += struct.calcsize("<" + code)

    if hdr.get("flags", 0) & 3:
        raise FormatError(f"page size flags {hdr['flags']:#x} (16 KiB pages) are not supported",
                          path=path, offset=field_offsets["flags"], field="flags",
                          expected="MINIDUMP_FLAG_PS_4K (0)")
    secs = arch.sections(hdr)
    offsets = {"msgbuf": HEADER_PAGE}
    offsets["dump_avail"] = offsets["msgbuf"] + secs.msgbuf
    offsets["bitmap"] = offsets["dump_avail"] + secs.dump_avail
    offsets["page_table"] = offsets["bitmap"] + secs.bitmap
    offsets["data"] = offsets["page_table"] + secs.page_table
    size_field = {"msgbuf": "msgbufsize", "dump_avail": "dumpavailsize", "bitmap": "bitmapsize",
                  "page_table": "pmapsize" if "pmapsize" in hdr else "ptesize"}
    for sec in ("msgbuf", "dump_avail", "bitmap", "page_table"):
        end = offsets[sec] + getattr(secs, sec)
        if end > size:
            f = size_field[sec]
            raise TruncatedError(
                f"{sec} section [{offsets[sec]:#x}, {end:#x}) lies past the end of the "
                f"{size:#x}-byte payload", path=path, offset=field_offsets.get(f, 24), field=f,
                expected=f"a section ending at or before {size:#x}")

    mv = memoryview(buf)
    bitmap = mv[offsets["bitmap"] : offsets["bitmap"] + secs.bitmap]
    nbits = secs.bitmap * 8
    dump_avail = None
    if "dumpavailsize" in hdr and hdr["dumpavailsize"]:
        raw = mv[offsets["dump_avail"] : offsets["dump_avail"] + min(hdr["dumpavailsize"], secs.dump_avail)]
        dump_avail = parse_dump_avail(raw, path, offsets["dump_avail"])
        ranges = []
        bit = 0
        for start, end in dump_avail:
            first, last = _pfn_floor(start), _pfn_ceil(end)
            ranges.append((first, last, bit))
            bit += last - first
        if bit > nbits:
            raise FormatError(f"dump_avail covers {bit} pages but the bitmap holds only {nbits} bits",
                              path=path, offset=field_offsets["bitmapsize"], field="bitmapsize",
                              expected=f">= {(bit + 7) // 8} bytes")
    else:
        ranges = [(0, nbits, 0)]
    phys = BitmapIndex(bitmap, ranges, offsets["data"])
    expected = offsets["data"] + phys.page_count * PAGE_SIZE
    pt = mv[offsets["page_table"] : offsets["page_table"] + secs.page_table]
    hdr_out = dict(hdr)
    return Minidump(arch=arch, header=hdr_out, offsets=offsets, dump_avail=dump_avail, phys=phys,
                    page_table=pt, expected_size=expected)


def is_minidump(buf: Any) -> bool:
    return len(buf) >= 8 and bytes(buf[:8]) == MAGIC_PREFIX

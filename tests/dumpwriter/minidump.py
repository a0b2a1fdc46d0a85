"""Synthetic minidumps for amd64 (v1/v2/v3), i386 (PAE / non-PAE, v1/v2) and arm64 (v1/v2/v3)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAGE = 4096
MB2 = 2 << 20
GB1 = 1 << 30

AMD64_PG_V, AMD64_PG_RW, AMD64_PG_PS = 0x1, 0x2, 0x80
ARM64_L3_PAGE, ARM64_ATTR_AF = 0x3, 0x400


@dataclass(frozen=True)
class Mapping:
    """Kernel VA `va` maps physical `pa` with a page of `size` bytes (4 KiB, 2 MiB or 1 GiB)."""

    va: int
    pa: int
    size: int = PAGE


@dataclass
class MinidumpSpec:
    """What was written, so tests can check the reader against it."""

    path: Path
    arch: str
    version: int
    header: dict
    offsets: dict
    present: list[int]                       # physical page addresses, ascending
    page_offsets: dict[int, int]             # pa -> file offset
    translations: dict[int, int] = field(default_factory=dict)   # va page -> pa page (4 KiB)
    extra_pages: dict[int, str] = field(default_factory=dict)    # pa -> role (page-table pages)
    size: int = 0


def page_pattern(pa: int) -> bytes:
    """Default page content: each u64 word holds its own physical address."""
    return (np.arange(512, dtype="<u8") * 8 + np.uint64(pa)).tobytes()


def _round_page(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def _expand(mappings: Iterable[Mapping]) -> dict[int, int]:
    out = {}
    for m in mappings:
        if m.size not in (PAGE, MB2, GB1) or m.va % m.size or m.pa % m.size:
            raise ValueError(f"bad mapping {m}")
        if m.size == GB1:
            # only remember the corners; tests check a sample, never 262144 entries per GiB
            for off in (0, PAGE, MB2, GB1 - PAGE):
                out[m.va + off] = m.pa + off
        else:
            for off in range(0, m.size, PAGE):
                out[m.va + off] = m.pa + off
    return out


def _write_pages(f, start: int, present: np.ndarray, pages: MappingABC[int, bytes | None]) -> dict[int, int]:
    """Write every present page in order from file offset `start`; returns pa -> offset for given pages."""
    offsets = {}
    f.seek(start)
    chunk = 4096
    for i in range(0, len(present), chunk):
        pas = present[i : i + chunk]
        block = (np.arange(512, dtype=np.uint64)[None, :] * np.uint64(8) + pas.astype(np.uint64)[:, None])
        raw = bytearray(block.astype("<u8").tobytes())
        for j, pa in enumerate(pas.tolist()):
            data = pages.get(pa)
            if data is not None:
                if len(data) > PAGE:
                    raise ValueError(f"page {pa:#x} content longer than 4096 bytes")
                raw[j * PAGE : j * PAGE + len(data)] = data
                raw[j * PAGE + len(data) : (j + 1) * PAGE] = bytes(PAGE - len(data))
        f.write(raw)
    for k, pa in enumerate(present.tolist()):
        if pa in pages:
            offsets[pa] = start + k * PAGE
    return offsets


def _bitmap(present_pfns: np.ndarray, ranges: list[tuple[int, int]] | None, nbits: int) -> bytes:
    """Bitmap bytes: v1/v2 bit = pfn; v3 bits compressed through dump_avail `ranges`."""
    bits = np.zeros(nbits, dtype=bool)
    if ranges is None:
        bits[present_pfns] = True
    else:
        base = 0
        for s, e in ranges:
            first, last = s // PAGE, (e + PAGE - 1) // PAGE
            sel = present_pfns[(present_pfns >= first) & (present_pfns < last)]
            bits[sel - first + base] = True
            base += last - first
    return np.packbits(bits, bitorder="little").tobytes()


def _write_minidump(path, magic: bytes, header: bytes, msgbuf: bytes, dump_avail: bytes | None,
                    bitmap: bytes, bitmapsize_field: int, pt: bytes, present: np.ndarray,
                    pages: MappingABC[int, bytes | None]) -> tuple[dict, dict[int, int], int]:
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    offsets = {"msgbuf": PAGE}
    offsets["dump_avail"] = offsets["msgbuf"] + _round_page(len(msgbuf))
    da_size = _round_page(len(dump_avail)) if dump_avail is not None else 0
    offsets["bitmap"] = offsets["dump_avail"] + da_size
    offsets["page_table"] = offsets["bitmap"] + _round_page(bitmapsize_field)
    offsets["data"] = offsets["page_table"] + _round_page(len(pt))
    with open(path, "wb") as f:
        f.write((magic + header).ljust(PAGE, b"\0"))
        f.write(msgbuf)
        if dump_avail is not None:
            f.seek(offsets["dump_avail"])
            f.write(dump_avail)
        f.seek(offsets["bitmap"])
        f.write(bitmap)
        f.seek(offsets["page_table"])
        f.write(pt)
        page_offsets = _write_pages(f, offsets["data"], present, pages)
        end = offsets["data"] + len(present) * PAGE
        f.truncate(end)
    return offsets, page_offsets, end


def _dump_avail_bytes(ranges: list[tuple[int, int]]) -> bytes:
    words = [x for r in ranges for x in r] + [0, 0]
    return struct.pack(f"<{len(words)}Q", *words).ljust(PAGE, b"\0")


def _present_array(pages: MappingABC[int, bytes | None], extra: Iterable[int]) -> np.ndarray:
    pas = set(pages) | set(extra)
    for pa in pas:
        if pa % PAGE:
            raise ValueError(f"page address {pa:#x} not page-aligned")
    return np.array(sorted(pas), dtype=np.int64)


def write_amd64_minidump(path: str | os.PathLike, pages: MappingABC[int, bytes | None],
                         mappings: Iterable[Mapping], version: int = 3, *,
                         kernbase: int | None = None, dmapbase: int = 0xFFFFF80000000000,
                         dmapend: int = 0xFFFFFC0000000000, msgbuf: bytes = b"",
                         dump_avail: list[tuple[int, int]] | None = None,
                         bitmap_bytes: int | None = None, pt_pages_at: int | None = None,
                         kva_end: int | None = None) -> MinidumpSpec:
    """An amd64 minidump. `pages`: present physical pages (None = `page_pattern`).

    v1 gets a flat PTE section from `kernbase` (default KERNBASE 0xffffffff80000000); v2/v3 a
    PDE per 2 MiB from `kernbase` (default 0xfffffe0000000000) with the PT pages placed at
    `pt_pages_at` (default: just above the highest page) and added to the dump. v3 compresses
    the bitmap through `dump_avail` (default one range covering every page).
    """
    mappings = list(mappings)
    if kernbase is None:
        kernbase = 0xFFFFFFFF80000000 if version == 1 else 0xFFFFFE0000000000
    top_va = max([m.va + m.size for m in mappings] + [kva_end or kernbase + GB1])
    extra: dict[int, str] = {}
    pages = dict(pages)
    if version == 1:
        n = (top_va - kernbase) // PAGE
        ptes = np.zeros(n, dtype="<u8")
        for m in mappings:
            i = (m.va - kernbase) // PAGE
            ptes[i : i + m.size // PAGE] = (m.pa + np.arange(0, m.size, PAGE, dtype=np.uint64)) | 0x3
        pt = ptes.tobytes()
    else:
        ngb = (top_va - kernbase + GB1 - 1) // GB1
        pdes = np.zeros(ngb * 512, dtype="<u8")
        maxpa = max([pa + PAGE for pa in pages] + [m.pa + m.size for m in mappings] + [0])
        next_pt = pt_pages_at if pt_pages_at is not None else _round_page(maxpa)
        ptpages: dict[int, np.ndarray] = {}
        for m in mappings:
            i = (m.va - kernbase) >> 21
            if m.size == GB1:
                pdes[i : i + 512] = (m.pa + (np.arange(512, dtype=np.uint64) << np.uint64(21))) | 0x83
            elif m.size == MB2:
                pdes[i] = m.pa | AMD64_PG_V | AMD64_PG_RW | AMD64_PG_PS
            else:
                if i not in ptpages:
                    ptpages[i] = np.zeros(512, dtype="<u8")
                    pdes[i] = next_pt | AMD64_PG_V | AMD64_PG_RW
                    extra[next_pt] = "page-table"
                    next_pt += PAGE
                ptpages[i][(m.va >> 12) & 511] = m.pa | AMD64_PG_V | AMD64_PG_RW
        for i, arr in ptpages.items():
            pages[int(pdes[i]) & ~0xFFF] = arr.tobytes()
        pt = pdes.tobytes()
    present = _present_array(pages, extra)
    pfns = present // PAGE
    maxpfn = int(pfns.max()) + 1 if len(pfns) else 1
    ranges = None
    if version >= 3:
        ranges = dump_avail if dump_avail is not None else [(0, maxpfn * PAGE)]
        nbits = sum((e + PAGE - 1) // PAGE - s // PAGE for s, e in ranges)
    else:
        nbits = maxpfn
    nbytes = max(bitmap_bytes or 0, (nbits + 63) // 64 * 8)
    bm = _bitmap(pfns, ranges, nbytes * 8)
    hdr_fields = [("version", "I", version), ("msgbufsize", "I", len(msgbuf)),
                  ("bitmapsize", "I", nbytes), ("ptesize" if version == 1 else "pmapsize", "I", len(pt)),
                  ("kernbase", "Q", kernbase), ("dmapbase", "Q", dmapbase), ("dmapend", "Q", dmapend)]
    if version >= 3:
        hdr_fields.append(("dumpavailsize", "I", PAGE))
    header = struct.pack("<" + "".join(c for _, c, _ in hdr_fields), *(v for *_, v in hdr_fields))
    offsets, page_offsets, end = _write_minidump(
        path, b"minidump FreeBSD/amd64\0\0", header, msgbuf,
        _dump_avail_bytes(ranges) if ranges is not None else None, bm, nbytes, pt, present, pages)
    return MinidumpSpec(Path(path), "amd64", version, {n: v for n, _, v in hdr_fields}, offsets,
                        present.tolist(), page_offsets, _expand(mappings), extra, end)


def write_i386_minidump(path: str | os.PathLike, pages: MappingABC[int, bytes | None],
                        mappings: Iterable[Mapping], version: int = 2, *, pae: bool = True,
                        kernbase: int = 0x800000, msgbuf: bytes = b"",
                        dump_avail: list[tuple[int, int]] | None = None) -> MinidumpSpec:
    """An i386 minidump: flat leaf PTEs (8 bytes with PAE, 4 without) from `kernbase`."""
    mappings = list(mappings)
    top_va = max([m.va + m.size for m in mappings] + [kernbase + (4 << 20)])
    n = (top_va - kernbase) // PAGE
    ptes = np.zeros(n, dtype="<u8" if pae else "<u4")
    for m in mappings:
        i = (m.va - kernbase) // PAGE
        ptes[i : i + m.size // PAGE] = (m.pa + np.arange(0, m.size, PAGE, dtype=np.uint64)) | 0x3
    pt = ptes.tobytes()
    present = _present_array(pages, ())
    pfns = present // PAGE
    maxpfn = int(pfns.max()) + 1 if len(pfns) else 1
    ranges = None
    if version >= 2:
        ranges = dump_avail if dump_avail is not None else [(0, maxpfn * PAGE)]
        nbits = sum((e + PAGE - 1) // PAGE - s // PAGE for s, e in ranges)
    else:
        nbits = maxpfn
    nbytes = (nbits + 63) // 64 * 8
    bm = _bitmap(pfns, ranges, nbytes * 8)
    hdr_fields = [("version", "I", version), ("msgbufsize", "I", len(msgbuf)), ("bitmapsize", "I", nbytes),
                  ("ptesize", "I", len(pt)), ("kernbase", "I", kernbase), ("paemode", "I", int(pae))]
    if version >= 2:
        hdr_fields.append(("dumpavailsize", "I", PAGE))
    header = struct.pack("<" + "".join(c for _, c, _ in hdr_fields), *(v for *_, v in hdr_fields))
    offsets, page_offsets, end = _write_minidump(
        path, b"minidump FreeBSD/i386\0\0\0", header, msgbuf,
        _dump_avail_bytes(ranges) if ranges is not None else None, bm, nbytes, pt, present, dict(pages))
    return MinidumpSpec(Path(path), "i386", version, {n: v for n, _, v in hdr_fields}, offsets,
                        present.tolist(), page_offsets, _expand(mappings), {}, end)


def write_arm64_minidump(path: str | os.PathLike, pages: MappingABC[int, bytes | None],
                         mappings: Iterable[Mapping], version: int = 2, *,
                         kernbase: int = 0xFFFF000000000000, dmapphys: int = 0x40000000,
                         dmapbase: int = 0xFFFFA00000000000, dmapend: int = 0xFFFFFF0000000000,
                         msgbuf: bytes = b"",
                         dump_avail: list[tuple[int, int]] | None = None) -> MinidumpSpec:
    """An arm64 minidump: flat L3 descriptors from `kernbase` (blocks split, as the kernel does)."""
    mappings = list(mappings)
    top_va = max([m.va + m.size for m in mappings] + [kernbase + MB2])
    n = _round_page((top_va - kernbase) // PAGE * 8) // 8
    l3 = np.zeros(n, dtype="<u8")
    for m in mappings:
        i = (m.va - kernbase) // PAGE
        l3[i : i + m.size // PAGE] = (m.pa + np.arange(0, m.size, PAGE, dtype=np.uint64)) | (
            ARM64_L3_PAGE | ARM64_ATTR_AF)
    pt = l3.tobytes()
    present = _present_array(pages, ())
    pfns = present // PAGE
    maxpfn = int(pfns.max()) + 1 if len(pfns) else 1
    ranges = None
    if version >= 2:
        ranges = dump_avail if dump_avail is not None else [(0, maxpfn * PAGE)]
        nbits = sum((e + PAGE - 1) // PAGE - s // PAGE for s, e in ranges)
    else:
        nbits = maxpfn
    nbytes = (nbits + 63) // 64 * 8
    bm = _bitmap(pfns, ranges, nbytes * 8)
    hdr_fields = [("version", "I", version), ("msgbufsize", "I", len(msgbuf)), ("bitmapsize", "I", nbytes),
                  ("pmapsize", "I", len(pt)), ("kernbase", "Q", kernbase), ("dmapphys", "Q", dmapphys),
                  ("dmapbase", "Q", dmapbase), ("dmapend", "Q", dmapend)]
    if version >= 2:
        hdr_fields.append(("dumpavailsize", "I", PAGE))
    if version >= 3:
        hdr_fields.append(("flags", "I", 0))
    header = struct.pack("<" + "".join(c for _, c, _ in hdr_fields), *(v for *_, v in hdr_fields))
    offsets, page_offsets, end = _write_minidump(
        path, b"minidump FreeBSD/arm64\0\0", header, msgbuf,
        _dump_avail_bytes(ranges) if ranges is not None else None, bm, nbytes, pt, present, dict(pages))
    return MinidumpSpec(Path(path), "arm64", version, {n: v for n, _, v in hdr_fields}, offsets,
                        present.tolist(), page_offsets, _expand(mappings), {}, end)

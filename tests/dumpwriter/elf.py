"""Synthetic amd64 full (ELF) dumps with real 4-level page tables, and kernel symbol tables."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .minidump import GB1, MB2, PAGE, Mapping, _expand, _round_page, _write_pages

KERNBASE = 0xFFFFFFFF80000000
DEFAULT_KPML4_VA = 0xFFFFFFFF81000008


@dataclass
class FullDumpSpec:
    path: Path
    segments: list[tuple[int, int, int]]      # (paddr, size, file offset)
    root: int                                 # PA of the PML4
    kpml4phys_pa: int
    load_offset: int
    symbols: dict[str, tuple[int, int, bool]]  # name -> (address, size, local) for write_kernel_elf
    translations: dict[int, int] = field(default_factory=dict)
    size: int = 0


def write_amd64_full_dump(path: str | os.PathLike, pages: MappingABC[int, bytes | None],
                          mappings: Iterable[Mapping], *, load_offset: int = 0,
                          kpml4_va: int = DEFAULT_KPML4_VA, ranges: list[tuple[int, int]] | None = None,
                          tables_at: int | None = None) -> FullDumpSpec:
    """An ELF core of physical memory whose page tables map `mappings` plus the kernel image.

    The 2 MiB of kernel image around `kpml4_va` are mapped to physical
    `va - KERNBASE + load_offset` (a non-zero `load_offset` is what 13.1+ EFI loaders do) and
    the `KPML4phys` variable there holds the PML4's physical address.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    pages = dict(pages)
    kimg_va = kpml4_va & ~(MB2 - 1)
    kimg_pa = kimg_va - KERNBASE + load_offset
    mappings = list(mappings) + [Mapping(kimg_va, kimg_pa, MB2)]
    hi = max([pa + PAGE for pa in pages] + [m.pa + m.size for m in mappings])
    next_table = tables_at if tables_at is not None else _round_page(hi)
    tables: dict[int, np.ndarray] = {}

    def new_table() -> int:
        nonlocal next_table
        pa = next_table
        next_table += PAGE
        tables[pa] = np.zeros(512, dtype="<u8")
        return pa

    root = new_table()
    for m in mappings:
        for off in range(0, m.size, m.size if m.size > PAGE else PAGE):
            va, pa = m.va + off, m.pa + off
            t = root
            for shift in (39, 30, 21, 12):
                idx = (va >> shift) & 511
                if (shift == 30 and m.size == GB1) or (shift == 21 and m.size == MB2):
                    tables[t][idx] = pa | 0x83
                    break
                if shift == 12:
                    tables[t][idx] = pa | 0x3
                    break
                e = int(tables[t][idx])
                if not e & 1:
                    nt = new_table()
                    tables[t][idx] = nt | 0x3
                    t = nt
                else:
                    t = e & 0x000FFFFFFFFFF000
    for pa, arr in tables.items():
        pages[pa] = arr.tobytes()
    kpml4_pa = kpml4_va - KERNBASE + load_offset
    page = kpml4_pa & ~0xFFF
    from .minidump import page_pattern

    content = bytearray(pages.get(page) or page_pattern(page))
    content[kpml4_pa & 0xFFF : (kpml4_pa & 0xFFF) + 8] = struct.pack("<Q", root)
    pages[page] = bytes(content)
    top = _round_page(max(max(pages) + PAGE, next_table))
    if ranges is None:
        ranges = [(0, top)]
    for pa in pages:
        if not any(s <= pa < e for s, e in ranges):
            raise ValueError(f"page {pa:#x} lies outside the physical ranges {ranges}")
    phnum = len(ranges)
    data_off = _round_page(64 + 56 * phnum)
    segments = []
    off = data_off
    for s, e in ranges:
        segments.append((s, e - s, off))
        off += e - s
    with open(path, "wb") as f:
        ident = b"\x7fELF" + bytes([2, 1, 1, 255]) + bytes(8)
        f.write(ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 0, 0, 64, 0, 0, 64, 56, phnum, 64, 0, 0))
        for s, n, o in segments:
            f.write(struct.pack("<IIQQQQQQ", 1, 4, o, s, s, n, n, PAGE))
        for s, n, o in segments:
            present = np.arange(s, s + n, PAGE, dtype=np.int64)
            _write_pages(f, o, present, pages)
        f.truncate(off)
    symbols = {"kernbase": (KERNBASE, 0, False), "KPML4phys": (kpml4_va, 8, False)}
    return FullDumpSpec(path, segments, root, kpml4_pa, load_offset, symbols, _expand(mappings), off)


def write_kernel_elf(path: str | os.PathLike, symbols: MappingABC[str, tuple[int, int, bool]], *,
                     machine: int = 62, elfclass: int = 64) -> Path:
    """A symbols-only kernel ELF (like the LLDB fixtures' yaml2obj kernels).

    `symbols`: name -> (address, size, local). `kernbase` becomes an absolute symbol.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(path)
    items = sorted(symbols.items(), key=lambda kv: (not kv[1][2], kv[0]))  # locals first
    strtab = bytearray(b"\0")
    names = []
    for name, _ in items:
        names.append(len(strtab))
        strtab += name.encode() + b"\0"
    shstr = bytearray(b"\0")
    shnames = {}
    for n in (".data", ".symtab", ".strtab", ".shstrtab"):
        shnames[n] = len(shstr)
        shstr += n.encode() + b"\0"
    addrs = [v[0] for v in symbols.values() if v[0]] or [0]
    is64 = elfclass == 64
    symfmt, symsize = ("<IBBHQQ", 24) if is64 else ("<IIIBBH", 16)
    syms = bytearray(bytes(symsize))
    nlocal = 1
    for (name, (addr, size, local)), noff in zip(items, names, strict=True):
        info = ((0 if local else 1) << 4) | (0 if name == "kernbase" else 1)
        shndx = 0xFFF1 if name == "kernbase" else 1
        if is64:
            syms += struct.pack(symfmt, noff, info, 0, shndx, addr, size)
        else:
            syms += struct.pack(symfmt, noff, addr, size, info, 0, shndx)
        nlocal += local
    ehsize, shentsize = (64, 64) if is64 else (52, 40)
    off_sym = ehsize
    off_str = off_sym + len(syms)
    off_shstr = off_str + len(strtab)
    off_sh = (off_shstr + len(shstr) + 7) & ~7
    lo = min(addrs)
    secs = [
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        (shnames[".data"], 8, 3, lo, 0, max(addrs) - lo + 8, 0, 0, 8, 0),    # SHT_NOBITS
        (shnames[".symtab"], 2, 0, 0, off_sym, len(syms), 3, nlocal, 8, symsize),
        (shnames[".strtab"], 3, 0, 0, off_str, len(strtab), 0, 0, 1, 0),
        (shnames[".shstrtab"], 3, 0, 0, off_shstr, len(shstr), 0, 0, 1, 0),
    ]
    with open(path, "wb") as f:
        ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1, 9]) + bytes(8)
        if is64:
            f.write(ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 0, off_sh, 0, 64, 0, 0, 64,
                                        len(secs), 4))
        else:
            f.write(ident + struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, 0, 0, off_sh, 0, 52, 0, 0, 40,
                                        len(secs), 4))
        f.write(syms)
        f.write(strtab)
        f.write(shstr)
        f.write(bytes(off_sh - f.tell()))
        for s in secs:
            if is64:
                f.write(struct.pack("<IIQQQQIIQQ", *s))
            else:
                f.write(struct.pack("<IIIIIIIIII", *s))
    del shentsize
    return path

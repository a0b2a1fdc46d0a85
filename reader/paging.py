"""Kernel virtual -> physical translation, with page-table shapes described as data.

Three shapes cover every format the reader knows:

* `FlatTable`: the dump carries one leaf entry per 4 KiB of kernel VA from a base address
  (i386 minidumps, arm64 minidumps, amd64 minidump v1).
* `PdeTable`: the dump carries one 2 MiB-level entry per 2 MiB of kernel VA; non-large
  entries point at page-table pages stored among the dump's data pages (amd64 minidump v2/v3).
* `RadixWalk`: a hardware page-table walk from a root table found in physical memory
  (amd64 full ELF dumps), its levels given as a tuple of `Level`.

Each translator answers `translate(va)` (scalar, hot path) and `kernel_map()` (vectorised:
every mapped 4 KiB page as two ascending numpy arrays, large pages split).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import AddressError, FormatError, TruncatedError

PAGE_SHIFT = 12
PAGE_MASK = 0xFFF

#: reads one 4 KiB page-table page at a physical address as 512 little-endian u64s
PageReader = Callable[[np.ndarray], np.ndarray]
#: reads one u64 at a physical address
WordReader = Callable[[int], int]


class MapBudget:
    """Caps the vectorised walks: corrupt page tables must not make us allocate without bound.

    `pages` bounds the 4 KiB leaf pages listed, `tables` the page-table pages gathered (a sane
    kernel map uses each present page as at most one table).
    """

    def __init__(self, pages: int, tables: int):
        self.pages = pages
        self.tables = tables

    def take_pages(self, n: int) -> None:
        self.pages -= n
        if self.pages < 0:
            raise FormatError(f"page tables map more pages than the dump can justify ({n} more)",
                              field="page tables", expected="a kernel map no larger than a few times "
                              "the dumped physical memory (corrupt page tables?)")

    def take_tables(self, n: int) -> None:
        self.tables -= n
        if self.tables < 0:
            raise FormatError(f"page tables reference more table pages than the dump holds ({n} more)",
                              field="page tables", expected="each page-table page present once")


UNLIMITED = None


@dataclass(frozen=True)
class DirectMap:
    """A linear kernel window onto physical memory: va in [base, end) -> va - base + phys."""

    base: int
    end: int
    phys: int = 0

    def contains(self, va: int) -> bool:
        return self.base <= va < self.end


@dataclass(frozen=True)
class EntryFormat:
    """How to read one page-table entry: validity test and physical frame masks."""

    valid_mask: int
    valid_value: int
    frame_mask: int
    large_bit: int = 0
    large_frame_mask: int = 0


class FlatTable:
    """One leaf entry per 4 KiB page of KVA starting at `base` (entries: numpy u4/u8 array)."""

    def __init__(self, entries: np.ndarray, base: int, fmt: EntryFormat, dmap: DirectMap | None = None,
                 dmap_first: bool = False):
        self.entries = entries
        self.base = base
        self.fmt = fmt
        self.dmap = dmap
        # libkvm's order: amd64 tries the page table for va >= kernbase first, arm64 the DMAP first
        self.dmap_first = dmap_first
        self._mv = memoryview(entries).cast("B").cast("Q" if entries.itemsize == 8 else "I")
        self._n = len(entries)
        self.end = base + (self._n << PAGE_SHIFT)

    def translate(self, va: int) -> int:
        d = self.dmap
        if d is not None and d.contains(va) and (self.dmap_first or va < self.base):
            return va - d.base + d.phys
        i = (va - self.base) >> PAGE_SHIFT
        if va < self.base or i >= self._n:
            raise AddressError(f"virtual address {va:#x} is outside the dumped kernel map "
                               f"[{self.base:#x}, {self.end:#x})", address=va)
        e = self._mv[i]
        f = self.fmt
        if e & f.valid_mask != f.valid_value:
            raise AddressError(f"virtual address {va:#x} is not mapped (PTE {e:#x})", address=va)
        return (e & f.frame_mask) | (va & PAGE_MASK)

    def kernel_map(self, budget: MapBudget | None = None) -> tuple[np.ndarray, np.ndarray]:
        f = self.fmt
        e = self.entries.astype(np.uint64, copy=False)
        idx = np.flatnonzero((e & np.uint64(f.valid_mask)) == np.uint64(f.valid_value))
        if budget is not None:
            budget.take_pages(idx.size)
        va = (np.uint64(self.base) + (idx.astype(np.uint64) << np.uint64(PAGE_SHIFT)))
        pa = e[idx] & np.uint64(f.frame_mask)
        return va, pa


class PdeTable:
    """amd64 minidump v2/v3: one PDE per 2 MiB of KVA from `base`; PT pages come from the dump."""

    LARGE_SHIFT = 21

    def __init__(self, pdes: np.ndarray, base: int, fmt: EntryFormat, read_word: WordReader,
                 read_pages: PageReader, dmap: DirectMap | None = None):
        self.pdes = pdes
        self.base = base
        self.fmt = fmt
        self.dmap = dmap
        self._mv = memoryview(pdes).cast("B").cast("Q")
        self._n = len(pdes)
        self.end = base + (self._n << self.LARGE_SHIFT)
        self._read_word = read_word
        self._read_pages = read_pages

    def translate(self, va: int) -> int:
        d = self.dmap
        if d is not None and va < self.base and d.contains(va):
            return va - d.base + d.phys
        i = (va - self.base) >> self.LARGE_SHIFT
        if va < self.base or i >= self._n:
            raise AddressError(f"virtual address {va:#x} is outside the dumped kernel map "
                               f"[{self.base:#x}, {self.end:#x})", address=va)
        pde = self._mv[i]
        f = self.fmt
        if pde & f.valid_mask != f.valid_value:
            raise AddressError(f"virtual address {va:#x} is not mapped (PDE {pde:#x})", address=va)
        if pde & f.large_bit:
            return (pde & f.large_frame_mask) | (va & 0x1FFFFF)
        pte_pa = (pde & f.frame_mask) + (((va >> PAGE_SHIFT) & 511) << 3)
        try:
            pte = self._read_word(pte_pa)
        except AddressError:
            raise AddressError(f"virtual address {va:#x}: its page-table page (PA {pte_pa & ~PAGE_MASK:#x}) "
                               "is not in the dump", address=va) from None
        except TruncatedError as exc:
            raise TruncatedError(f"virtual address {va:#x}: {exc.detail}", path=exc.path, offset=exc.offset,
                                 field="page-table page", expected=exc.expected) from None
        if pte & f.valid_mask != f.valid_value:
            raise AddressError(f"virtual address {va:#x} is not mapped (PTE {pte:#x} at PA "
                               f"{pte_pa:#x})", address=va)
        return (pte & f.frame_mask) | (va & PAGE_MASK)

    def kernel_map(self, budget: MapBudget | None = None) -> tuple[np.ndarray, np.ndarray]:
        f = self.fmt
        pdes = self.pdes.astype(np.uint64, copy=False)
        valid = (pdes & np.uint64(f.valid_mask)) == np.uint64(f.valid_value)
        large = valid & ((pdes & np.uint64(f.large_bit)) != 0)
        table = valid & ~large
        sub = np.arange(512, dtype=np.uint64)
        parts_va, parts_pa = [], []
        li = np.flatnonzero(large).astype(np.uint64)
        ti = np.flatnonzero(table)
        if budget is not None:
            budget.take_pages(li.size * 512)
            budget.take_tables(ti.size)
        if li.size:
            va0 = np.uint64(self.base) + (li << np.uint64(21))
            pa0 = pdes[li.astype(np.int64)] & np.uint64(f.large_frame_mask)
            parts_va.append((va0[:, None] + (sub << np.uint64(12))[None, :]).ravel())
            parts_pa.append((pa0[:, None] + (sub << np.uint64(12))[None, :]).ravel())
        if ti.size:
            pt_pa = pdes[ti] & np.uint64(f.frame_mask)
            ptes, ok = self._read_pages(pt_pa)
            ti, ptes = ti[ok], ptes[ok]
            pv = (ptes & np.uint64(f.valid_mask)) == np.uint64(f.valid_value)
            if budget is not None:
                budget.take_pages(int(pv.sum()))
            rows, cols = np.nonzero(pv)
            va = (np.uint64(self.base) + (ti[rows].astype(np.uint64) << np.uint64(21))
                  + (cols.astype(np.uint64) << np.uint64(12)))
            parts_va.append(va)
            parts_pa.append(ptes[rows, cols] & np.uint64(f.frame_mask))
        return _merge(parts_va, parts_pa)


@dataclass(frozen=True)
class Level:
    """One level of a radix page table: index bits start at `shift`; `large` if PS is allowed."""

    shift: int
    large: bool


AMD64_LEVELS = (Level(39, False), Level(30, True), Level(21, True), Level(12, False))


class RadixWalk:
    """A hardware page-table walk from `root` (physical) through `levels`, 512 entries each."""

    def __init__(self, root: int, levels: tuple[Level, ...], fmt: EntryFormat, read_word: WordReader,
                 read_pages: PageReader, va_bits: int = 48, kva_min: int = 0,
                 dmap: DirectMap | None = None):
        self.root = root
        self.levels = levels
        self.fmt = fmt
        self.va_bits = va_bits
        self.kva_min = kva_min
        self.dmap = dmap
        self._read_word = read_word
        self._read_pages = read_pages

    def translate(self, va: int) -> int:
        f = self.fmt
        table = self.root
        for lv in self.levels:
            epa = table + (((va >> lv.shift) & 511) << 3)
            try:
                e = self._read_word(epa)
            except AddressError:
                raise AddressError(f"virtual address {va:#x}: page-table page at PA {table:#x} "
                                   f"(level shift {lv.shift}) is not in the dump", address=va) from None
            except TruncatedError as exc:
                raise TruncatedError(f"virtual address {va:#x}: {exc.detail}", path=exc.path,
                                     offset=exc.offset, field="page-table page",
                                     expected=exc.expected) from None
            if e & f.valid_mask != f.valid_value:
                raise AddressError(f"virtual address {va:#x} is not mapped (entry {e:#x} at PA "
                                   f"{epa:#x}, level shift {lv.shift})", address=va)
            if lv.shift == PAGE_SHIFT:
                return (e & f.frame_mask) | (va & PAGE_MASK)
            if lv.large and e & f.large_bit:
                size_mask = (1 << lv.shift) - 1
                return (e & f.frame_mask & ~size_mask) | (va & size_mask)
            table = e & f.frame_mask
        raise AssertionError("levels must end at the 4 KiB level")

    def _sign_extend(self, va: np.ndarray) -> np.ndarray:
        top = np.uint64(1 << (self.va_bits - 1))
        ext = np.uint64(((1 << 64) - 1) ^ ((1 << self.va_bits) - 1))
        return np.where((va & top) != 0, va | ext, va)

    def kernel_map(self, budget: MapBudget | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every 4 KiB page mapped at or above `kva_min` (the DMAP is left out unless kva_min says)."""
        f = self.fmt
        sub = np.arange(512, dtype=np.uint64)
        tables_pa = np.array([self.root], dtype=np.uint64)
        tables_va = np.array([0], dtype=np.uint64)
        parts_va, parts_pa = [], []
        kmin = np.uint64(self.kva_min)
        for lv in self.levels:
            if tables_pa.size == 0:
                break
            if budget is not None:
                budget.take_tables(tables_pa.size)
            ents, ok = self._read_pages(tables_pa)
            ents, tables_va = ents[ok], tables_va[ok]
            span = np.uint64(1 << lv.shift)
            vas = tables_va[:, None] + sub[None, :] * span
            full = self._sign_extend(vas)
            # keep entries whose VA range reaches kva_min
            keep = (full + (span - np.uint64(1))) >= kmin
            valid = ((ents & np.uint64(f.valid_mask)) == np.uint64(f.valid_value)) & keep
            if lv.shift == PAGE_SHIFT:
                leaf = valid
                nxt = np.zeros_like(valid)
            elif lv.large:
                leaf = valid & ((ents & np.uint64(f.large_bit)) != 0)
                nxt = valid & ~leaf
            else:
                leaf = np.zeros_like(valid)
                nxt = valid
            if leaf.any():
                if budget is not None:
                    budget.take_pages(int(leaf.sum()) << (lv.shift - PAGE_SHIFT))
                lva = full[leaf]
                lpa = ents[leaf] & np.uint64(f.frame_mask) & ~(span - np.uint64(1))
                npages = 1 << (lv.shift - PAGE_SHIFT)
                if npages == 1:
                    parts_va.append(lva)
                    parts_pa.append(lpa)
                else:
                    step = np.arange(npages, dtype=np.uint64) << np.uint64(PAGE_SHIFT)
                    parts_va.append((lva[:, None] + step[None, :]).ravel())
                    parts_pa.append((lpa[:, None] + step[None, :]).ravel())
            tables_pa = ents[nxt] & np.uint64(f.frame_mask)
            tables_va = vas[nxt]
        va, pa = _merge(parts_va, parts_pa)
        keep = va >= kmin
        return va[keep], pa[keep]


def _merge(parts_va: list[np.ndarray], parts_pa: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if not parts_va:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64)
    va = np.concatenate(parts_va)
    pa = np.concatenate(parts_pa)
    order = np.argsort(va, kind="stable")
    return va[order], pa[order]

"""Walk amd64 4-level kernel page tables in a physical memory image.

Why: a minidump claims to hold every page the kernel maps; only an independent walk of the *live*
tables (from the guest's frozen memory, not from the dump's own page-table section) can prove that.
The walk also names page-table pages, whose accessed/dirty bits the CPU keeps writing while ddb and
the dump code run, so differences there can be explained precisely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PAGE_SIZE = 4096
PG_V = 0x1
PG_PS = 0x80
PG_A = 0x20
PG_M = 0x40
PG_FRAME = 0x000F_FFFF_FFFF_F000
PG_PS_FRAME_2M = 0x000F_FFFF_FFE0_0000
PG_PS_FRAME_1G = 0x000F_FFFF_C000_0000

#: bytes of VA covered by one entry at each level (4 = PML4 ... 1 = PT)
ENTRY_SPAN = {4: 1 << 39, 3: 1 << 30, 2: 1 << 21, 1: 1 << 12}
LEVEL_NAMES = {4: "PML4", 3: "PDP", 2: "PD", 1: "PT"}


class PageTableError(Exception):
    """The page tables cannot be walked (root or table page outside memory, too many tables)."""


def canonical(va: int) -> int:
    """Sign-extend a 48-bit virtual address to 64 bits."""
    va &= (1 << 48) - 1
    return va | 0xFFFF_0000_0000_0000 if va & (1 << 47) else va


@dataclass
class TablePage:
    """One page-table page: its physical address, level and the first VA its entries cover."""

    pa: int
    level: int
    base_va: int

    def entry_va(self, index: int) -> int:
        return canonical(self.base_va + index * ENTRY_SPAN[self.level])


@dataclass
class KernelMappings:
    """Result of a walk: 4 KiB leaf mappings (large pages split) and every table page visited."""

    va: np.ndarray  # uint64, ascending
    pa: np.ndarray  # uint64, same length
    tables: dict[int, TablePage] = field(default_factory=dict)  # pa -> table page
    large_leaves: int = 0
    unreadable_tables: list[tuple[int, int, int]] = field(default_factory=list)  # (pa, level, va)

    def pt_pages(self) -> list[int]:
        """Physical addresses of last-level (PT) pages: the ones a minidump must contain."""
        return sorted(pa for pa, t in self.tables.items() if t.level == 1)

    def vas_for_pa(self) -> dict[int, list[int]]:
        """Reverse map page PA -> kernel VAs (built on demand; only the PAs asked about matter)."""
        rev: dict[int, list[int]] = {}
        for v, p in zip(self.va.tolist(), self.pa.tolist(), strict=True):
            rev.setdefault(p, []).append(v)
        return rev


def walk_kernel(
    read_page: Callable[[int], np.ndarray | None],
    pml4_pa: int,
    va_start: int,
    va_end: int,
    *,
    max_tables: int = 1 << 20,
    skip: list[tuple[int, int]] | None = None,
) -> KernelMappings:
    """Walk the tables rooted at ``pml4_pa`` for ``va_start <= va < va_end`` (canonical addresses).

    ``read_page(pa)`` returns the 512 entries (uint64 array) of a table page or None when the page is not
    in memory (recorded in ``unreadable_tables``). ``skip`` lists VA ranges left out (the direct map).
    """
    if pml4_pa % PAGE_SIZE:
        raise PageTableError(f"page-table root {pml4_pa:#x} is not page aligned")
    skip = skip or []
    tables: dict[int, TablePage] = {}
    unreadable: list[tuple[int, int, int]] = []
    va_parts: list[np.ndarray] = []
    pa_parts: list[np.ndarray] = []
    large = 0

    def skipped(lo: int, hi: int) -> bool:
        return any(s <= lo and hi <= e for s, e in skip)

    def visit(pa: int, level: int, base: int) -> None:
        nonlocal large
        if len(tables) >= max_tables:
            raise PageTableError(f"more than {max_tables} page-table pages below {pml4_pa:#x}: a loop?")
        if pa in tables and tables[pa].level == level:
            return  # shared table (never expected in kernel space, but never loop)
        entries = read_page(pa)
        if entries is None:
            unreadable.append((pa, level, canonical(base)))
            return
        tables[pa] = TablePage(pa, level, canonical(base))
        span = ENTRY_SPAN[level]
        valid = np.nonzero(entries & PG_V)[0]
        if level == 1:
            vas = np.uint64(canonical(base)) + valid.astype(np.uint64) * np.uint64(PAGE_SIZE)
            keep = vas >= np.uint64(va_start)
            if va_end < 1 << 64:
                keep &= vas < np.uint64(va_end)
            va_parts.append(vas[keep])
            pa_parts.append(entries[valid][keep] & np.uint64(PG_FRAME))
            return
        for i in valid.tolist():
            lo = canonical(base + i * span)
            hi = lo + span
            if hi <= va_start or lo >= va_end or skipped(lo, hi):
                continue
            e = int(entries[i])
            if level in (3, 2) and e & PG_PS:
                large += 1
                frame = e & (PG_PS_FRAME_1G if level == 3 else PG_PS_FRAME_2M)
                first = max(lo, va_start)
                last = min(hi, va_end)
                n = (last - first) // PAGE_SIZE
                va_parts.append(np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE) + np.uint64(first))
                pa_parts.append(
                    np.arange(n, dtype=np.uint64) * np.uint64(PAGE_SIZE) + np.uint64(frame + first - lo)
                )
                continue
            visit(e & PG_FRAME, level - 1, lo)

    visit(pml4_pa, 4, 0)
    if va_parts:
        va = np.concatenate(va_parts)
        pa = np.concatenate(pa_parts)
        order = np.argsort(va, kind="stable")
        va, pa = va[order], pa[order]
    else:
        va = np.zeros(0, dtype=np.uint64)
        pa = np.zeros(0, dtype=np.uint64)
    return KernelMappings(va=va, pa=pa, tables=tables, large_leaves=large, unreadable_tables=unreadable)


def diff_table_entries(dumped: np.ndarray, live: np.ndarray) -> tuple[list[int], list[int]]:
    """Indices of entries that differ only in accessed/dirty bits, and of entries that differ otherwise."""
    d = dumped.view(np.uint64)
    lv = live.view(np.uint64)
    changed = np.nonzero(d != lv)[0]
    ad_mask = np.uint64(PG_A | PG_M)
    only_ad = [int(i) for i in changed if (d[i] ^ lv[i]) & ~ad_mask == 0]
    other = [int(i) for i in changed if (d[i] ^ lv[i]) & ~ad_mask != 0]
    return only_ad, other

"""Page-by-page comparison of a dump's physical pages with a live image, at memory bandwidth.

Why numpy: a 512 MiB full dump is 131072 pages; one Python comparison per page would dominate the
whole repro run. Pages are grouped into runs of consecutive physical addresses, each run is read from
the dump in one call and compared as 64-bit words against a zero-copy view of the mmapped live image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from harness.verify.live import PAGE_SIZE, LiveMemory

#: largest piece compared at once (bounds the temporary memory to about 1.2x this)
CHUNK_BYTES = 32 << 20


class DumpPhysicalPages(Protocol):
    """The part of a dump comparison needs (``reader.Vmcore`` has it)."""

    def phys_pages(self) -> Iterable[int]: ...

    def read_phys(self, pa: int, size: int) -> bytes: ...


@dataclass
class PageComparison:
    pages_compared: int = 0
    bytes_compared: int = 0
    differing: list[int] = field(default_factory=list)  # page PAs, ascending
    not_in_live: list[int] = field(default_factory=list)
    dump_pfns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))


def dump_page_frames(dump: DumpPhysicalPages) -> np.ndarray:
    """Every page frame number present in the dump, ascending (uint64)."""
    pas = np.fromiter(dump.phys_pages(), dtype=np.uint64)
    pfns = pas // np.uint64(PAGE_SIZE)
    if pfns.size > 1 and np.any(pfns[1:] <= pfns[:-1]):
        pfns = np.unique(pfns)
    return pfns


def runs_of(pfns: np.ndarray) -> list[tuple[int, int]]:
    """Split ascending frame numbers into (first_pfn, count) runs of consecutive frames."""
    if pfns.size == 0:
        return []
    breaks = np.nonzero(np.diff(pfns) != 1)[0] + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [pfns.size]))
    return [(int(pfns[s]), int(e - s)) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]


def _split_by_live(live: LiveMemory, first: int, count: int) -> list[tuple[int, int, bool]]:
    """Cut a run at live-range edges: (pfn, count, in_live)."""
    out: list[tuple[int, int, bool]] = []
    pfn, left = first, count
    while left:
        pa = pfn * PAGE_SIZE
        n_in = 0
        for rpa, rsize, _off in live.ranges:
            if rpa <= pa < rpa + rsize:
                n_in = min(left, (rpa + rsize - pa) // PAGE_SIZE)
                break
        if n_in:
            out.append((pfn, n_in, True))
            pfn += n_in
            left -= n_in
            continue
        # not in live: up to the next range start
        nxt = min((r[0] for r in live.ranges if r[0] > pa), default=None)
        n_out = left if nxt is None else min(left, max(1, (nxt - pa) // PAGE_SIZE))
        out.append((pfn, n_out, False))
        pfn += n_out
        left -= n_out
    return out


def _dump_view(dump: object, pa: int, size: int) -> memoryview | None:
    """Zero-copy bytes of consecutive dumped pages, when the dump can hand them out; else None.

    `reader.Vmcore.phys_view` slices its mapped payload when the run sits contiguously in the file
    (consecutive physical pages of a minidump or a full dump usually do); anything else (another
    page source, a run split across sections) falls back to ``read_phys``.
    """
    view = getattr(dump, "phys_view", None)
    return view(pa, size) if callable(view) else None


def compare_pages(
    dump: DumpPhysicalPages, live: LiveMemory, *, chunk_bytes: int = CHUNK_BYTES
) -> PageComparison:
    """Compare every dumped page with the live page at the same physical address."""
    result = PageComparison()
    pfns = dump_page_frames(dump)
    result.dump_pfns = pfns
    chunk_pages = max(1, chunk_bytes // PAGE_SIZE)
    for first, count in runs_of(pfns):
        for pfn, n, in_live in _split_by_live(live, first, count):
            if not in_live:
                result.not_in_live.extend(p * PAGE_SIZE for p in range(pfn, pfn + n))
                result.pages_compared += n
                continue
            done = 0
            while done < n:
                k = min(chunk_pages, n - done)
                pa = (pfn + done) * PAGE_SIZE
                data = _dump_view(dump, pa, k * PAGE_SIZE)
                if data is None:
                    data = dump.read_phys(pa, k * PAGE_SIZE)
                a = np.frombuffer(data, dtype=np.uint64).reshape(k, PAGE_SIZE // 8)
                b = live.view(pa, k * PAGE_SIZE).view(np.uint64).reshape(k, PAGE_SIZE // 8)
                bad = np.nonzero((a != b).any(axis=1))[0]
                if bad.size:
                    result.differing.extend(pa + int(i) * PAGE_SIZE for i in bad)
                result.pages_compared += k
                result.bytes_compared += k * PAGE_SIZE
                done += k
    return result


def differing_spans(a: bytes | np.ndarray, b: bytes | np.ndarray) -> list[tuple[int, int]]:
    """Byte spans [start, end) where two equal-sized buffers differ."""
    x = np.frombuffer(a, dtype=np.uint8) if isinstance(a, bytes | bytearray) else a
    y = np.frombuffer(b, dtype=np.uint8) if isinstance(b, bytes | bytearray) else b
    idx = np.nonzero(x != y)[0]
    if idx.size == 0:
        return []
    breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [idx.size]))
    return [(int(idx[s]), int(idx[e - 1]) + 1) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]

"""Live guest physical memory, indexed by physical address, for page-by-page comparison.

A live image is anything with ``ranges`` = ``[(pa, size, file_offset), ...]`` and, for the fast path,
``path`` to a raw file holding those ranges (what ``Guest.memory_image()`` writes with QMP ``pmemsave``).
The file is mapped once and physical pages are handed out as zero-copy numpy views, so comparing a
dump against it runs at memory bandwidth instead of one Python call per page.
Objects that only offer ``read(pa, size)`` still work through a slower copying path.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

PAGE_SIZE = 4096


@runtime_checkable
class PhysicalMemorySource(Protocol):
    """What verification needs from a live image (``harness.vm.memory.PhysicalMemoryImage`` fits)."""

    ranges: Sequence[tuple[int, int, int]]

    def read(self, pa: int, size: int) -> bytes: ...


class LiveMemoryError(Exception):
    """A physical address the live image does not hold, or an image file that does not match its ranges."""


class LiveMemory:
    """Read-only, mmap-backed view of a live physical memory image.

    ``ranges`` are ``(pa, size, file_offset)`` triples; when ``path`` is given the file is mapped and
    ``view(pa, size)`` returns a zero-copy ``numpy.uint8`` array. Without a path, ``source.read`` is used.
    """

    def __init__(
        self,
        ranges: Sequence[tuple[int, int, int]],
        path: str | os.PathLike[str] | None = None,
        source: PhysicalMemorySource | None = None,
    ) -> None:
        self.ranges = sorted((int(pa), int(size), int(off)) for pa, size, off in ranges)
        self._starts = [r[0] for r in self.ranges]
        self.path = Path(path) if path is not None else None
        self._source = source
        self._mmap: mmap.mmap | None = None
        self._array: np.ndarray | None = None
        if self.path is not None:
            fsize = self.path.stat().st_size
            for pa, size, off in self.ranges:
                if off + size > fsize:
                    raise LiveMemoryError(
                        f"{self.path}: range pa={pa:#x} size={size:#x} at file offset {off:#x} "
                        f"needs {off + size} bytes, file has {fsize}"
                    )
            if fsize:
                with open(self.path, "rb") as f:
                    self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                self._array = np.frombuffer(self._mmap, dtype=np.uint8)
        elif source is None:
            raise LiveMemoryError("a live image needs a raw file path or an object with read(pa, size)")

    @classmethod
    def from_image(cls, image: object) -> LiveMemory:
        """Wrap a ``PhysicalMemoryImage``-like object (``ranges`` + ``path`` and/or ``read``)."""
        if isinstance(image, LiveMemory):
            return image
        ranges = getattr(image, "ranges", None)
        if ranges is None:
            raise LiveMemoryError(f"{image!r} has no 'ranges' attribute: not a physical memory image")
        path = getattr(image, "path", None)
        source = image if hasattr(image, "read") else None
        if path is not None and Path(path).is_file():
            return cls(ranges, path=path, source=source)
        return cls(ranges, source=source)

    @classmethod
    def from_raw_file(cls, path: str | os.PathLike[str], base: int = 0) -> LiveMemory:
        """A raw file whose byte N is physical address ``base + N`` (QMP ``pmemsave 0 SIZE``)."""
        size = Path(path).stat().st_size
        return cls([(base, size, 0)], path=path)

    # -- lookup -----------------------------------------------------------------------------------
    def _locate(self, pa: int, size: int) -> int:
        """File offset of ``[pa, pa+size)`` if it lies inside one range, else raise."""
        i = bisect.bisect_right(self._starts, pa) - 1
        if i >= 0:
            start, rsize, off = self.ranges[i]
            if pa + size <= start + rsize:
                return off + (pa - start)
        raise LiveMemoryError(f"physical range {pa:#x}+{size:#x} is not in the live image")

    def contains(self, pa: int, size: int = PAGE_SIZE) -> bool:
        try:
            self._locate(pa, size)
        except LiveMemoryError:
            return False
        return True

    def view(self, pa: int, size: int) -> np.ndarray:
        """``size`` bytes at ``pa`` as a uint8 array (zero-copy on the mmap path)."""
        off = self._locate(pa, size)
        if self._array is not None:
            return self._array[off : off + size]
        assert self._source is not None
        data = self._source.read(pa, size)
        if len(data) != size:
            raise LiveMemoryError(f"live image read at {pa:#x} returned {len(data)} of {size} bytes")
        return np.frombuffer(data, dtype=np.uint8)

    def read(self, pa: int, size: int) -> bytes:
        return self.view(pa, size).tobytes()

    def read_u64(self, pa: int) -> int:
        return int.from_bytes(self.read(pa, 8), "little")

    def page_numbers(self) -> np.ndarray:
        """Every whole 4 KiB page frame number the image holds, ascending."""
        parts = []
        for pa, size, _off in self.ranges:
            first = -(-pa // PAGE_SIZE)
            last = (pa + size) // PAGE_SIZE
            if last > first:
                parts.append(np.arange(first, last, dtype=np.uint64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    @property
    def total_bytes(self) -> int:
        return sum(size for _pa, size, _off in self.ranges)

    def close(self) -> None:
        self._array = None
        if self._mmap is not None:
            # a caller may still hold a view; the mapping is then released when it is dropped
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None

    def __enter__(self) -> LiveMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_raw_image(
    path: str | os.PathLike[str], pages: dict[int, bytes] | Sequence[tuple[int, bytes]], size: int
) -> LiveMemory:
    """Write a sparse raw image of ``size`` bytes holding ``pages`` (pa -> bytes) at their addresses.

    Used to build live images from a dump's own pages (tests, benchmarks). Never overwrites a file.
    """
    items = pages.items() if isinstance(pages, dict) else pages
    with open(path, "xb") as f:
        f.truncate(size)
        for pa, data in items:
            if pa + len(data) > size:
                raise LiveMemoryError(f"page at {pa:#x} lies beyond the image size {size:#x}")
            f.seek(pa)
            f.write(data)
    return LiveMemory.from_raw_file(path)

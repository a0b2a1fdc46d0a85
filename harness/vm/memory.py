"""Live guest-physical memory: small reads with memoryPeek, whole-RAM images with QMP pmemsave.

Two methods because they trade differently (figures: ``bench/guest.py``):
- ``memoryPeek`` goes through libvirt, at most 4 MiB per call (~170 MB/s): fine for a page or a
  symbol, and it needs no file permissions.
- QMP ``pmemsave`` makes QEMU write a range straight to a file (hundreds of MB/s). QEMU runs with the
  caller's uid (see `harness.vm.domain_xml`), so any directory the caller can write works.

Physical layout: RAM is not one range on x86. Below 4 GiB QEMU leaves room for the PCI hole; the rest
of RAM continues at 4 GiB. `ram_ranges` reproduces QEMU 7.2's split for ``pc`` (i440fx, gigabyte
aligned: all RAM low when < 3.5 GiB, else 3 GiB low) and ``q35`` (all low when < 2.75 GiB, else 2 GiB
low). Anything else is refused with an error rather than guessed.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

GiB = 1 << 30
#: libvirt refuses memoryPeek requests larger than this
PEEK_CHUNK = 4 * 1024 * 1024
FOUR_GIB = 4 * GiB


class MemoryRangeError(ValueError):
    """A physical read outside guest RAM; names the request and the RAM ranges."""

    def __init__(self, pa: int, size: int, ranges: Iterable[tuple[int, ...]]) -> None:
        self.pa, self.size = pa, size
        self.ranges = [tuple(r) for r in ranges]
        shown = ", ".join(f"[{r[0]:#x}, {r[0] + r[1]:#x})" for r in self.ranges)
        super().__init__(f"physical range [{pa:#x}, {pa + size:#x}) is not inside guest RAM ({shown})")


def ram_ranges(machine: str, ram_bytes: int) -> list[tuple[int, int]]:
    """[(pa, size)] of guest RAM for QEMU 7.2 `machine` (pc or q35) with `ram_bytes` of memory."""
    if machine in ("pc", "pc-i440fx") or machine.startswith("pc-i440fx-"):
        threshold, low = 0xE0000000, 0xC0000000
    elif machine == "q35" or machine.startswith("pc-q35-"):
        threshold, low = 0xB0000000, 0x80000000
    else:
        raise ValueError(f"unknown RAM layout for machine type {machine!r}: only pc and q35 are supported")
    if ram_bytes < threshold:
        return [(0, ram_bytes)]
    return [(0, low), (FOUR_GIB, ram_bytes - low)]


def image_layout(ranges: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """[(pa, size, file_offset)] when the RAM ranges are stored back to back (pmemsave images and
    QEMU's own RAM backing file both lay guest RAM out this way)."""
    out, offset = [], 0
    for pa, size in ranges:
        out.append((pa, size, offset))
        offset += size
    return out


def _check_inside(pa: int, size: int, ranges: list[tuple[int, int]]) -> None:
    if size < 0 or pa < 0:
        raise MemoryRangeError(pa, size, ranges)
    for start, length in ranges:
        if start <= pa and pa + size <= start + length:
            return
    raise MemoryRangeError(pa, size, ranges)


def read_phys(domain: Any, pa: int, size: int, ranges: list[tuple[int, int]]) -> bytes:
    """Read [pa, pa+size) with memoryPeek in <= 4 MiB chunks (must lie inside one RAM range)."""
    from harness.vm.libvirt_conn import import_libvirt

    libvirt = import_libvirt()
    _check_inside(pa, size, ranges)
    out = bytearray()
    pos = pa
    while pos < pa + size:
        n = min(PEEK_CHUNK, pa + size - pos)
        try:
            data = domain.memoryPeek(pos, n, libvirt.VIR_MEMORY_PHYSICAL)
        except libvirt.libvirtError as exc:
            raise OSError(f"memoryPeek of {n} bytes at physical {pos:#x} failed: {exc}") from exc
        if isinstance(data, str):  # pragma: no cover - very old bindings
            data = data.encode("latin-1")
        out += data
        pos += n
    return bytes(out)


class PhysicalMemoryImage:
    """A raw file holding guest-physical ranges: ``ranges`` = [(pa, size, file_offset)]."""

    def __init__(self, path: str | os.PathLike[str], ranges: list[tuple[int, int, int]]) -> None:
        self.path = Path(path)
        self.ranges = sorted((int(a), int(b), int(c)) for a, b, c in ranges)
        self._file = None
        self._map: mmap.mmap | None = None
        expected = max((off + size for _pa, size, off in self.ranges), default=0)
        actual = self.path.stat().st_size
        if actual < expected:
            raise ValueError(f"{self.path}: {actual} bytes, but its ranges need {expected}")

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def file_offset(self, pa: int, size: int = 1) -> int:
        for start, length, off in self.ranges:
            if start <= pa and pa + size <= start + length:
                return off + (pa - start)
        raise MemoryRangeError(pa, size, self.ranges)

    def read(self, pa: int, size: int) -> bytes:
        """Bytes at [pa, pa+size); the range must lie inside one RAM range of the image."""
        off = self.file_offset(pa, size)
        return self._mapping()[off : off + size]

    read_phys = read

    @property
    def size(self) -> int:
        return sum(size for _pa, size, _off in self.ranges)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PhysicalMemoryImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create_private(path: Path) -> None:
    """An empty file only the caller can read: a RAM image holds everything the guest had in memory."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def save_image(guest: Any, path: Path, ranges: list[tuple[int, int]]) -> PhysicalMemoryImage:
    """pmemsave every RAM range of `guest` into one file at `path` (never overwrites)."""
    path = Path(path).resolve()
    if path.exists():
        raise FileExistsError(f"refusing to overwrite {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    image_ranges: list[tuple[int, int, int]] = []
    offset = 0
    try:
        for i, (pa, size) in enumerate(ranges):
            part = path if len(ranges) == 1 else path.with_name(f"{path.name}.part{i}")
            if part.exists():
                raise FileExistsError(f"refusing to overwrite {part}")
            _create_private(part)  # pmemsave keeps an existing file's mode (QEMU's own would be 0664)
            parts.append(part)
            guest.qmp("pmemsave", val=pa, size=size, filename=str(part))
            got = part.stat().st_size
            if got != size:
                raise OSError(f"pmemsave wrote {got} bytes to {part}, expected {size}")
            image_ranges.append((pa, size, offset))
            offset += size
        if len(ranges) > 1:
            _create_private(path)
            parts.append(path)
            with open(path, "r+b") as out:
                for part in parts[:-1]:
                    with open(part, "rb") as src:
                        remaining = part.stat().st_size
                        while remaining:
                            n = os.copy_file_range(src.fileno(), out.fileno(), remaining)
                            if n == 0:
                                raise OSError(f"short copy from {part}")
                            remaining -= n
    except BaseException:
        for created in parts:  # all made here (O_EXCL): nothing of anyone else's
            created.unlink(missing_ok=True)
        raise
    if len(ranges) > 1:
        for part in parts[:-1]:
            part.unlink(missing_ok=True)
    return PhysicalMemoryImage(path, image_ranges)

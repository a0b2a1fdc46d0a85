"""`QemuElfCore`: a QEMU/libvirt memory-only ELF core (``virDomainCoreDumpWithFormat`` with
``VIR_DUMP_MEMORY_ONLY``) seen through the same page interface as a FreeBSD vmcore.

Why: the tiny Linux stand-in guest cannot write a FreeBSD vmcore, but QEMU can snapshot its physical
memory as an ELF core; verifying that core against a live image exercises the same comparison,
reporting and failure paths on a real libvirt guest. This is not a FreeBSD dump reader.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAGE_SIZE = 4096
PT_LOAD = 1


class ElfCoreError(Exception):
    """Not a 64-bit little-endian ELF core, or a segment that lies outside the file."""


class QemuElfCore:
    """Physical pages of a QEMU ELF core: one PT_LOAD per guest RAM block, addressed by ``p_paddr``."""

    def __init__(self, path: str | os.PathLike[str], *, ram: list[tuple[int, int]] | None = None) -> None:
        """``ram`` = [(pa, size)] keeps only guest RAM: QEMU's core also holds ROM and VGA memory."""
        self.path = Path(path)
        self.page_size = PAGE_SIZE
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm = self._mm
        if mm[:4] != b"\x7fELF" or mm[4] != 2 or mm[5] != 1:
            raise ElfCoreError(f"{self.path}: offset 0: expected a 64-bit little-endian ELF header")
        e_type, e_machine = struct.unpack_from("<HH", mm, 16)
        if e_type != 4:
            raise ElfCoreError(f"{self.path}: offset 16: e_type {e_type}, expected 4 (ET_CORE)")
        (phoff,) = struct.unpack_from("<Q", mm, 32)
        phentsize, phnum = struct.unpack_from("<HH", mm, 54)
        if phnum == 0xFFFF:
            raise ElfCoreError(f"{self.path}: PN_XNUM program headers are not supported")
        self.segments: list[tuple[int, int, int]] = []  # (paddr, filesz, offset)
        for i in range(phnum):
            off = phoff + i * phentsize
            if off + 56 > len(mm):
                raise ElfCoreError(f"{self.path}: offset {off:#x}: program header {i} past end of file")
            p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, _memsz, _align = struct.unpack_from(
                "<IIQQQQQQ", mm, off
            )
            if p_type != PT_LOAD or p_filesz == 0:
                continue
            if p_offset + p_filesz > len(mm):
                raise ElfCoreError(
                    f"{self.path}: PT_LOAD {i} at file offset {p_offset:#x} size {p_filesz:#x} "
                    f"exceeds the file ({len(mm):#x} bytes)"
                )
            self.segments.append((p_paddr, p_filesz, p_offset))
        if ram is not None:
            clipped = []
            for pa, size, off in self.segments:
                for rpa, rsize in ram:
                    lo, hi = max(pa, rpa), min(pa + size, rpa + rsize)
                    if hi > lo:
                        clipped.append((lo, hi - lo, off + lo - pa))
            self.segments = clipped
        self.segments.sort()
        self.info: dict[str, Any] = {
            "format": "qemu-elf-core",
            "kind": "full",
            "arch": {62: "x86_64", 3: "i386", 183: "aarch64"}.get(e_machine, str(e_machine)),
            "segments": [{"paddr": hex(p), "size": s} for p, s, _o in self.segments],
        }

    def phys_pages(self) -> Iterator[int]:
        for pa, size, _off in self.segments:
            first = -(-pa // PAGE_SIZE) * PAGE_SIZE
            yield from range(first, pa + size - PAGE_SIZE + 1, PAGE_SIZE)

    def read_phys(self, pa: int, size: int) -> bytes:
        for spa, ssize, off in self.segments:
            if spa <= pa and pa + size <= spa + ssize:
                start = off + pa - spa
                return self._mm[start : start + size]
        raise ElfCoreError(f"{self.path}: physical range {pa:#x}+{size:#x} is not in one PT_LOAD segment")

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> QemuElfCore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

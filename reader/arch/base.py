"""What the reader needs to know about one architecture."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..paging import DirectMap


@dataclass(frozen=True)
class MinidumpSections:
    """Byte sizes of the sections that follow the header page, in file order."""

    msgbuf: int
    dump_avail: int
    bitmap: int
    page_table: int

    @classmethod
    def from_header(cls, hdr: dict, page_table_size: int) -> MinidumpSections:
        """Every section is page-aligned in the file (`round_page` in each arch's minidump_machdep.c)."""
        return cls(
            msgbuf=_round_page(hdr["msgbufsize"]),
            dump_avail=_round_page(hdr.get("dumpavailsize", 0)),
            bitmap=_round_page(hdr["bitmapsize"]),
            page_table=_round_page(page_table_size),
        )


def _round_page(n: int) -> int:
    return (n + 0xFFF) & ~0xFFF


@dataclass(frozen=True)
class PcbLayout:
    """Registers saved in `struct pcb`: (name, byte offset) pairs, all `word` bytes wide."""

    word: int
    registers: tuple[tuple[str, int], ...]
    #: extra registers derived from saved ones (e.g. arm64 pc = lr)
    aliases: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Arch:
    name: str                      # FreeBSD MACHINE name: amd64, i386, arm64
    machine_arch: str              # MACHINE_ARCH as in kerneldumpheader: amd64, i386, aarch64
    minidump_magic: bytes          # 24-byte NUL-padded magic
    elf_machine: int
    pointer_size: int
    minidump_versions: frozenset[int]
    #: version -> header fields [(name, struct code)] after magic[24]
    header_fields: Callable[[int], list[tuple[str, str]]]
    #: decoded header -> section sizes
    sections: Callable[[dict], MinidumpSections]
    #: (header, page-table section as bytes-like, word reader, pages reader) -> translator
    minidump_translator: Callable[..., Any]
    #: osreldate (or None) -> PCB layout
    pcb_layout: Callable[[int | None], PcbLayout]
    #: decoded minidump header -> the direct map window, if the architecture has one
    dmap: Callable[[dict], DirectMap | None] = field(default=lambda hdr: None)
    #: lowest kernel VA for `kernel_pages()` of a full dump (None: not supported)
    full_dump_kva_min: int | None = None


def as_entries(section: memoryview, itemsize: int) -> np.ndarray:
    n = len(section) // itemsize
    return np.frombuffer(section, dtype="<u8" if itemsize == 8 else "<u4", count=n)

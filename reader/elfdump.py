"""Full ("traditional") dumps: an ELF core of physical memory, one PT_LOAD per chunk.

`sys/kern/kern_dump.c` writes an ELF header (EI_OSABI STANDALONE, e_version left 0), one
PT_LOAD per dump_avail chunk with p_paddr = chunk start, and the data; no notes, no registers.
Virtual addresses are translated by walking the kernel's own page tables, found through the
kernel symbols (see `find_amd64_root`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .arch import BY_ELF_MACHINE, Arch
from .errors import FormatError, TruncatedError
from .physmem import PAGE_SIZE, SegmentIndex

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
PT_LOAD = 1
PAGE_MASK = PAGE_SIZE - 1


@dataclass
class ElfDump:
    arch: Arch
    header: dict[str, Any]
    segments: list[tuple[int, int, int]]   # (paddr, size, offset)
    phys: SegmentIndex
    expected_size: int


def is_elf(buf: Any) -> bool:
    return len(buf) >= 4 and bytes(buf[:4]) == ELF_MAGIC


def parse(buf: Any, path: Path) -> ElfDump:
    size = len(buf)
    if size < 52:
        raise TruncatedError(f"payload is only {size} bytes", path=path, offset=0, field="e_ident",
                             expected="an ELF header")
    ei_class, ei_data = buf[4], buf[5]
    if ei_class not in (1, 2):
        raise FormatError(f"EI_CLASS {ei_class}", path=path, offset=4, field="EI_CLASS",
                          expected="1 (ELFCLASS32) or 2 (ELFCLASS64)")
    if ei_data != 1:
        raise FormatError(f"EI_DATA {ei_data}", path=path, offset=5, field="EI_DATA",
                          expected="1 (little-endian; big-endian dumps are not supported)")
    is64 = ei_class == 2
    if is64:
        if size < 64:
            raise TruncatedError(f"payload is only {size} bytes", path=path, offset=size,
                                 field="Elf64_Ehdr", expected="64 bytes")
        (e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, e_phentsize,
         e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHIQQQIHHHHHH", buf, 16)
        ph_fmt, ph_size = "<IIQQQQQQ", 56
    else:
        (e_type, e_machine, e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, e_phentsize,
         e_phnum, e_shentsize, e_shnum, e_shstrndx) = struct.unpack_from("<HHIIIIIHHHHHH", buf, 16)
        ph_fmt, ph_size = "<IIIIIIII", 32
    if e_type != ET_CORE:
        raise FormatError(f"e_type {e_type}", path=path, offset=16, field="e_type",
                          expected="4 (ET_CORE): a vmcore, not a kernel or program")
    arch = BY_ELF_MACHINE.get(e_machine)
    if arch is None or (arch.pointer_size == 8) != is64:
        raise FormatError(f"e_machine {e_machine} with ELFCLASS{64 if is64 else 32}", path=path,
                          offset=18, field="e_machine",
                          expected=", ".join(f"{a.elf_machine} ({a.name})" for a in BY_ELF_MACHINE.values()))
    if e_phentsize != ph_size:
        raise FormatError(f"e_phentsize {e_phentsize}", path=path, offset=54 if is64 else 42,
                          field="e_phentsize", expected=str(ph_size))
    if e_phnum == 0:
        raise FormatError("no program headers", path=path, offset=56 if is64 else 44, field="e_phnum",
                          expected="at least one PT_LOAD")
    if e_phoff + e_phnum * ph_size > size:
        raise TruncatedError(f"program headers [{e_phoff:#x}, {e_phoff + e_phnum * ph_size:#x}) lie past "
                             f"the end of the {size:#x}-byte payload", path=path,
                             offset=32 if is64 else 28, field="e_phoff/e_phnum",
                             expected="program headers inside the file")
    segments = []
    loads = []
    for i in range(e_phnum):
        at = e_phoff + i * ph_size
        if is64:
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = struct.unpack_from(
                ph_fmt, buf, at)
        else:
            p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align = struct.unpack_from(
                ph_fmt, buf, at)
        if p_type != PT_LOAD:
            continue
        if p_offset & PAGE_MASK or p_paddr & PAGE_MASK or p_filesz & PAGE_MASK:
            raise FormatError(f"PT_LOAD[{i}] offset {p_offset:#x} paddr {p_paddr:#x} filesz {p_filesz:#x}",
                              path=path, offset=at, field=f"phdr[{i}]",
                              expected="page-aligned p_offset, p_paddr and p_filesz")
        if p_filesz != p_memsz:
            raise FormatError(f"PT_LOAD[{i}] filesz {p_filesz:#x} != memsz {p_memsz:#x}", path=path,
                              offset=at, field=f"phdr[{i}].p_filesz", expected="filesz == memsz")
        if p_filesz == 0:
            continue
        if p_paddr + p_filesz > 1 << 52 or p_offset + p_filesz > 1 << 62:
            raise FormatError(f"PT_LOAD[{i}] paddr {p_paddr:#x} + {p_filesz:#x} is beyond any physical "
                              "address", path=path, offset=at, field=f"phdr[{i}].p_paddr",
                              expected="a range below 2**52")
        if p_offset > size:
            raise TruncatedError(f"PT_LOAD[{i}] data starts at {p_offset:#x}, past the end of the "
                                 f"{size:#x}-byte payload", path=path, offset=at + (8 if is64 else 4),
                                 field=f"phdr[{i}].p_offset", expected="segment data inside the file")
        segments.append((p_paddr, p_filesz, p_offset))
        loads.append({"index": i, "offset": p_offset, "paddr": p_paddr, "vaddr": p_vaddr,
                      "size": p_filesz, "flags": p_flags})
    if not segments:
        raise FormatError("no non-empty PT_LOAD", path=path, offset=e_phoff, field="phdr",
                          expected="at least one PT_LOAD of physical memory")
    segs = sorted(segments)
    for (a, n, _), (b, _, _) in zip(segs, segs[1:], strict=False):
        if a + n > b:
            raise FormatError(f"PT_LOADs overlap at physical {b:#x}", path=path, offset=e_phoff,
                              field="phdr.p_paddr", expected="disjoint physical ranges")
    offs = sorted((o, n) for _, n, o in segments)
    for (a, n), (b, _) in zip(offs, offs[1:], strict=False):
        if a + n > b:
            raise FormatError(f"PT_LOAD file ranges overlap at offset {b:#x}", path=path, offset=e_phoff,
                              field="phdr.p_offset", expected="disjoint file ranges")
    header = {"elfclass": 64 if is64 else 32, "e_type": e_type, "e_machine": e_machine,
              "e_version": e_version, "ei_osabi": buf[7], "e_phoff": e_phoff, "e_phnum": e_phnum,
              "segments": loads}
    expected = max(o + n for _, n, o in segments)
    return ElfDump(arch=arch, header=header, segments=segments, phys=SegmentIndex(segments),
                   expected_size=expected)


def amd64_root_candidates(kpml4_sym: int, kernbase_sym: int, phys: SegmentIndex,
                          file_size: int) -> np.ndarray:
    """Physical addresses where `KPML4phys` may live: default load first, then every 2 MiB shift.

    Only physical memory actually present in the file is searched, so a corrupt segment size
    cannot make the candidate list large.
    """
    base = kpml4_sym - kernbase_sym
    hi = max(pa + max(0, min(n, file_size - off)) for pa, n, off in phys.segments)
    deltas = np.arange(0, max(hi - base, 0) + 1, 2 << 20, dtype=np.int64)
    lows = np.arange(-(2 << 20), -base - 1, -(2 << 20), dtype=np.int64)  # kernels below the default
    return np.concatenate([base + deltas, base + lows]).astype(np.int64)

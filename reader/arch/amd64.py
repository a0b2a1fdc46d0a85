"""amd64: minidump v1 (flat PTEs), v2/v3 (one PDE per 2 MiB, PT pages in the dump), PCB.

Facts (libkvm `kvm_minidump_amd64.c`, `sys/amd64/include/minidump.h`, `minidump_machdep.c`):
v1 and v2 headers are binary identical (field 36 is `ptesize` in v1, `pmapsize` in v2+); v3
appends `dumpavailsize`. v2/v3 `kernbase` is VM_MIN_KERNEL_ADDRESS; 1 GiB mappings arrive as
synthesised PD pages of 512 PG_PS entries.
"""

from __future__ import annotations

from ..paging import DirectMap, EntryFormat, FlatTable, PdeTable
from .base import Arch, MinidumpSections, PcbLayout, as_entries

PG_V = 0x1
PG_PS = 0x80
PG_FRAME = 0x000FFFFFFFFFF000
PG_PS_FRAME = 0x000FFFFFFFE00000

ENTRY = EntryFormat(valid_mask=PG_V, valid_value=PG_V, frame_mask=PG_FRAME, large_bit=PG_PS,
                    large_frame_mask=PG_PS_FRAME)
#: VM_MIN_KERNEL_ADDRESS with 4-level paging: full-dump kernel_pages() starts here (DMAP is below)
VM_MIN_KERNEL_ADDRESS = 0xFFFFFE0000000000



def header_fields(version: int) -> list[tuple[str, str]]:
    fields = [("version", "I"), ("msgbufsize", "I"), ("bitmapsize", "I"),
              ("ptesize" if version == 1 else "pmapsize", "I"),
              ("kernbase", "Q"), ("dmapbase", "Q"), ("dmapend", "Q")]
    if version >= 3:
        fields.append(("dumpavailsize", "I"))
    return fields


def sections(hdr: dict) -> MinidumpSections:
    return MinidumpSections.from_header(hdr, hdr.get("pmapsize", hdr.get("ptesize", 0)))


def dmap(hdr: dict) -> DirectMap | None:
    if hdr["dmapend"] > hdr["dmapbase"]:
        return DirectMap(hdr["dmapbase"], hdr["dmapend"], 0)
    return None


def minidump_translator(hdr: dict, section: memoryview, read_word, read_pages):
    entries = as_entries(section, 8)
    if hdr["version"] == 1:
        return FlatTable(entries, hdr["kernbase"], ENTRY, dmap=dmap(hdr))
    return PdeTable(entries, hdr["kernbase"], ENTRY, read_word, read_pages, dmap=dmap(hdr))


def pcb_layout(osreldate: int | None) -> PcbLayout:
    # sys/amd64/include/pcb.h: the callee-saved registers savectx()/cpu_switch() store first
    names = ("r15", "r14", "r13", "r12", "rbp", "rsp", "rbx", "rip")
    return PcbLayout(8, tuple((n, 8 * i) for i, n in enumerate(names)))


ARCH = Arch(
    name="amd64",
    machine_arch="amd64",
    minidump_magic=b"minidump FreeBSD/amd64\0\0",
    elf_machine=62,
    pointer_size=8,
    minidump_versions=frozenset({1, 2, 3}),
    header_fields=header_fields,
    sections=sections,
    minidump_translator=minidump_translator,
    pcb_layout=pcb_layout,
    dmap=dmap,
    full_dump_kva_min=VM_MIN_KERNEL_ADDRESS,
)

"""i386: minidump v1/v2, a flat array of leaf PTEs (8-byte with PAE, 4-byte without), PCB.

Facts (`sys/i386/include/minidump.h`, libkvm `kvm_minidump_i386.c`): header
magic, version, msgbufsize, bitmapsize, ptesize, kernbase (u32), paemode (u32), and in v2
dumpavailsize; dump_avail entries are 64-bit even on i386; there is no direct map.
"""

from __future__ import annotations

from ..paging import EntryFormat, FlatTable
from .base import Arch, MinidumpSections, PcbLayout, as_entries

PAE_ENTRY = EntryFormat(valid_mask=0x1, valid_value=0x1, frame_mask=0x000FFFFFFFFFF000)
NOPAE_ENTRY = EntryFormat(valid_mask=0x1, valid_value=0x1, frame_mask=0xFFFFF000)



def header_fields(version: int) -> list[tuple[str, str]]:
    fields = [("version", "I"), ("msgbufsize", "I"), ("bitmapsize", "I"), ("ptesize", "I"),
              ("kernbase", "I"), ("paemode", "I")]
    if version >= 2:
        fields.append(("dumpavailsize", "I"))
    return fields


def sections(hdr: dict) -> MinidumpSections:
    return MinidumpSections.from_header(hdr, hdr["ptesize"])


def minidump_translator(hdr: dict, section: memoryview, read_word, read_pages):
    if hdr["paemode"]:
        return FlatTable(as_entries(section, 8), hdr["kernbase"], PAE_ENTRY)
    return FlatTable(as_entries(section, 4), hdr["kernbase"], NOPAE_ENTRY)


def pcb_layout(osreldate: int | None) -> PcbLayout:
    # sys/i386/include/pcb.h: pcb_edi, pcb_esi, pcb_ebp, pcb_esp, pcb_ebx, pcb_eip
    names = ("edi", "esi", "ebp", "esp", "ebx", "eip")
    return PcbLayout(4, tuple((n, 4 * i) for i, n in enumerate(names)))


ARCH = Arch(
    name="i386",
    machine_arch="i386",
    minidump_magic=b"minidump FreeBSD/i386\0\0\0",
    elf_machine=3,
    pointer_size=4,
    minidump_versions=frozenset({1, 2}),
    header_fields=header_fields,
    sections=sections,
    minidump_translator=minidump_translator,
    pcb_layout=pcb_layout,
)

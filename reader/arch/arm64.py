"""arm64: minidump v1/v2/v3, a flat array of L3 descriptors from kernbase, DMAP, PCB.

Facts (`sys/arm64/include/minidump.h`, libkvm `kvm_minidump_aarch64.c`): header adds
`dmapphys`; v2 adds `dumpavailsize`, v3 `flags` (page-size bits; only 4 KiB pages are
supported here). A descriptor is valid iff its low two bits are 0b11.
"""

from __future__ import annotations

from ..paging import DirectMap, EntryFormat, FlatTable
from .base import Arch, MinidumpSections, PcbLayout, as_entries

L3_ENTRY = EntryFormat(valid_mask=0x3, valid_value=0x3, frame_mask=0x0003FFFFFFFFF000)
#: FreeBSD 14 changed struct pcb (lldb RegisterContextFreeBSDKernel_arm64 uses this osreldate)
PCB_LAYOUT_14_OSRELDATE = 1400084



def header_fields(version: int) -> list[tuple[str, str]]:
    fields = [("version", "I"), ("msgbufsize", "I"), ("bitmapsize", "I"), ("pmapsize", "I"),
              ("kernbase", "Q"), ("dmapphys", "Q"), ("dmapbase", "Q"), ("dmapend", "Q")]
    if version >= 2:
        fields.append(("dumpavailsize", "I"))
    if version >= 3:
        fields.append(("flags", "I"))
    return fields


def sections(hdr: dict) -> MinidumpSections:
    return MinidumpSections.from_header(hdr, hdr["pmapsize"])


def dmap(hdr: dict) -> DirectMap | None:
    if hdr["dmapend"] > hdr["dmapbase"]:
        return DirectMap(hdr["dmapbase"], hdr["dmapend"], hdr["dmapphys"])
    return None


def minidump_translator(hdr: dict, section: memoryview, read_word, read_pages):
    return FlatTable(as_entries(section, 8), hdr["kernbase"], L3_ENTRY, dmap=dmap(hdr), dmap_first=True)


def pcb_layout(osreldate: int | None) -> PcbLayout:
    if osreldate is not None and osreldate >= PCB_LAYOUT_14_OSRELDATE:
        # 14.x: pcb_x[12] = x19..x30, then pcb_sp
        regs = tuple((f"x{19 + i}", 8 * i) for i in range(10)) + (("fp", 80), ("lr", 88), ("sp", 96))
    else:
        # 13.x: pcb_x[30] = x0..x29, pcb_lr, _reserved, pcb_sp
        regs = tuple((f"x{i}", 8 * i) for i in range(29)) + (("fp", 232), ("lr", 240), ("sp", 256))
    return PcbLayout(8, regs, aliases=(("pc", "lr"),))


ARCH = Arch(
    name="arm64",
    machine_arch="aarch64",
    minidump_magic=b"minidump FreeBSD/arm64\0\0",
    elf_machine=183,
    pointer_size=8,
    minidump_versions=frozenset({1, 2, 3}),
    header_fields=header_fields,
    sections=sections,
    minidump_translator=minidump_translator,
    pcb_layout=pcb_layout,
    dmap=dmap,
)

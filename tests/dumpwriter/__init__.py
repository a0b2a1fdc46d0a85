"""Test-only writer of synthetic FreeBSD kernel dumps (a stand-in for a real kernel's dumper).

Real dumps (tests/data/lldb-freebsd) cover four shapes; this writer covers the rest: every
minidump version and architecture, 2 MiB and 1 GiB kernel mappings, sparse bitmaps and
dump_avail holes, full ELF dumps with the kernel loaded away from its default physical
address, and kernels (symbol tables) to go with them. Every page whose content is not given
explicitly is filled with `page_pattern(pa)`: each 8-byte word holds its own physical address,
so a reader that maps an address to the wrong page is caught.

    spec = write_amd64_minidump(path, {0x200000: b"hello"},
                                [Mapping(0xfffffe0000000000, 0x200000)], version=3)
"""

from .elf import write_amd64_full_dump, write_kernel_elf
from .kstructs import ProcSpec, ThreadSpec, write_threads_dump
from .minidump import (
    Mapping,
    MinidumpSpec,
    page_pattern,
    write_amd64_minidump,
    write_arm64_minidump,
    write_i386_minidump,
)

__all__ = [
    "Mapping",
    "MinidumpSpec",
    "ProcSpec",
    "ThreadSpec",
    "page_pattern",
    "write_amd64_full_dump",
    "write_amd64_minidump",
    "write_arm64_minidump",
    "write_i386_minidump",
    "write_kernel_elf",
    "write_threads_dump",
]

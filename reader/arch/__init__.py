"""Per-architecture knowledge behind one registry (as libkvm's `kvm_arch` table).

Each module describes one architecture as data plus a few small functions: its minidump
header layout and page-table section, its ELF machine number, pointer size, and PCB register
layout. `reader.minidump` and `reader.elfdump` dispatch through `BY_MINIDUMP_MAGIC` and
`BY_ELF_MACHINE`; adding an architecture means adding a module here and one line below.
"""

from __future__ import annotations

from . import amd64, arm64, i386
from .base import Arch

ARCHES: dict[str, Arch] = {a.name: a for a in (amd64.ARCH, i386.ARCH, arm64.ARCH)}
BY_MINIDUMP_MAGIC: dict[bytes, Arch] = {a.minidump_magic: a for a in ARCHES.values()}
BY_ELF_MACHINE: dict[int, Arch] = {a.elf_machine: a for a in ARCHES.values()}

__all__ = ["ARCHES", "BY_ELF_MACHINE", "BY_MINIDUMP_MAGIC", "Arch"]

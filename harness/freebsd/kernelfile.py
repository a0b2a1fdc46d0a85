"""What a FreeBSD kernel *file* says about itself, read from what FreeBSD puts in it.

Why: when a kernel stays silent after GRUB's hand-over, the file is the only witness left; and a
FreeBSD kernel must be recognised without trusting the word "FreeBSD" in its version string, which
derivatives (TrueNAS, pfSense, HardenedBSD, GhostBSD, ...) change. Facts used (sys/sys/elf_common.h,
sys/kern/subr_module.c, sys/amd64/amd64/machdep.c of freebsd-src):

* the ELF ABI tag note: owner ``"FreeBSD"``, type 1 (``NT_FREEBSD_ABI_TAG``), a 4-byte descriptor
  holding ``__FreeBSD_version`` (e.g. 1500068 for 15.0); ``e_ident[EI_OSABI]`` 9 (``ELFOSABI_FREEBSD``)
  on amd64/i386 kernels (arm64 kernels carry 0, so OS/ABI alone is not enough);
* the ``osreldate`` symbol (an ``int`` = ``__FreeBSD_version``), when there is no note;
* the preload module types the kernel looks its boot metadata up by: ``"elf kernel"`` (what loader(8)
  registers) and, in 12.x ``hammer_time()``, also ``"elf64 kernel"`` (what GRUB's ``kfreebsd``
  registers for amd64); kernels with ``preload_initkmdp()`` accept only ``"elf kernel"`` and panic
  ``"unable to find kernel metadata"`` before any console exists.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

ELFOSABI_FREEBSD = 9
NT_FREEBSD_ABI_TAG = 1
PT_NOTE = 4
SHT_NOTE = 7
#: module types a kernel may look its own preload metadata up by
PRELOAD_TYPES = ("elf kernel", "elf64 kernel")
#: the early panic of a kernel that found no "elf kernel" metadata (preload_initkmdp(), 13+)
NO_METADATA_PANIC = "unable to find kernel metadata"
_MACHINES = {3: "i386", 62: "amd64", 183: "arm64", 243: "riscv", 21: "powerpc64", 40: "arm"}


class KernelFileError(ValueError):
    """The file cannot be read as an ELF kernel; the message names file, offset and expectation."""


@dataclass(frozen=True)
class KernelFile:
    """Facts from one kernel file; `evidence` lists what made us call it FreeBSD."""

    path: Path
    elf_class: int  # 32 | 64
    machine: str  # "amd64", "i386", ... or "EM_<n>"
    osabi: int
    abi_tag_version: int | None = None  # __FreeBSD_version from the ABI tag note
    osreldate: int | None = None  # from the osreldate symbol
    preload_types: tuple[str, ...] = ()  # PRELOAD_TYPES present as NUL-terminated strings
    panics_without_elf_kernel: bool = False  # contains NO_METADATA_PANIC
    evidence: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_freebsd(self) -> bool:
        return bool(self.evidence)

    @property
    def freebsd_version(self) -> int | None:
        return self.abi_tag_version if self.abi_tag_version is not None else self.osreldate

    @property
    def release(self) -> str | None:
        """``__FreeBSD_version`` as a release, e.g. 1500068 -> "15.0", 1201000 -> "12.1"."""
        v = self.freebsd_version
        return f"{v // 100000}.{v // 1000 % 100}" if v else None

    @property
    def accepts_only_elf_kernel(self) -> bool | None:
        """True: this kernel finds its boot metadata only under "elf kernel" (GRUB's "elf64 kernel"
        leaves it without metadata); False: it also accepts "elf64 kernel"; None: unknown."""
        if self.panics_without_elf_kernel:
            return True
        if "elf64 kernel" in self.preload_types and self.freebsd_version and self.freebsd_version < 1300000:
            return False
        return None

    def describe(self) -> str:
        """One line: what the file is and what it expects at hand-over."""
        if not self.is_freebsd:
            what = f"not recognisably a FreeBSD kernel (OS/ABI {self.osabi}, no FreeBSD ABI note)"
        else:
            source = "ABI note" if self.abi_tag_version is not None else "osreldate symbol"
            version = (
                f"__FreeBSD_version {self.freebsd_version} ({self.release}, {source})"
                if self.freebsd_version
                else "version unknown"
            )
            what = f"FreeBSD {self.machine} kernel, {version}"
        types = " and ".join(f'"{t}"' for t in self.preload_types) or "no preload type string"
        expects = f"contains {types}"
        if self.panics_without_elf_kernel:
            expects += f' and the panic "{NO_METADATA_PANIC}" (its metadata must be typed "elf kernel")'
        return f"{self.path}: {what}; {expects}"


def _notes(data: bytes | mmap.mmap, start: int, size: int, endian: str):
    """(name, type, desc) of every note in [start, start+size)."""
    pos, end = start, start + size
    while pos + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from(endian + "III", data, pos)
        name_at = pos + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        nxt = desc_at + ((descsz + 3) & ~3)
        if nxt > end or namesz > 256:
            return
        name = bytes(data[name_at : name_at + namesz]).rstrip(b"\0")
        yield name, ntype, bytes(data[desc_at : desc_at + descsz])
        pos = nxt


def _symbol_int(elf, data, name: str) -> int | None:
    """The 4-byte initial value of data symbol `name` from the file (None if absent/unreadable)."""
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        return None
    for sym in symtab.get_symbol_by_name(name) or []:
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int) or sym["st_size"] < 4:
            continue
        section = elf.get_section(shndx)
        if section["sh_type"] == "SHT_NOBITS":
            continue
        off = section["sh_offset"] + sym["st_value"] - section["sh_addr"]
        if 0 <= off <= len(data) - 4:
            return struct.unpack_from("<i" if elf.little_endian else ">i", data, off)[0]
    return None


def inspect_kernel_file(path: Path | str) -> KernelFile:
    """Read the facts above from `path`; `KernelFileError` if it is not an ELF file we can parse."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    path = Path(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; mmap keeps big kernels out of memory
    except OSError as exc:
        raise KernelFileError(f"{path}: cannot read the kernel file: {exc}") from exc
    with handle:
        head = handle.read(64)
        if head[:4] != b"\x7fELF":
            raise KernelFileError(
                f"{path}: offset 0: not an ELF file (magic {head[:4].hex(' ') or 'empty'}, "
                "expected 7f 45 4c 46)"
            )
        if len(head) < 20 or head[4] not in (1, 2) or head[5] not in (1, 2):
            raise KernelFileError(f"{path}: offset 4: bad ELF class/data bytes {head[4:6].hex(' ')}")
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            elf_class = 32 if head[4] == 1 else 64
            endian = "<" if head[5] == 1 else ">"
            osabi = head[7]
            machine_no = struct.unpack_from(endian + "H", head, 18)[0]
            machine = _MACHINES.get(machine_no, f"EM_{machine_no}")
            try:
                elf = ELFFile(handle)
                regions = [
                    (s["sh_offset"], s["sh_size"]) for s in elf.iter_sections() if s["sh_type"] == "SHT_NOTE"
                ]
                regions += [
                    (p["p_offset"], p["p_filesz"]) for p in elf.iter_segments() if p["p_type"] == "PT_NOTE"
                ]
                osreldate = _symbol_int(elf, data, "osreldate")
            except (ELFError, struct.error, ValueError, IndexError, KeyError, AttributeError) as exc:
                raise KernelFileError(f"{path}: malformed ELF headers: {exc}") from exc
            abi_version = None
            for start, size in dict.fromkeys(regions):
                if start + size > len(data):
                    raise KernelFileError(
                        f"{path}: offset {start:#x}: note region of {size} bytes runs past the end of "
                        "the file"
                    )
                for name, ntype, desc in _notes(data, start, size, endian):
                    if name == b"FreeBSD" and ntype == NT_FREEBSD_ABI_TAG and len(desc) == 4:
                        abi_version = struct.unpack(endian + "I", desc)[0]
                        break
                if abi_version is not None:
                    break
            types = tuple(t for t in PRELOAD_TYPES if data.find(b"\0" + t.encode() + b"\0") >= 0)
            panics = data.find(NO_METADATA_PANIC.encode()) >= 0
        finally:
            data.close()
    evidence = []
    if abi_version is not None:
        evidence.append(f"FreeBSD ABI tag note (__FreeBSD_version {abi_version})")
    if osabi == ELFOSABI_FREEBSD:
        evidence.append("ELF OS/ABI 9 (FreeBSD)")
    if osreldate is not None and not evidence:
        evidence.append(f"osreldate symbol ({osreldate})")
    return KernelFile(path, elf_class, machine, osabi, abi_version, osreldate, types, panics, tuple(evidence))

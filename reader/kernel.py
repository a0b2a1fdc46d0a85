"""Kernel symbol tables from the kernel ELF (pyelftools), local symbols included.

`dumppcb` is a file-local (`static`) symbol in kern_shutdown.c, so globals and locals are
both indexed; where a name is defined more than once the global definition wins, then the
first local one (the same preference a debugger's name lookup has).

`symbolize(addr)` turns a code address into `function+0xoff` from the functions and code labels
of executable sections (assembly entry points such as `calltrap` are untyped labels, so NOTYPE
symbols in code count too). `file_bytes(addr, n)` reads initialised data straight from the file:
what the dump must hold too if dump and kernel belong together.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from elftools.elf.elffile import ELFFile

from .errors import FormatError, ReaderError, SymbolError

SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4
STT_NOTYPE = 0
STT_FUNC = 2


def _build_id(elf: ELFFile) -> tuple[str | None, int | None, int]:
    """The GNU build-id as hex, and its note section's load address and size (if loaded)."""
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_NOTE":
            continue
        try:
            for note in sec.iter_notes():
                if note["n_type"] == "NT_GNU_BUILD_ID":
                    loaded = sec["sh_flags"] & SHF_ALLOC and sec["sh_addr"]
                    return (str(note["n_desc"]), sec["sh_addr"] if loaded else None, sec["sh_size"])
        except Exception:  # noqa: BLE001 - a malformed note is not a reason to refuse the symbols
            return None, None, 0
    return None, None, 0


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    local: bool
    absolute: bool


@dataclass(frozen=True)
class Section:
    name: str
    address: int
    size: int
    flags: int
    index: int


@dataclass(frozen=True)
class SymbolTable:
    """Every defined, named symbol of .symtab as parsed (numpy records + string table), duplicates kept:
    address-to-name lookups (harness.verify.symbols) need every static of the same name."""

    records: np.ndarray  # fields name (strtab offset), info, other, shndx, value, size
    strings: bytes

    def name(self, offset: int) -> str:
        end = self.strings.find(b"\0", offset)
        return self.strings[offset : end if end >= 0 else len(self.strings)].decode("utf-8", "replace")


class Kernel:
    """The symbols of one kernel image (or its `.debug` file)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                elf = ELFFile(f)
                self.elf_machine = elf.header["e_machine"]
                self.elfclass = elf.elfclass
                self.sections = self._sections(elf)
                self._section_rows = [(sec["sh_addr"], sec["sh_size"], sec["sh_offset"], sec["sh_type"],
                                   sec["sh_flags"]) for sec in elf.iter_sections()]
                self._symbols = self._load(elf)
                self._data_addr: list[int] | None = None
                self._data: list[tuple[int, int, str]] = []
                self.build_id, self.build_id_address, self.build_id_note_size = _build_id(elf)
        except OSError as exc:
            raise ReaderError(f"cannot read kernel: {exc.strerror}", path=self.path) from None
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyelftools/construct raise many types on bad input
            raise FormatError(f"not a readable kernel ELF: {exc}", path=self.path, offset=0,
                              field="ELF header", expected="an ELF kernel with a .symtab") from None

    @staticmethod
    def _sections(elf: ELFFile) -> list[Section]:
        """Section headers (name, address, size, flags, index): what a symbol's address lies in."""
        out = []
        for idx, sec in enumerate(elf.iter_sections()):
            out.append(Section(sec.name, sec["sh_addr"], sec["sh_size"], sec["sh_flags"], idx))
        return out

    def _load(self, elf: ELFFile) -> dict[str, Symbol]:
        """Parse .symtab with numpy (pyelftools only locates it): ~50 ms for a 70k-symbol kernel."""
        table = elf.get_section_by_name(".symtab")
        if table is None:
            raise FormatError("kernel has no .symtab (stripped?)", path=self.path, offset=0,
                              field=".symtab", expected="a symbol table (use kernel.debug or an "
                              "unstripped kernel)")
        strtab = elf.get_section(table["sh_link"])
        if elf.elfclass == 64:
            dtype = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                              ("value", "<u8"), ("size", "<u8")])
        else:
            dtype = np.dtype([("name", "<u4"), ("value", "<u4"), ("size", "<u4"), ("info", "u1"),
                              ("other", "u1"), ("shndx", "<u2")])
        if elf.little_endian is False:
            dtype = dtype.newbyteorder(">")
        raw = table.data()
        strs = strtab.data()
        syms = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)
        typ = syms["info"] & 0xF
        keep = (syms["shndx"] != 0) & (syms["name"] != 0) & (typ != 3) & (typ != 4)  # SECTION, FILE
        syms = syms[keep]
        self.table = SymbolTable(syms, strs)
        code_sections = {i for i, sec in enumerate(self._section_rows)
                         if sec[4] & SHF_EXECINSTR and sec[3] != "SHT_NOBITS"}
        typ = syms["info"] & 0xF
        is_code = np.isin(syms["shndx"], sorted(code_sections)) & ((typ == STT_FUNC) | (typ == STT_NOTYPE))
        code = syms[is_code]
        order = np.lexsort((code["info"] >> 4 == 0, code["value"]))   # by address, globals first
        code = code[order]
        self._code_addr: list[int] = []
        self._code_end: list[int] = []
        self._code_name: list[str] = []
        self._code_unsized: list[bool] = []
        for name_off, value, size, shndx in zip(code["name"].tolist(), code["value"].tolist(),
                                                code["size"].tolist(), code["shndx"].tolist(), strict=True):
            if self._code_addr and self._code_addr[-1] == value:
                continue        # an alias at the same address: keep the first (global) name
            end = strs.find(b"\0", name_off)
            sec_addr, sec_size = self._section_rows[shndx][:2]
            self._code_addr.append(value)
            self._code_end.append(value + size if size else sec_addr + sec_size)
            self._code_name.append(strs[name_off : end if end >= 0 else len(strs)].decode("utf-8", "replace"))
            self._code_unsized.append(not size)
        # an unsized label ends where the next code symbol starts (or at its section's end)
        for i in range(len(self._code_addr) - 1):
            nxt = self._code_addr[i + 1]
            if self._code_end[i] > nxt and self._code_unsized[i]:
                self._code_end[i] = nxt
        out: dict[str, Symbol] = {}
        for name_off, info, shndx, value, size in zip(syms["name"].tolist(), syms["info"].tolist(),
                                                      syms["shndx"].tolist(), syms["value"].tolist(),
                                                      syms["size"].tolist(), strict=True):
            end = strs.find(b"\0", name_off)
            name = strs[name_off : end if end >= 0 else len(strs)].decode("utf-8", "replace")
            local = info >> 4 == 0
            old = out.get(name)
            if old is None or (old.local and not local):
                out[name] = Symbol(name, value, size, local, shndx == 0xFFF1)
        return out

    def lookup(self, name: str) -> Symbol:
        try:
            return self._symbols[name]
        except KeyError:
            raise SymbolError(f"symbol {name!r} is not in the kernel's symbol table",
                              path=self.path, field=name, expected="a defined symbol") from None

    @property
    def has_code_symbols(self) -> bool:
        """False for symbol-only kernels (e.g. LLDB's test kernels): no `function+off` names then."""
        return bool(self._code_addr)

    def function_at(self, addr: int) -> tuple[str, int] | None:
        """(function, offset) of code address `addr`, or None when no function covers it.

        A sized function covers [start, start+size); an unsized code label (assembly entry)
        covers up to the next symbol, as ddb's nearest-symbol rule does.
        """
        i = bisect.bisect_right(self._code_addr, addr) - 1
        if i < 0:
            return None
        start = self._code_addr[i]
        end = self._code_end[i]
        if addr >= end:
            return None
        return self._code_name[i], addr - start

    def symbolize(self, addr: int) -> str | None:
        """`function+0xoff` (`function` at offset 0), or None outside every known function."""
        hit = self.function_at(addr)
        if hit is None:
            return None
        name, off = hit
        return f"{name}+{off:#x}" if off else name

    def describe(self, addr: int) -> str | None:
        """`name+0xoff` of the function or sized data object holding `addr` (for reports), else None."""
        code = self.symbolize(addr)
        if code is not None:
            return code
        if self._data_addr is None:
            sized = sorted((s.address, s.address + s.size, s.name) for s in self._symbols.values()
                           if s.size and not s.absolute)
            self._data_addr = [a for a, _, _ in sized]
            self._data = sized
        i = bisect.bisect_right(self._data_addr, addr) - 1
        if i >= 0:
            start, end, name = self._data[i]
            if addr < end:
                return f"{name}+{addr - start:#x}" if addr != start else name
        return None

    def file_bytes(self, addr: int, size: int) -> bytes | None:
        """Bytes at virtual `addr` from the file's initialised sections; None if the file has none."""
        for sec_addr, sec_size, sec_off, sec_type, sec_flags in self._section_rows:
            if (sec_flags & SHF_ALLOC and sec_type != "SHT_NOBITS" and sec_addr <= addr
                    and addr + size <= sec_addr + sec_size):
                try:
                    with open(self.path, "rb") as f:
                        f.seek(sec_off + addr - sec_addr)
                        data = f.read(size)
                except OSError:
                    return None
                return data if len(data) == size else None
        return None

    def get(self, name: str) -> Symbol | None:
        return self._symbols.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._symbols

    def __len__(self) -> int:
        return len(self._symbols)

"""Kernel symbol tables from the kernel ELF (pyelftools), local symbols included.

`dumppcb` is a file-local (`static`) symbol in kern_shutdown.c, so globals and locals are
both indexed; where a name is defined more than once the global definition wins, then the
first local one (the same preference a debugger's name lookup has).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from elftools.elf.elffile import ELFFile

from .errors import FormatError, ReaderError, SymbolError


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
                self._symbols = self._load(elf)
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

    def get(self, name: str) -> Symbol | None:
        return self._symbols.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._symbols

    def __len__(self) -> int:
        return len(self._symbols)

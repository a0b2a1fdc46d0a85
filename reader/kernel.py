"""Kernel symbol tables from the kernel ELF (pyelftools), local symbols included.

`dumppcb` is a file-local (`static`) symbol in kern_shutdown.c, so globals and locals are
both indexed; where a name is defined more than once the global definition wins, then the
first local one (the same preference a debugger's name lookup has).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .errors import FormatError, ReaderError, SymbolError


@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    size: int
    local: bool
    absolute: bool


class Kernel:
    """The symbols of one kernel image (or its `.debug` file)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                elf = ELFFile(f)
                self.elf_machine = elf.header["e_machine"]
                self.elfclass = elf.elfclass
                self._symbols = self._load(elf)
        except OSError as exc:
            raise ReaderError(f"cannot read kernel: {exc.strerror}", path=self.path) from None
        except (ELFError, ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
            raise FormatError(f"not a readable kernel ELF: {exc}", path=self.path, offset=0,
                              field="ELF header", expected="an ELF kernel with a .symtab") from None

    def _load(self, elf: ELFFile) -> dict[str, Symbol]:
        table = elf.get_section_by_name(".symtab")
        if table is None:
            raise FormatError("kernel has no .symtab (stripped?)", path=self.path, offset=0,
                              field=".symtab", expected="a symbol table (use kernel.debug or an "
                              "unstripped kernel)")
        out: dict[str, Symbol] = {}
        for sym in table.iter_symbols():
            name = sym.name
            if not name or sym["st_shndx"] == "SHN_UNDEF":
                continue
            typ = sym["st_info"]["type"]
            if typ in ("STT_FILE", "STT_SECTION"):
                continue
            s = Symbol(name, sym["st_value"], sym["st_size"], sym["st_info"]["bind"] == "STB_LOCAL",
                       sym["st_shndx"] == "SHN_ABS")
            old = out.get(name)
            if old is None or (old.local and not s.local):
                out[name] = s
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

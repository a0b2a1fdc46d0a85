"""Kernel symbol table (from the kernel ELF) for naming the memory a differing byte belongs to.

Why: a differing page is only useful to a kernel developer when it says *what* differs ("`dumper`",
".bss", "text"); and whether a difference is acceptable depends on that: ddb and the dump code write
kernel data, they never write kernel text or read-only data.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection


class KernelSymbolsError(Exception):
    """The kernel file cannot be read as an ELF with a symbol table."""


@dataclass(frozen=True)
class Section:
    name: str
    start: int
    size: int
    kind: str  # "text" | "rodata" | "data"

    def __contains__(self, va: int) -> bool:
        return self.start <= va < self.start + self.size


@dataclass(frozen=True)
class Symbol:
    name: str
    start: int
    size: int
    kind: str = ""  # kind of the section the symbol is defined in ("text" | "rodata" | "data")


class KernelSymbols:
    """Sorted data/function symbols and allocated sections of a kernel ELF."""

    def __init__(self, symbols: list[Symbol], sections: list[Section], path: Path | None = None) -> None:
        self.path = path
        self._syms = sorted(symbols, key=lambda s: (s.start, -s.size))
        self._starts = [s.start for s in self._syms]
        self.sections = sorted(sections, key=lambda s: s.start)
        self._by_name = {s.name: s for s in self._syms}

    @classmethod
    def from_elf(cls, path: str | os.PathLike[str]) -> KernelSymbols:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                sections: list[Section] = []
                symbols: list[Symbol] = []
                kinds: dict[int, str] = {}
                for idx, sec in enumerate(elf.iter_sections()):
                    flags = sec["sh_flags"]
                    if flags & SH_FLAGS.SHF_ALLOC:
                        if flags & SH_FLAGS.SHF_EXECINSTR:
                            kind = "text"
                        elif flags & SH_FLAGS.SHF_WRITE:
                            kind = "data"
                        else:
                            kind = "rodata"
                        kinds[idx] = kind
                        if sec["sh_addr"] and sec["sh_size"]:
                            sections.append(Section(sec.name, sec["sh_addr"], sec["sh_size"], kind))
                for sec in elf.iter_sections():
                    if isinstance(sec, SymbolTableSection):
                        for sym in sec.iter_symbols():
                            if sym["st_info"]["type"] in ("STT_OBJECT", "STT_FUNC", "STT_NOTYPE") and (
                                sym["st_value"] and sym.name
                            ):
                                shndx = sym["st_shndx"]
                                kind = kinds.get(shndx, "") if isinstance(shndx, int) else ""
                                symbols.append(Symbol(sym.name, sym["st_value"], sym["st_size"], kind))
        except (OSError, ELFError) as exc:
            raise KernelSymbolsError(f"{path}: cannot read kernel symbols: {exc}") from exc
        if not symbols:
            raise KernelSymbolsError(f"{path}: no symbols (stripped kernel?); attribution needs a symtab")
        return cls(symbols, sections, path)

    def address(self, name: str) -> int | None:
        s = self._by_name.get(name)
        return s.start if s else None

    def symbol_at(self, va: int) -> Symbol | None:
        """The sized symbol containing ``va`` (the nearest one below if no size covers it but it is close)."""
        i = bisect.bisect_right(self._starts, va) - 1
        best: Symbol | None = None
        # symbols may overlap (aliases); look back a little for one whose extent covers va
        for j in range(i, max(i - 8, -1), -1):
            s = self._syms[j]
            if s.start <= va < s.start + max(s.size, 1):
                return s
            if best is None and s.size == 0:
                best = s
        return best

    def next_symbol_start(self, va: int) -> int | None:
        """Start of the first symbol above ``va`` (where an unnamed gap ends)."""
        i = bisect.bisect_right(self._starts, va)
        return self._starts[i] if i < len(self._starts) else None

    def section_at(self, va: int) -> Section | None:
        """The allocated section holding ``va``; else the section of a sized symbol covering it."""
        for sec in self.sections:
            if va in sec:
                return sec
        s = self.symbol_at(va)
        if s is not None and s.kind and s.start <= va < s.start + max(s.size, 1):
            return Section(f"({s.kind} of {s.name})", s.start, max(s.size, 1), s.kind)
        return None

    def describe(self, va: int) -> str:
        s = self.symbol_at(va)
        if s is None:
            sec = self.section_at(va)
            return f"{sec.name}+{va - sec.start:#x}" if sec else f"{va:#x}"
        off = va - s.start
        return f"{s.name}+{off:#x}" if off else s.name

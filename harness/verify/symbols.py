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
from typing import Any

#: ELF section flags (System V ABI)
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4


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
        """Read the kernel ELF's .symtab (through `reader.Kernel`'s numpy parse: a fraction of a second
        for a 70k-symbol kernel, where pyelftools' symbol iteration takes seconds)."""
        from reader.errors import ReaderError
        from reader.kernel import Kernel

        try:
            kernel = Kernel(path)
        except ReaderError as exc:
            raise KernelSymbolsError(f"{path}: cannot read kernel symbols: {exc}") from exc
        return cls.from_kernel(kernel)

    @classmethod
    def from_kernel(cls, kernel: Any) -> KernelSymbols:
        """Build from an already loaded `reader.Kernel` (the one the vmcore was opened with), so the
        symbol table is parsed once per run."""
        path = Path(kernel.path)
        table = getattr(kernel, "table", None)
        if table is None or not len(table.records):
            raise KernelSymbolsError(f"{path}: no symbols (stripped kernel?); attribution needs a symtab")
        kinds: dict[int, str] = {}
        sections: list[Section] = []
        for sec in kernel.sections:
            if sec.flags & SHF_ALLOC:
                kind = "text" if sec.flags & SHF_EXECINSTR else "data" if sec.flags & SHF_WRITE else "rodata"
                kinds[sec.index] = kind
                if sec.address and sec.size:
                    sections.append(Section(sec.name, sec.address, sec.size, kind))
        rec = table.records
        typ = rec["info"] & 0xF
        keep = (typ <= 2) & (rec["value"] != 0)  # NOTYPE, OBJECT, FUNC with an address
        rec = rec[keep]
        names: dict[int, str] = {}
        symbols: list[Symbol] = []
        columns = (rec["name"].tolist(), rec["shndx"].tolist(), rec["value"].tolist(), rec["size"].tolist())
        for name_off, shndx, value, size in zip(*columns, strict=True):
            name = names.get(name_off)
            if name is None:
                name = names[name_off] = table.name(name_off)
            if name:
                symbols.append(Symbol(name, value, size, kinds.get(shndx, "")))
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

    def name_of(self, va: int) -> str | None:
        """`symbol+0xoff` for an address inside a symbol's extent or in an allocated section of the
        kernel image (for reports); None elsewhere (heap, stacks, the direct map: no symbol names it)."""
        s = self.symbol_at(va)
        if s is not None and s.start <= va < s.start + max(s.size, 1):
            off = va - s.start
            return f"{s.name}+{off:#x}" if off else s.name
        if any(va in sec for sec in self.sections):
            return self.describe(va)
        return None

    def describe(self, va: int) -> str:
        s = self.symbol_at(va)
        if s is None:
            sec = self.section_at(va)
            return f"{sec.name}+{va - sec.start:#x}" if sec else f"{va:#x}"
        off = va - s.start
        return f"{s.name}+{off:#x}" if off else s.name

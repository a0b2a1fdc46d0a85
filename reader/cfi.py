"""DWARF call frame information (`.debug_frame` / `.eh_frame`) of a kernel or kernel.debug.

Where a function keeps no frame pointer (optimised code, assembly leaf functions, a kernel built with
-fomit-frame-pointer) the frame-pointer chain loses the caller; the CFI says, for every pc, how to
compute the canonical frame address (CFA) and where the return address and callee-saved registers
were saved. `CallFrameTable.step` applies one row: it is what `reader.unwind` uses when a kernel.debug
(or a kernel with unwind tables) is given, falling back to frame pointers where no FDE covers a pc.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elftools.dwarf.callframe import FDE, CallFrameInfo, RegisterRule
from elftools.elf.elffile import ELFFile

from .errors import FormatError, ReaderError

#: DWARF register numbers -> our register names (System V psABI / AAPCS64 DWARF numbering)
DWARF_REGS = {
    "amd64": {0: "rax", 1: "rdx", 2: "rcx", 3: "rbx", 4: "rsi", 5: "rdi", 6: "rbp", 7: "rsp",
              **{i: f"r{i}" for i in range(8, 16)}, 16: "rip"},
    "i386": {0: "eax", 1: "ecx", 2: "edx", 3: "ebx", 4: "esp", 5: "ebp", 6: "esi", 7: "edi", 8: "eip"},
    "arm64": {**{i: f"x{i}" for i in range(29)}, 29: "fp", 30: "lr", 31: "sp"},
}
SP_PC = {"amd64": ("rsp", "rip"), "i386": ("esp", "eip"), "arm64": ("sp", "pc")}


class CallFrameTable:
    """The FDEs of one ELF file, sorted by start address; rows decoded on first use."""

    def __init__(self, path: str | os.PathLike, arch: str):
        self.path = Path(path)
        self.arch = arch
        self._starts: list[int] = []
        self._entries: list[tuple[int, int, FDE]] = []
        self._decoded: dict[int, Any] = {}
        self._lazy: dict[int, tuple[Any, int]] = {}    # start -> (CallFrameInfo, entry offset)
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 - FDEs are decoded lazily from it
            elf = ELFFile(self._file)
            dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False) if elf.has_dwarf_info() else None
            entries = []
            if dwarf is not None and dwarf.has_CFI():
                entries += self._index_debug_frame(dwarf, elf.elfclass // 8)
            if dwarf is not None and dwarf.has_EH_CFI():
                entries += dwarf.EH_CFI_entries()
        except OSError as exc:
            raise ReaderError(f"cannot read: {exc.strerror}", path=self.path) from None
        except Exception as exc:  # noqa: BLE001 - pyelftools raises many types on bad input
            raise FormatError(f"unreadable call frame information: {exc}", path=self.path,
                              field=".debug_frame/.eh_frame", expected="DWARF CFI") from None
        fdes = sorted(((e.header["initial_location"], e.header["address_range"], e) if isinstance(e, FDE)
                       else e for e in entries
                       if isinstance(e, tuple) or (isinstance(e, FDE) and e.header["address_range"])),
                      key=lambda t: (t[0], t[1]))
        for start, length, fde in fdes:
            self._entries.append((start, start + length, fde))
            self._starts.append(start)

    def _index_debug_frame(self, dwarf: Any, address_size: int) -> list[tuple[int, int, Any]]:
        """(start, length, None) per FDE of .debug_frame from the entry headers alone.

        pyelftools' `CFI_entries()` decodes every FDE's instructions up front (seconds for a kernel);
        only the headers are needed to find the FDE of a pc, so the rest is decoded on first use.
        """
        sec = dwarf.debug_frame_sec
        sec.stream.seek(0)
        data = sec.stream.read(sec.size)
        cfi = CallFrameInfo(stream=sec.stream, size=sec.size, address=sec.address, base_structs=dwarf.structs)
        out = []
        off = 0
        word = "<Q" if address_size == 8 else "<I"
        while off + 4 <= len(data):
            (length,) = struct.unpack_from("<I", data, off)
            hdr, idsize, cie_id = 4, 4, 0xFFFFFFFF
            if length == 0xFFFFFFFF:
                if off + 12 > len(data):
                    break
                (length,) = struct.unpack_from("<Q", data, off + 4)
                hdr, idsize, cie_id = 12, 8, 0xFFFFFFFFFFFFFFFF
            if length == 0:
                off += hdr
                continue
            body = off + hdr
            if body + idsize + 2 * address_size > len(data):
                break
            (ident,) = struct.unpack_from("<I" if idsize == 4 else "<Q", data, body)
            if ident != cie_id:
                (start,) = struct.unpack_from(word, data, body + idsize)
                (size,) = struct.unpack_from(word, data, body + idsize + address_size)
                if size:
                    self._lazy[start] = (cfi, off)
                    out.append((start, size, None))
            off = body + length
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        self._file.close()

    def covers(self, pc: int) -> bool:
        return self._row(pc) is not None

    def _row(self, pc: int) -> dict | None:
        i = bisect.bisect_right(self._starts, pc) - 1
        if i < 0:
            return None
        start, end, fde = self._entries[i]
        if pc >= end:
            return None
        table = self._decoded.get(start)
        if table is None:
            try:
                if fde is None:
                    cfi, offset = self._lazy[start]
                    fde = cfi._parse_entry_at(offset)
                table = fde.get_decoded().table
            except Exception:  # noqa: BLE001 - a broken FDE covers nothing
                table = []
            self._decoded[start] = table
        row = None
        for r in table:
            if r["pc"] <= pc:
                row = r
            else:
                break
        return row

    def step(self, regs: dict[str, int], pc: int, read_word: Callable[[int], int],
             caller_frame: bool) -> dict[str, int] | None:
        """The caller's registers (its pc and sp included), or None if no FDE covers `pc`.

        `caller_frame`: `pc` is a return address (look up pc - 1, the call instruction's row).
        Raises ReaderError when a saved register cannot be read.
        """
        row = self._row(pc - 1 if caller_frame else pc)
        if row is None:
            return None
        names = DWARF_REGS[self.arch]
        cfa_rule = row["cfa"]
        if cfa_rule.expr is not None or names.get(cfa_rule.reg) not in regs:
            return None
        cfa = regs[names[cfa_rule.reg]] + cfa_rule.offset
        out = dict(regs)
        sp_name, pc_name = SP_PC[self.arch]
        ra_name = "lr" if self.arch == "arm64" else pc_name
        out.pop(ra_name, None)
        for regnum, rule in row.items():
            if not isinstance(regnum, int) or regnum not in names:
                continue
            name = names[regnum]
            if rule.type == RegisterRule.OFFSET:
                out[name] = read_word(cfa + rule.arg)
            elif rule.type == RegisterRule.VAL_OFFSET:
                out[name] = cfa + rule.arg
            elif rule.type == RegisterRule.REGISTER and names.get(rule.arg) in regs:
                out[name] = regs[names[rule.arg]]
            elif rule.type == RegisterRule.UNDEFINED:
                out.pop(name, None)
        if ra_name not in out:
            return None
        out[sp_name] = cfa
        out[pc_name] = out[ra_name]
        return out

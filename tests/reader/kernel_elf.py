"""A tiny synthetic kernel ELF64 with code and initialised data, for symbolization and kernel checks.

`write_elf(path, sections, symbols)`: sections are (name, address, bytes, executable); symbols are
(name, address, size, kind) with kind "func", "label" (NOTYPE, as assembly entries) or "object".
"""

from __future__ import annotations

import struct
from pathlib import Path

STT = {"func": 2, "label": 0, "object": 1}


def write_elf(path: Path, sections: list[tuple[str, int, bytes, bool]],
              symbols: list[tuple[str, int, int, str]], *, machine: int = 62) -> Path:
    shstr = bytearray(b"\0")
    strtab = bytearray(b"\0")

    def sname(n: str) -> int:
        off = len(shstr)
        shstr.extend(n.encode() + b"\0")
        return off

    body = bytearray()
    off0 = 64
    sec_entries = [(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    for name, addr, data, exe in sections:
        off = off0 + len(body)
        body += data
        while len(body) % 8:
            body += b"\0"
        flags = 0x2 | (0x4 if exe else 0x1)
        sec_entries.append((sname(name), 1, flags, addr, off, len(data), 0, 0, 16, 0))

    def section_of(addr: int) -> int:
        for i, (_n, a, d, _e) in enumerate(sections, start=1):
            if a <= addr < a + max(len(d), 1):
                return i
        return 0xFFF1

    syms = bytearray(bytes(24))
    for name, addr, size, kind in symbols:
        noff = len(strtab)
        strtab.extend(name.encode() + b"\0")
        syms += struct.pack("<IBBHQQ", noff, (1 << 4) | STT[kind], 0, section_of(addr), addr, size)
    sym_off = off0 + len(body)
    body += syms
    str_off = off0 + len(body)
    body += strtab
    symtab_index = len(sec_entries)
    sec_entries.append((sname(".symtab"), 2, 0, 0, sym_off, len(syms), symtab_index + 1, 1, 8, 24))
    sec_entries.append((sname(".strtab"), 3, 0, 0, str_off, len(strtab), 0, 0, 1, 0))
    shstr_name = sname(".shstrtab")
    shstr_off = off0 + len(body)
    body += shstr
    sec_entries.append((shstr_name, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0))
    while len(body) % 8:
        body += b"\0"
    sh_off = off0 + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1, 9]) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, 0, 0, sh_off, 0, 64, 0, 0, 64,
                                 len(sec_entries), len(sec_entries) - 1)
    with open(path, "wb") as f:
        f.write(header)
        f.write(body)
        for e in sec_entries:
            f.write(struct.pack("<IIQQQQIIQQ", *e))
    return path

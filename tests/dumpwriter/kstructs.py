"""Synthetic kernels with a process/thread list, a msgbuf and PCBs (for threads()/msgbuf() tests).

Memory layout (all 4 KiB kernel pages mapped from `kernbase`): page 0 the offsets/constants,
then one page per proc, one per thread, one per PCB, the `stoppcbs` array and the msgbuf. The
`*_off_*` symbols, `allproc`, `dumptid`, `dumppcb`, `stoppcbs`, `pcb_size`, `hz`, `msgbufp` and
(optionally) `osreldate` are written to a symbols-only kernel ELF next to the dump.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .elf import write_kernel_elf
from .minidump import Mapping, write_amd64_minidump, write_arm64_minidump

OFFSETS = {"proc_off_p_pid": 0x20, "proc_off_p_comm": 0x30, "proc_off_p_list": 0x0,
           "proc_off_p_threads": 0x10, "thread_off_td_tid": 0x0, "thread_off_td_name": 0x8,
           "thread_off_td_oncpu": 0x20, "thread_off_td_pcb": 0x28, "thread_off_td_plist": 0x30}
PCB_SIZE = 512


@dataclass
class ThreadSpec:
    tid: int
    name: str
    registers: list[int]          # PCB words in layout order
    oncpu: int = -1
    crashed: bool = False


@dataclass
class ProcSpec:
    pid: int
    comm: str
    threads: list[ThreadSpec] = field(default_factory=list)


def write_threads_dump(directory: str | os.PathLike, procs: list[ProcSpec], *, arch: str = "amd64",
                       osreldate: int | None = None, hz: int = 100,
                       msgbuf: tuple[bytes, int] | None = None) -> tuple[Path, Path]:
    """Write `vmcore` + `kernel` into `directory`; returns their paths. `msgbuf` = (buffer, wseq)."""
    d = Path(directory)
    kb = 0xFFFF000000000000 if arch == "arm64" else 0xFFFFFE0000000000
    pages: dict[int, bytes] = {}
    next_page = [1]

    def alloc() -> int:
        i = next_page[0]
        next_page[0] += 1
        return i

    proc_pages = [alloc() for _ in procs]
    thread_pages = [[alloc() for _ in p.threads] for p in procs]
    pcb_pages = [[alloc() for _ in p.threads] for p in procs]
    stop_page = alloc()
    dump_page = alloc()
    msg_page = alloc()
    va = lambda page: kb + page * 4096  # noqa: E731
    stop = bytearray(4096)
    dumppcb = bytearray(4096)
    dumptid = 0
    for i, p in enumerate(procs):
        proc = bytearray(4096)
        nxt = va(proc_pages[i + 1]) if i + 1 < len(procs) else 0
        proc[0:8] = struct.pack("<Q", nxt)
        proc[0x10:0x18] = struct.pack("<Q", va(thread_pages[i][0]) if p.threads else 0)
        proc[0x20:0x24] = struct.pack("<i", p.pid)
        proc[0x30:0x30 + 20] = p.comm.encode()[:19].ljust(20, b"\0")
        pages[proc_pages[i] * 4096] = bytes(proc)
        for j, t in enumerate(p.threads):
            td = bytearray(4096)
            td[0:4] = struct.pack("<i", t.tid)
            td[8:28] = t.name.encode()[:19].ljust(20, b"\0")
            td[0x20:0x24] = struct.pack("<i", t.oncpu)
            td[0x28:0x30] = struct.pack("<Q", va(pcb_pages[i][j]))
            tn = va(thread_pages[i][j + 1]) if j + 1 < len(p.threads) else 0
            td[0x30:0x38] = struct.pack("<Q", tn)
            pages[thread_pages[i][j] * 4096] = bytes(td)
            words = b"".join(struct.pack("<Q", w) for w in t.registers)
            if t.crashed:
                dumptid = t.tid
                dumppcb[: len(words)] = words
                pages[pcb_pages[i][j] * 4096] = bytes(4096)
            elif t.oncpu >= 0:
                stop[t.oncpu * PCB_SIZE : t.oncpu * PCB_SIZE + len(words)] = words
                pages[pcb_pages[i][j] * 4096] = bytes(4096)
            else:
                pages[pcb_pages[i][j] * 4096] = words.ljust(4096, b"\0")
    pages[stop_page * 4096] = bytes(stop)
    pages[dump_page * 4096] = bytes(dumppcb)
    consts = bytearray(4096)
    consts[: 4 * len(OFFSETS)] = b"".join(struct.pack("<i", v) for v in OFFSETS.values())
    base = 4 * len(OFFSETS)
    consts[base : base + 24] = struct.pack("<iiiiQ", dumptid, PCB_SIZE, osreldate or 0, hz,
                                           va(proc_pages[0]) if procs else 0)
    msg_struct_at = base + 32
    if msgbuf is not None:
        buf, wseq = msgbuf
        consts[base + 24 : base + 32] = struct.pack("<Q", kb + msg_struct_at)
        consts[msg_struct_at : msg_struct_at + 24] = struct.pack("<QIIII", va(msg_page), 0x063062, len(buf),
                                                                 wseq, 0)
        pages[msg_page * 4096] = buf.ljust(4096, b"\0")
    pages[0] = bytes(consts)
    npages = next_page[0]
    mappings = [Mapping(va(i), i * 4096) for i in range(npages)]
    if arch == "arm64":
        write_arm64_minidump(d / "vmcore", pages, mappings, dmapphys=0, dmapbase=0, dmapend=0)
        machine = 183
    else:
        write_amd64_minidump(d / "vmcore", pages, mappings, pt_pages_at=npages * 4096)
        machine = 62
    syms = {n: (kb + 4 * i, 4, False) for i, n in enumerate(OFFSETS)}
    syms.update({"kernbase": (kb, 0, False), "dumptid": (kb + base, 4, False),
                 "pcb_size": (kb + base + 4, 4, False), "hz": (kb + base + 12, 4, False),
                 "allproc": (kb + base + 16, 8, False), "msgbufp": (kb + base + 24, 8, False),
                 "dumppcb": (va(dump_page), PCB_SIZE, True), "stoppcbs": (va(stop_page), 4096, False)})
    if osreldate is not None:
        syms["osreldate"] = (kb + base + 8, 4, False)
    kernel = write_kernel_elf(d / "kernel", syms, machine=machine)
    return d / "vmcore", kernel

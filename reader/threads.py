"""Kernel threads and their saved registers, found the way LLDB's FreeBSD kernel plugin does.

The kernel exports the struct offsets a debugger needs as `const int` symbols
(`proc_off_p_pid`, `thread_off_td_tid`, ... in kern_proc.c), so no DWARF is required:
walk `allproc` -> `p_threads` -> `td_plist`; a thread's registers come from `dumppcb` if it
is the dumping thread (`dumptid`), from `stoppcbs[td_oncpu]` if it was running on a CPU
that was stopped by IPI, else from its own `td_pcb`. The dumping thread is listed first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .cfi import CallFrameTable
from .errors import FormatError, ReaderError
from .memory import KernelMemory
from .unwind import Backtrace, backtrace

OFFSET_SYMBOLS = ("proc_off_p_pid", "proc_off_p_comm", "proc_off_p_list", "proc_off_p_threads",
                  "thread_off_td_tid", "thread_off_td_name", "thread_off_td_oncpu",
                  "thread_off_td_pcb", "thread_off_td_plist")
NOCPU = -1
MAXCOMLEN = 19
#: walking stops (FormatError) after this many entries: a corrupt list must not hang us
MAX_ENTRIES = 1 << 20


@dataclass
class Thread:
    tid: int
    pid: int
    comm: str
    td_name: str
    oncpu: int
    crashed: bool
    address: int             # struct thread *
    proc: int                # struct proc *
    pcb: int                 # where the registers were read from
    registers: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # why registers are missing, if they are
    vm: Any = field(default=None, repr=False, compare=False)  # the dump it was read from

    @property
    def pc(self) -> int | None:
        r = self.registers
        return r.get("rip", r.get("eip", r.get("pc")))

    def backtrace(self, *, max_frames: int | None = None, cfi: CallFrameTable | None = None) -> Backtrace:
        """This thread's stack, frame 0 first (see `reader.unwind`); `cfi` from a kernel.debug."""
        if self.vm is None:
            raise ReaderError("this Thread is not attached to an open dump", field="vm",
                              expected="a Thread from Vmcore.threads()")
        if not self.registers:
            return Backtrace([], f"registers unavailable: {self.error}")
        kw: dict[str, Any] = {"cfi": cfi}
        if max_frames is not None:
            kw["max_frames"] = max_frames
        return backtrace(self.vm, self.registers, **kw)

    @property
    def name(self) -> str:
        """LLDB's thread name: "(pid P) comm[/td_name][ (crashed)| (on CPU n)]"."""
        s = f"(pid {self.pid}) {self.comm}"
        if self.td_name != self.comm:
            s += f"/{self.td_name}"
        if self.crashed:
            s += " (crashed)"
        elif self.oncpu != NOCPU:
            s += f" (on CPU {self.oncpu})"
        return s

    def to_json(self) -> dict:
        """JSON-ready: addresses and register values as "0x..." strings (64-bit safe in jq/JS)."""
        kern = self.vm.kernel if self.vm is not None else None
        pc = self.pc
        return {"tid": self.tid, "pid": self.pid, "comm": self.comm, "td_name": self.td_name,
                "name": self.name, "oncpu": self.oncpu, "crashed": self.crashed,
                "address": f"{self.address:#x}", "proc": f"{self.proc:#x}", "pcb": f"{self.pcb:#x}",
                "registers": {k: f"{v:#x}" for k, v in self.registers.items()},
                "function": kern.symbolize(pc) if kern is not None and pc is not None else None,
                "error": self.error}


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def list_threads(vm: KernelMemory) -> list[Thread]:
    kern = vm._need_kernel("the thread list")
    off = {name: vm.read_int(kern.lookup(name).address, 4, signed=True) for name in OFFSET_SYMBOLS}
    dumptid = vm.read_int(vm.symbol("dumptid"), 4, signed=True)
    dumppcb = vm.symbol("dumppcb")
    stoppcbs = kern.get("stoppcbs")
    pcb_size = vm.read_int(vm.symbol("pcb_size"), 4, signed=True) if "pcb_size" in kern else None
    osreldate = vm.read_int(vm.symbol("osreldate"), 4, signed=True) if "osreldate" in kern else None
    layout = vm.arch.pcb_layout(osreldate)

    threads: list[Thread] = []
    seen: set[int] = set()
    p = vm.read_pointer(vm.symbol("allproc"))
    while p:
        if p in seen or len(seen) > MAX_ENTRIES:
            raise FormatError(f"allproc list loops at proc {p:#x}", path=vm.path, field="p_list",
                              expected="a NULL-terminated list")
        seen.add(p)
        pid = vm.read_int(p + off["proc_off_p_pid"], 4, signed=True)
        comm = _cstr(vm.read(p + off["proc_off_p_comm"], MAXCOMLEN + 1))
        td = vm.read_pointer(p + off["proc_off_p_threads"])
        while td:
            if td in seen or len(seen) > MAX_ENTRIES:
                raise FormatError(f"p_threads list of pid {pid} loops at thread {td:#x}", path=vm.path,
                                  field="td_plist", expected="a NULL-terminated list")
            seen.add(td)
            tid = vm.read_int(td + off["thread_off_td_tid"], 4, signed=True)
            name = _cstr(vm.read(td + off["thread_off_td_name"], MAXCOMLEN + 1))
            oncpu = vm.read_int(td + off["thread_off_td_oncpu"], 4, signed=True)
            crashed = tid == dumptid
            if crashed:
                pcb = dumppcb
            elif oncpu != NOCPU and stoppcbs is not None and pcb_size:
                pcb = stoppcbs.address + oncpu * pcb_size
            else:
                pcb = vm.read_pointer(td + off["thread_off_td_pcb"])
            t = Thread(tid=tid, pid=pid, comm=comm, td_name=name, oncpu=oncpu, crashed=crashed,
                       address=td, proc=p, pcb=pcb, vm=vm)
            try:
                t.registers = read_pcb(vm, pcb, layout)
            except ReaderError as exc:
                t.error = str(exc)
            threads.append(t)
            td = vm.read_pointer(td + off["thread_off_td_plist"])
        p = vm.read_pointer(p + off["proc_off_p_list"])
    threads.sort(key=lambda t: not t.crashed)  # stable: the dumping thread first, as LLDB lists it
    return threads


def read_pcb(vm: KernelMemory, pcb: int, layout) -> dict[str, int]:
    span = max(o for _, o in layout.registers) + layout.word
    raw = vm.read(pcb, span)
    regs = {n: int.from_bytes(raw[o : o + layout.word], "little") for n, o in layout.registers}
    for alias, src in layout.aliases:
        regs[alias] = regs[src]
    return regs

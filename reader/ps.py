"""`ps` of a dump: one row per process from `allproc`, with its threads.

pid, comm and the threads come from the offset symbols every FreeBSD kernel exports
(`proc_off_*`, `thread_off_*`: no DWARF needed). ppid, uid, state and flags live in parts of
`struct proc` no exported offset describes: they are filled in from `kernel.debug` DWARF types
(through drgn) when a `drgn.Program` is given, and are None ("-") otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .memory import KernelMemory
from .threads import Thread, list_threads

#: p_state (sys/proc.h enum p_states)
PROC_STATES = {0: "NEW", 1: "NORMAL", 2: "ZOMBIE"}


@dataclass
class Process:
    pid: int
    comm: str
    address: int
    threads: list[Thread] = field(default_factory=list)
    ppid: int | None = None
    uid: int | None = None
    state: str | None = None
    flags: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "uid": self.uid, "state": self.state,
                "flags": None if self.flags is None else f"{self.flags:#x}", "comm": self.comm,
                "address": f"{self.address:#x}", "nthreads": len(self.threads),
                "threads": [{"tid": t.tid, "name": t.td_name, "oncpu": t.oncpu, "crashed": t.crashed,
                             "address": f"{t.address:#x}"} for t in self.threads]}


def list_processes(vm: KernelMemory, *, program: Any = None,
                   threads: list[Thread] | None = None) -> list[Process]:
    """Every process in `allproc`, in list order (newest first, as ddb's `ps`)."""
    procs: dict[int, Process] = {}
    for t in threads if threads is not None else list_threads(vm):
        p = procs.get(t.proc)
        if p is None:
            p = procs[t.proc] = Process(t.pid, t.comm, t.proc)
        p.threads.append(t)
    out = sorted(procs.values(), key=lambda p: -p.pid)
    if program is not None:
        for p in out:
            _add_dwarf_fields(program, p)
    return out


def _add_dwarf_fields(program: Any, p: Process) -> None:
    """ppid/uid/state/flags through drgn; a member the kernel's struct lacks stays None."""
    try:
        import drgn
    except ImportError:
        return
    try:
        obj = drgn.Object(program, "struct proc *", value=p.address)
    except (LookupError, drgn.FaultError, ValueError):
        return

    def member(fn):
        try:
            return fn()
        except (LookupError, AttributeError, drgn.FaultError, ValueError, TypeError):
            return None

    pptr = member(lambda: obj.p_pptr)
    if pptr is not None:
        p.ppid = member(lambda: int(pptr.p_pid)) if member(lambda: int(pptr)) else 0
    p.uid = member(lambda: int(obj.p_ucred.cr_uid))
    state = member(lambda: int(obj.p_state))
    p.state = None if state is None else PROC_STATES.get(state, str(state))
    p.flags = member(lambda: int(obj.p_flag))


def format_ps(procs: list[Process]) -> list[str]:
    """ddb-like rows: processes, then one indented row per thread when there are several."""
    lines = [f"{'PID':>6} {'PPID':>6} {'UID':>6} {'STATE':<7} {'FLAGS':>10} {'THR':>4}  COMMAND"]

    def dash(v) -> str:
        return "-" if v is None else str(v)

    for p in procs:
        flags = "-" if p.flags is None else f"{p.flags:#x}"
        lines.append(f"{p.pid:>6} {dash(p.ppid):>6} {dash(p.uid):>6} {dash(p.state):<7} {flags:>10} "
                     f"{len(p.threads):>4}  {p.comm}")
        if len(p.threads) > 1 or any(t.td_name != p.comm for t in p.threads):
            for t in p.threads:
                where = " (crashed)" if t.crashed else (f" (CPU {t.oncpu})" if t.oncpu >= 0 else "")
                lines.append(f"{'':>6} {'':>6} {'':>6} {'':<7} {'':>10} {'':>4}    tid {t.tid} "
                             f"[{t.td_name}]{where}")
    return lines

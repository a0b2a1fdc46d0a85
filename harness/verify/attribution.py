"""Say what a differing page is, and whether that kind of difference is expected.

The expected-volatile kinds (documented in docs/verification.md) are the memory that ddb and the dump
code themselves write while every CPU sits stopped in the debugger:

- ``kernel-data``: writable kernel image data (.data/.bss: `dumper`, `dumptid`, `dumppcb`, kdb/ddb state);
- ``msgbuf``: the kernel message buffer (the dump prints "Dumping ..." into it);
- ``thread-stack``: the stack pages around a stopped thread's saved stack pointer or ddb's trap frame;
- ``pcpu``: per-CPU data (``__pcpu``, the ``set_pcpu`` section);
- ``page-table-accessed-dirty``: page-table entries that differ only in the accessed/dirty bits the
  CPU sets while running ddb and the dump code;
- ``page-table-dump-map``: entries of the temporary mapping the minidump code uses (``crashdumpmap``);
- ``dump-device-io``: physical ranges the caller names as the dump device's own I/O state, read from
  the hypervisor (virtio-blk rings, indirect descriptor tables, and the <= 16-byte request header and
  status buffers the descriptors point to; never the data buffers, which are the dumped pages).

Everything else is unexpected: kernel text or read-only data (``kernel-text``, ``kernel-rodata``), any
other page-table change (``page-table``), and memory nobody can name (``unattributed``).
When a live image taken *before* the dump exists, a differing page that changed while the dump was
written (before != after) is explained whatever its kind: the dump code and the disk driver touch
memory nobody can name from outside (virtio rings, request structures).

The panic flow (kernels without ddb: panic -> the kernel's own dump -> held at "Press a key on the
console to reboot", `harness.freebsd.panicdump`) has no stop before the dump, hence no "before" image,
and the panicking CPU goes on running after the dump (``doadump`` returns, ``kern_reboot`` runs the
``shutdown_final`` handlers, ``shutdown_panic`` prints and polls the console). Interrupts are off and the
other CPUs were stopped before the dump, so what may differ is narrower and named per kind:

- ``panic-thread-stack``: the stack of the thread that panicked and dumped (``dumptid``; registers from
  ``dumppcb``): the functions called after ``doadump`` reuse the frames below its saved stack pointer.
  Any *other* thread's stack (``thread-stack``) is unexpected in this flow: those threads never ran again;
- ``msgbuf``: the lines printed after the dump ("Automatic reboot ...", "--> Press a key ...");
- ``shutdown-state``: the dump/shutdown state variables (`SHUTDOWN_STATE_SYMBOLS`: ``dumping`` drops
  back to 0 after the dump, ``dumptid``, ``dumppcb``, ``panicstr``, ...);
- ``console-state``: what polling the console for a key writes (`CONSOLE_STATE_SYMBOLS`: the low-level
  uart console's state, the console mutex and grab counts);
- ``kernel-data``, ``pcpu``, ``page-table-accessed-dirty``, ``page-table-dump-map`` as in the ddb flow
  (other .data/.bss the shutdown handlers write; the panicking CPU's per-CPU data; the bits the CPU sets;
  the minidump's ``crashdumpmap`` entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.verify.compare import differing_spans
from harness.verify.pagetables import TablePage, diff_table_entries
from harness.verify.symbols import KernelSymbols

EXPECTED_KINDS = frozenset(
    {
        "kernel-data",
        "msgbuf",
        "thread-stack",
        "pcpu",
        "page-table-accessed-dirty",
        "page-table-dump-map",
        "dump-device-io",
    }
)
UNEXPECTED_KINDS = frozenset({"kernel-text", "kernel-rodata", "page-table", "unattributed"})
#: kinds only the panic flow names (see the module docstring)
PANIC_FLOW_KINDS = frozenset({"panic-thread-stack", "shutdown-state", "console-state"})
KINDS = EXPECTED_KINDS | UNEXPECTED_KINDS | PANIC_FLOW_KINDS

#: what is expected to differ, by dump flow ("ddb": ddb's `dump`; "panic": the kernel's own dump on panic)
EXPECTED_BY_FLOW = {
    "ddb": EXPECTED_KINDS,
    "panic": (EXPECTED_KINDS - {"thread-stack"}) | PANIC_FLOW_KINDS,
}

#: dump and shutdown state the panic path writes after the dump (sys/kern/kern_shutdown.c, subr_kdb.c)
SHUTDOWN_STATE_SYMBOLS = (
    "dumping",
    "dumptid",
    "dumppcb",
    "panicstr",
    "panic_cpu",
    "kdb_active",
    "kdb_thread",
    "kdb_why",
    "stopped_cpus",
    "started_cpus",
    "suspended_cpus",
)
#: state the console code writes while shutdown_panic() polls for a key (sys/kern/kern_cons.c,
#: sys/dev/uart/uart_cpu*.c / uart_tty.c)
CONSOLE_STATE_SYMBOLS = (
    "uart_console",
    "cnputs_mtx",
    "cn_devtab",
    "cn_mute",
    "cons_avail_mask",
    "consmsgbuf",
    "consmsgbuf_size",
    "console_pausing",
    "msgbuftrigger",
)


def expected_kinds(flow: str) -> frozenset[str]:
    """The expected-volatile kinds of a dump flow ("ddb" or "panic"); anything else is a caller error."""
    try:
        return EXPECTED_BY_FLOW[flow]
    except KeyError:
        raise ValueError(f"unknown dump flow {flow!r}: expected one of {sorted(EXPECTED_BY_FLOW)}") from None

#: how far around a saved stack pointer a page counts as that thread's stack (FreeBSD amd64
#: KSTACK_PAGES is 4 by default, more with some options; ddb runs below the saved pointer)
STACK_WINDOW = 8 * 4096


@dataclass
class VaRange:
    start: int
    end: int
    kind: str
    label: str

    def __contains__(self, va: int) -> bool:
        return self.start <= va < self.end


@dataclass
class Attribution:
    kind: str
    text: str
    explained: bool
    first_offset: int
    differing_bytes: int
    va: int | None
    reason: str = ""
    kinds: dict[str, list[str]] = field(default_factory=dict)  # kind -> labels of its differing spans
    #: why this difference is NOT explained if the page was the same before and after the dump (None:
    #: it is); see `Attributor.stable_problem`
    stable_problem: str | None = None

    def unexplained_if_stable(self) -> str | None:
        return self.stable_problem


#: the largest variable that can hold "a value set while dumping and restored afterwards" (a counter,
#: flag or position such as ``dumping``: ``dumping++`` ... ``dumping--`` in kern_shutdown.c doadump)
FLIP_BACK_MAX_SIZE = 8
#: kinds a page stable across the dump may still differ in (see `Attribution.unexplained_if_stable`)
STABLE_KINDS = frozenset(
    {
        "thread-stack",
        "panic-thread-stack",
        "page-table-accessed-dirty",
        "page-table-dump-map",
        "dump-device-io",
        "shutdown-state",
        "console-state",
    }
)


@dataclass
class Attributor:
    """Everything known about kernel memory that helps name a physical page."""

    symbols: KernelSymbols | None = None
    pa_to_vas: dict[int, list[int]] = field(default_factory=dict)
    tables: dict[int, TablePage] = field(default_factory=dict)
    ranges: list[VaRange] = field(default_factory=list)
    pa_ranges: list[VaRange] = field(default_factory=list)  # same, by physical address
    dmap: tuple[int, int] | None = None  # (dmapbase, dmapend)
    dump_map: tuple[int, int] | None = None  # crashdumpmap VA range
    expected: frozenset[str] = EXPECTED_KINDS  # `expected_kinds(flow)`

    def vas_of(self, pa: int) -> list[int]:
        vas = list(self.pa_to_vas.get(pa, []))
        if self.dmap and self.dmap[0] + pa < self.dmap[1]:
            vas.append(self.dmap[0] + pa)
        return vas

    def _span_kind(self, pa: int, vas: list[int], off: int) -> tuple[str, str]:
        for r in self.pa_ranges:
            if pa + off in r:
                return r.kind, r.label
        for va in vas:
            for r in self.ranges:
                if va + off in r:
                    return r.kind, r.label
        if self.symbols is not None:
            for va in vas:
                sec = self.symbols.section_at(va + off)
                if sec is not None:
                    kind = {"data": "kernel-data", "text": "kernel-text", "rodata": "kernel-rodata"}[sec.kind]
                    return kind, self.symbols.describe(va + off)
        return "unattributed", ""

    def attribute(self, pa: int, dumped: bytes, live: np.ndarray) -> Attribution:
        spans = differing_spans(dumped, live)
        first = spans[0][0] if spans else 0
        nbytes = sum(e - s for s, e in spans)
        vas = self.vas_of(pa)
        va = next(
            (v for v in vas if not (self.dmap and self.dmap[0] <= v < self.dmap[1])), vas[0] if vas else None
        )
        table = self.tables.get(pa)
        if table is not None:
            only_ad, other = diff_table_entries(np.frombuffer(dumped, dtype=np.uint8), live)
            where = f"{_level(table)} page for {table.base_va:#x}"
            if not other:
                return Attribution(
                    "page-table-accessed-dirty",
                    f"page-table-accessed-dirty: {where}",
                    True,
                    first,
                    nbytes,
                    va,
                )
            if self.dump_map and all(self.dump_map[0] <= table.entry_va(i) < self.dump_map[1] for i in other):
                return Attribution(
                    "page-table-dump-map",
                    f"page-table-dump-map: {where} (crashdumpmap)",
                    True,
                    first,
                    nbytes,
                    va,
                )
            bad = ", ".join(f"{table.entry_va(i):#x}" for i in other[:4])
            return Attribution(
                "page-table",
                f"page-table: {where}, entries for {bad}",
                False,
                first,
                nbytes,
                va,
                reason="mapping changed, not only accessed/dirty bits",
            )
        kinds: dict[str, list[str]] = {}
        stable_problem: str | None = None
        for s, e in spans:
            kind, label = self._span_kind(pa, vas, s)
            labels = kinds.setdefault(kind, [])
            if label and label not in labels:
                labels.append(label)
            if stable_problem is None and kind not in STABLE_KINDS and not (
                kind in ("kernel-data", "pcpu") and self._in_scalar(vas, s, e)
            ):
                stable_problem = f"{kind}: {label}" if label else kind
        unexpected = [k for k in kinds if k not in self.expected]
        explained = not unexpected
        ordered = unexpected + [k for k in kinds if k in self.expected]
        text = "; ".join(f"{k}: {', '.join(kinds[k][:4])}" if kinds[k] else k for k in ordered)
        reason = ""
        if "thread-stack" in unexpected:
            reason = (
                "the stack of a thread other than the one that panicked: no other thread ran after the dump"
            )
        return Attribution(
            ordered[0] if ordered else "unattributed",
            text,
            explained,
            first,
            nbytes,
            va,
            reason=reason,
            kinds=kinds,
            stable_problem=stable_problem,
        )

    def _in_scalar(self, vas: list[int], start: int, end: int) -> bool:
        """Whether bytes [start, end) of the page lie inside one variable of at most
        `FLIP_BACK_MAX_SIZE` bytes (by the kernel's symbol table): only such a value can have been set
        while dumping and restored after it; arrays, structures and unnamed bytes cannot."""
        if self.symbols is None:
            return False
        for va in vas:
            sym = self.symbols.symbol_at(va + start)
            if sym is not None and 0 < sym.size <= FLIP_BACK_MAX_SIZE and va + end <= sym.start + sym.size:
                return True
        return False


def _level(t: TablePage) -> str:
    return {4: "PML4", 3: "PDP", 2: "PD", 1: "PT"}[t.level]

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

Decisions are made byte by byte (`Attributor.attribute`): ``kernel-data`` covers only the variables of
`VOLATILE_DATA_SYMBOLS`/`VOLATILE_DATA_PREFIXES`, not all of .data/.bss. With a live image taken *before*
the dump, a dumped byte equal to its before-value is consistent (caught before it changed), and memory
nobody can name (heap: the disk driver's softc and virtqueue bookkeeping) may hold a third value only at
bytes that changed between before and after.

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
from harness.verify.dumpdevice.explain import PageExplanation
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
#: the dump device's own state (`harness.verify.dumpdevice`): every byte explained by a named field fact
#: ("dump-device-state"), or a page the hypervisor ties to the device whose bytes cannot be named without
#: DWARF ("dump-device-unnamed": its own heading and verdict wording, never a silent pass)
DUMP_DEVICE_KINDS = frozenset({"dump-device-state", "dump-device-unnamed"})
#: kinds only the panic flow names (see the module docstring)
PANIC_FLOW_KINDS = frozenset({"panic-thread-stack", "shutdown-state", "console-state"})
KINDS = EXPECTED_KINDS | UNEXPECTED_KINDS | PANIC_FLOW_KINDS | DUMP_DEVICE_KINDS

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


PAGE_BYTES = 4096
#: label of the message buffer's text range (`struct msgbuf` itself is labelled "struct msgbuf")
MSGBUF_TEXT = "msgbuf"

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
    #: byte runs no rule explains: (page offset, byte count, kind, label) - the dump is wrong there
    unexplained: list[tuple[int, int, str, str]] = field(default_factory=list)
    #: differing bytes whose dumped value is the page's value in the before image (caught in that state)
    consistent_bytes: int = 0
    #: page offsets of every byte listed in ``unexplained`` (bool[4096]; None when there are none)
    bad_mask: np.ndarray | None = None


#: kernel variables (by ELF symbol name) that the dump code and ddb write while the dump is written, so a
#: dumped byte there may hold a value live memory never shows afterwards. Evidence (freebsd-src):
#: sys/kern/kern_shutdown.c doadump/dump_write/dump_start (``dumping++``/``--``, ``dumptid``, ``dumppcb``
#: by savectx, ``dumper``'s ``dumpoff`` advanced per write), sys/amd64/amd64/minidump_machdep.c (statics
#: ``kdh``, ``dumplo``, ``fragsz``, ``dump_va``, ``counter``, ``progress``, ``dumpsize``, ``progress_track``,
#: ``fakepd``; ``crashdumpmap`` entries via pmap_kenter_temporary), sys/kern/kern_dump.c (full dumps:
#: ``fileofs``, ``buffer``, ``dump_map``, ``dumpsys_pb_*``). Deliberately NOT here: ``vm_page_dump`` (its
#: bits are set by dump_add_page *before* the pages are written, so the dump holds the after value) and
#: ``msgbufp`` (a pointer nobody writes; the buffer it points to is the ``msgbuf`` kind).
VOLATILE_DATA_SYMBOLS = frozenset(
    {
        "dumping",
        "dumper",
        "dumptid",
        "dumppcb",
        "dumplo",
        "dumpsize",
        "kdh",
        "fragsz",
        "dump_va",
        "counter",
        "progress",
        "progress_track",
        "fakepd",
        "fileofs",
        "buffer",
        "crashdumpmap",
    }
)
#: name prefixes of the same: dump/minidump state, and ddb/kdb's own state (sys/ddb/*, sys/kern/subr_kdb.c:
#: the command line, history, pager counters, ``kdb_active``/``kdb_why``/``kdb_thread``/``kdb_frame``)
VOLATILE_DATA_PREFIXES = ("dump_", "dumpsys_", "minidump", "kerneldump", "kdb_", "db_")


def is_volatile_data_symbol(name: str) -> bool:
    """Whether a .data/.bss variable is one the dump code or ddb writes while the dump is written."""
    return name in VOLATILE_DATA_SYMBOLS or name.startswith(VOLATILE_DATA_PREFIXES)


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

    def _classify(self, pa: int, vas: list[int], off: int) -> tuple[str, str, int, bool]:
        """What byte ``off`` of the page is: (kind, label, page offset where that answer ends, whether a
        difference there is expected). A .data/.bss byte is expected only inside a variable the dump code
        or ddb writes (`is_volatile_data_symbol`); the answer's extent lets callers walk a span in pieces."""
        x = pa + off
        for r in self.pa_ranges:
            if r.start <= x < r.end:
                return r.kind, r.label, r.end - pa, r.kind in self.expected
        for va in vas:
            for r in self.ranges:
                if va + off in r:
                    return r.kind, r.label, r.end - va, r.kind in self.expected
        if self.symbols is not None:
            for va in vas:
                sec = self.symbols.section_at(va + off)
                if sec is None:
                    continue
                kind = {"data": "kernel-data", "text": "kernel-text", "rodata": "kernel-rodata"}[sec.kind]
                label = self.symbols.describe(va + off)
                sym = self.symbols.symbol_at(va + off)
                if sym is not None and sym.start <= va + off < sym.start + max(sym.size, 1):
                    ok = kind == "kernel-data" and kind in self.expected and is_volatile_data_symbol(sym.name)
                    return kind, label, sym.start + max(sym.size, 1) - va, ok
                nxt = self.symbols.next_symbol_start(va + off)
                end = min(sec.start + sec.size, nxt if nxt is not None else 1 << 64)
                return kind, label, end - va, False
        # nothing names this byte: the answer holds up to the next range or section that might
        ends = [r.start - pa for r in self.pa_ranges if r.start > x]
        ends += [r.start - va for va in vas for r in self.ranges if r.start > va + off]
        if self.symbols is not None:
            ends += [sec.start - va for va in vas for sec in self.symbols.sections if sec.start > va + off]
        return "unattributed", "", min(ends, default=PAGE_BYTES), False

    def attribute(
        self,
        pa: int,
        dumped: bytes,
        live: np.ndarray,
        before: np.ndarray | None = None,
        device: PageExplanation | None = None,
    ) -> Attribution:
        """Name the differing bytes of one page and decide them byte by byte.

        With ``before`` (the page in a live image taken before the dump), a dumped byte equal to its
        before-value is consistent: the dump caught it before it changed. Every other differing byte must
        lie in memory the dump code or ddb writes while dumping (an expected kind; for .data/.bss a
        variable named in `VOLATILE_DATA_SYMBOLS`), or - memory no symbol or range names, with a before
        image - be a byte that changed between before and after; the rest is listed in ``unexplained``.
        ``device`` (`harness.verify.dumpdevice.PageExplanation`) names the dump device's own state on this
        page: bytes it explains are consistent, bytes it refutes are wrong even where the page changed."""
        d = np.frombuffer(dumped, dtype=np.uint8)
        spans = differing_spans(d, live)
        first = spans[0][0] if spans else 0
        nbytes = sum(e - s for s, e in spans)
        consistent = 0
        eff = live
        if before is not None:
            same = d == before
            eff = np.where(same, d, live)  # bytes the dump holds in their before state count as equal
            consistent = nbytes - int(np.count_nonzero(d != eff))
        suspect = d != eff
        vas = self.vas_of(pa)
        va = next(
            (v for v in vas if not (self.dmap and self.dmap[0] <= v < self.dmap[1])), vas[0] if vas else None
        )
        table = self.tables.get(pa)
        if table is not None:
            where = f"{_level(table)} page for {table.base_va:#x}"
            only_ad, other = diff_table_entries(d, eff)
            if not other:
                kind = "page-table-accessed-dirty" if only_ad else "page-table"
                text = f"{kind}: {where}" + ("" if only_ad else " (the dump holds the before-image entries)")
                return Attribution(kind, text, True, first, nbytes, va, consistent_bytes=consistent)
            if self.dump_map and all(self.dump_map[0] <= table.entry_va(i) < self.dump_map[1] for i in other):
                return Attribution(
                    "page-table-dump-map",
                    f"page-table-dump-map: {where} (crashdumpmap)",
                    True,
                    first,
                    nbytes,
                    va,
                    consistent_bytes=consistent,
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
                unexplained=[(8 * i, 8, "page-table", f"entry for {table.entry_va(i):#x}") for i in other],
                consistent_bytes=consistent,
            )
        kinds: dict[str, list[str]] = {}
        unexplained: list[tuple[int, int, str, str]] = []
        bad_mask: np.ndarray | None = None
        for s, e in spans:
            off = s
            while off < e:
                kind, label, end, ok = self._classify(pa, vas, off)
                end = min(e, max(end, off + 1))
                if kind == "msgbuf" and label == MSGBUF_TEXT and before is not None:
                    # message text is appended once per byte: the dump holds its before- or after-value
                    # (only `struct msgbuf`'s indices and checksum take values in between)
                    ok = False
                labels = kinds.setdefault(kind, [])
                if label and label not in labels:
                    labels.append(label)
                if not ok:
                    bad = suspect[off:end]
                    if device is not None:
                        bad = bad & ~device.explained[off:end]
                    if kind == "unattributed" and before is not None:
                        # memory no symbol names (heap) may hold a mid-dump value only where it changed
                        # between before and after - unless a dump-device fact says the value is wrong
                        keep = before[off:end] == live[off:end]
                        if device is not None:
                            keep = keep | device.refuted[off:end]
                        bad = bad & keep
                    bad_idx = np.nonzero(bad)[0]
                    if bad_idx.size:
                        unexplained.append((off + int(bad_idx[0]), int(bad_idx.size), kind, label))
                        if bad_mask is None:
                            bad_mask = np.zeros(PAGE_BYTES, dtype=bool)
                        bad_mask[off + bad_idx] = True
                off = end
        bad_kinds = list(dict.fromkeys(k for _o, _n, k, _l in unexplained))
        ordered = bad_kinds + [k for k in kinds if k not in bad_kinds]
        text = "; ".join(f"{k}: {', '.join(kinds[k][:4])}" if kinds[k] else k for k in ordered)
        reason = ""
        if "thread-stack" in bad_kinds and "thread-stack" not in self.expected:
            reason = (
                "the stack of a thread other than the one that panicked: no other thread ran after the dump"
            )
        return Attribution(
            ordered[0] if ordered else "unattributed",
            text,
            not unexplained,
            first,
            nbytes,
            va,
            reason=reason,
            kinds=kinds,
            unexplained=unexplained,
            consistent_bytes=consistent,
            bad_mask=bad_mask,
        )


def _level(t: TablePage) -> str:
    return {4: "PML4", 3: "PDP", 2: "PD", 1: "PT"}[t.level]

"""`verify_dump`: prove a dump right against the guest's live physical memory, page by page.

Flow: compare every dumped page with the live page at the same physical address (numpy over mmaps);
walk the live amd64 kernel page tables (root from ``KPML4phys`` / the dump header / the caller) to name
pages and, for a minidump, to check that every page mapped in kernel VA is in the dump; for a full dump
check that every ``dump_avail`` segment is present; cross-check values ddb printed; attribute each
differing page and decide. The result is a `VerificationReport`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.verify.attribution import (
    CONSOLE_STATE_SYMBOLS,
    SHUTDOWN_STATE_SYMBOLS,
    STACK_WINDOW,
    Attributor,
    VaRange,
    expected_kinds,
)
from harness.verify.compare import compare_pages
from harness.verify.dumpdevice import DumpDeviceState, Layouts
from harness.verify.dumpdevice.explain import DumpDeviceExplainer, build_explainer
from harness.verify.dumpdevice.images import ImageSet
from harness.verify.live import PAGE_SIZE, LiveMemory, LiveMemoryError
from harness.verify.pagetables import KernelMappings, PageTableError, walk_kernel
from harness.verify.report import CrossCheck, Difference, VerificationReport
from harness.verify.symbols import KernelSymbols, KernelSymbolsError

#: FreeBSD amd64 constants used when a dump header does not say (sys/amd64/include/vmparam.h)
VM_MIN_KERNEL_ADDRESS = 0xFFFF_FE00_0000_0000
DMAP_MIN_ADDRESS = 0xFFFF_F800_0000_0000
DMAP_MAX_ADDRESS = 0xFFFF_FC00_0000_0000
#: amd64 `struct trapframe` (sys/amd64/include/frame.h): register -> byte offset, size
TRAPFRAME = {
    "rdi": (0, 8),
    "rsi": (8, 8),
    "rdx": (16, 8),
    "rcx": (24, 8),
    "r8": (32, 8),
    "r9": (40, 8),
    "rax": (48, 8),
    "rbx": (56, 8),
    "rbp": (64, 8),
    "r10": (72, 8),
    "r11": (80, 8),
    "r12": (88, 8),
    "r13": (96, 8),
    "r14": (104, 8),
    "r15": (112, 8),
    "fs": (124, 2),
    "gs": (126, 2),
    "es": (140, 2),
    "ds": (142, 2),
    "rip": (152, 8),
    "cs": (160, 8),
    "rflags": (168, 8),
    "rsp": (176, 8),
    "ss": (184, 8),
}
TRAPFRAME_SIZE = 192


def _info(vmcore: Any) -> dict[str, Any]:
    info = getattr(vmcore, "info", None)
    return dict(info) if isinstance(info, Mapping) else {}


def _get(info: Mapping[str, Any], *names: str) -> Any:
    """First present key among ``names``, looking one level into nested dicts (e.g. info['header'])."""
    for n in names:
        if n in info and info[n] is not None:
            return info[n]
    for v in info.values():
        if isinstance(v, Mapping):
            got = _get(v, *names)
            if got is not None:
                return got
    return None


def _as_int(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, int):
        return v
    try:
        return int(str(v), 0)
    except ValueError:
        return None


def dump_kind_of(vmcore: Any) -> tuple[str, str]:
    info = _info(vmcore)
    fmt = str(_get(info, "format") or "")
    kind = str(_get(info, "kind") or ("mini" if "mini" in fmt else "full"))
    return ("mini" if kind.startswith("mini") else "full"), fmt


def _symbol(vmcore: Any, symbols: KernelSymbols | None, name: str) -> int | None:
    if symbols is not None:
        a = symbols.address(name)
        if a is not None:
            return a
    fn = getattr(vmcore, "symbol", None)
    if fn is None:
        return None
    try:
        return int(fn(name))
    except Exception:  # noqa: BLE001 - the reader's SymbolError or no kernel given
        return None


def _read_va(vmcore: Any, va: int, size: int) -> bytes | None:
    try:
        data = vmcore.read(va, size)
    except Exception:  # noqa: BLE001 - ReaderError/AddressError: not in the dump
        return None
    return bytes(data) if len(data) == size else None


def _read_u64(vmcore: Any, va: int) -> int | None:
    data = _read_va(vmcore, va, 8)
    return int.from_bytes(data, "little") if data is not None else None


def _translate(vmcore: Any, va: int) -> int | None:
    try:
        return int(vmcore.translate(va))
    except Exception:  # noqa: BLE001
        return None


def dump_avail_ranges(vmcore: Any, symbols: KernelSymbols | None) -> list[tuple[int, int]] | None:
    """Physical ranges the kernel may dump: the dump header's dump_avail, else the kernel's array."""
    da = _get(_info(vmcore), "dump_avail")
    if isinstance(da, list | tuple) and da:
        out = []
        for item in da:
            if isinstance(item, Mapping):
                s, e = _as_int(item.get("start")), _as_int(item.get("end"))
            else:
                s, e = _as_int(item[0]), _as_int(item[1])
            if s is not None and e is not None and e > s:
                out.append((s, e))
        if out:
            return out
    addr = _symbol(vmcore, symbols, "dump_avail")
    if addr is None:
        return None
    raw = _read_va(vmcore, addr, 8 * 2 * 64)
    if raw is None:
        return None
    words = struct.unpack("<128Q", raw)
    out = []
    for i in range(0, 128, 2):
        s, e = words[i], words[i + 1]
        if e == 0:
            break
        if e > s:
            out.append((s, e))
    return out or None


def _in_ranges_mask(pfns: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    pa = pfns * np.uint64(PAGE_SIZE)
    mask = np.zeros(pfns.shape, dtype=bool)
    for s, e in ranges:
        mask |= (pa >= np.uint64(s - s % PAGE_SIZE)) & (pa < np.uint64(e))
    return mask


class _TableReader:
    def __init__(self, live: LiveMemory) -> None:
        self.live = live

    def __call__(self, pa: int) -> np.ndarray | None:
        try:
            return self.live.view(pa, PAGE_SIZE).view(np.uint64)
        except LiveMemoryError:
            return None


def find_page_table_root(
    vmcore: Any, live: LiveMemory, symbols: KernelSymbols | None
) -> tuple[int | None, str]:
    """PA of the kernel PML4: from the dump header, else ``KPML4phys`` read from live memory or the dump."""
    info = _info(vmcore)
    v = _as_int(_get(info, "kpml4phys", "KPML4phys", "pml4_pa"))
    if v:
        return v, "dump header"
    addr = _symbol(vmcore, symbols, "KPML4phys")
    if addr is not None:
        pa = _translate(vmcore, addr)
        if pa is not None and live.contains(pa, 8):
            v = live.read_u64(pa)
            if v and v % PAGE_SIZE == 0 and live.contains(v):
                return v, "KPML4phys (live)"
        v = _read_u64(vmcore, addr)
        if v and v % PAGE_SIZE == 0 and live.contains(v):
            return v, "KPML4phys (dump)"
    return None, "no KPML4phys symbol value and no root given"


def _kva_range(vmcore: Any) -> tuple[int, int]:
    info = _info(vmcore)
    hdr = info.get("header") if isinstance(info.get("header"), Mapping) else info
    start = _as_int(_get(hdr, "kernbase")) or VM_MIN_KERNEL_ADDRESS
    pmapsize = _as_int(_get(hdr, "pmapsize"))
    version = _as_int(hdr.get("version")) or 2
    if start < 0xFFFF_8000_0000_0000:
        start = VM_MIN_KERNEL_ADDRESS
    if pmapsize:
        span = (pmapsize // PAGE_SIZE) << 30 if version >= 2 else (pmapsize // 8) * PAGE_SIZE
        return start, min(start + span, 1 << 64)
    return start, 1 << 64


def _dmap(vmcore: Any) -> tuple[int, int]:
    info = _info(vmcore)
    base = _as_int(_get(info, "dmapbase")) or DMAP_MIN_ADDRESS
    end = _as_int(_get(info, "dmapend")) or DMAP_MAX_ADDRESS
    return base, end


def _thread_stack_ranges(vmcore: Any, symbols: KernelSymbols | None, flow: str = "ddb") -> list[VaRange]:
    """Stack windows around each thread's saved stack pointer and ddb's trap frame. In the panic flow the
    thread that panicked and dumped (`Thread.crashed`: ``dumptid``, registers from ``dumppcb``) gets its
    own kind, listed first so it wins where windows overlap: it is the only one that ran after the dump."""
    ranges: list[VaRange] = []
    own: list[VaRange] = []
    threads_fn = getattr(vmcore, "threads", None)
    threads: list[Any] = []
    if threads_fn is not None:
        with contextlib.suppress(Exception):
            threads = list(threads_fn())
    for t in threads:
        regs = getattr(t, "registers", None) or getattr(t, "regs", None) or {}
        rsp = regs.get("rsp") if isinstance(regs, Mapping) else getattr(regs, "rsp", None)
        rsp = rsp if rsp is not None else getattr(t, "rsp", None)
        if not rsp:
            continue
        tid = getattr(t, "tid", "?")
        name = getattr(t, "name", "") or ""
        if flow == "panic" and getattr(t, "crashed", False):
            own.append(
                VaRange(
                    int(rsp) - STACK_WINDOW,
                    int(rsp) + STACK_WINDOW,
                    "panic-thread-stack",
                    f"panicking thread tid {tid} {name} (dumppcb)".replace("  ", " "),
                )
            )
            continue
        ranges.append(
            VaRange(
                int(rsp) - STACK_WINDOW, int(rsp) + STACK_WINDOW, "thread-stack", f"tid {tid} {name}".strip()
            )
        )
    frame_ptr = _symbol(vmcore, symbols, "kdb_frame")
    if frame_ptr is not None:
        frame = _read_u64(vmcore, frame_ptr)
        if frame:
            # panic flow on a kernel with ddb: ddb stopped on the panic (frame on the panicking stack)
            kind = "panic-thread-stack" if flow == "panic" else "thread-stack"
            own.append(VaRange(frame - STACK_WINDOW, frame + STACK_WINDOW, kind, "ddb (kdb_frame)"))
    return own + ranges


def _panic_state_ranges(vmcore: Any, symbols: KernelSymbols | None) -> list[VaRange]:
    """The panic flow's named state: `SHUTDOWN_STATE_SYMBOLS` and `CONSOLE_STATE_SYMBOLS` (by ELF size)."""
    ranges: list[VaRange] = []
    if symbols is None:
        return ranges
    for kind, names in (("shutdown-state", SHUTDOWN_STATE_SYMBOLS), ("console-state", CONSOLE_STATE_SYMBOLS)):
        for name in names:
            a = symbols.address(name)
            s = symbols.symbol_at(a) if a is not None else None
            if s is not None and s.name == name:
                ranges.append(VaRange(s.start, s.start + max(s.size, 1), kind, name))
    return ranges


def _special_ranges(
    vmcore: Any, symbols: KernelSymbols | None
) -> tuple[list[VaRange], tuple[int, int] | None]:
    ranges: list[VaRange] = []
    msgbufp = _symbol(vmcore, symbols, "msgbufp")
    if msgbufp is not None:
        mb = _read_u64(vmcore, msgbufp)
        hdr = _read_va(vmcore, mb, 16) if mb else None
        if hdr:
            ptr, _magic, size = struct.unpack("<QII", hdr)
            ranges.append(VaRange(ptr, ptr + size, "msgbuf", "msgbuf"))
            ranges.append(VaRange(mb, mb + 128, "msgbuf", "struct msgbuf"))
    if symbols is not None:
        for sec in symbols.sections:
            if sec.name == "set_pcpu":
                ranges.append(VaRange(sec.start, sec.start + sec.size, "pcpu", "set_pcpu"))
        for name in ("__pcpu", "pcpu"):
            a = symbols.address(name)
            s = symbols.symbol_at(a) if a is not None else None
            if s is not None and s.size:
                ranges.append(VaRange(s.start, s.start + s.size, "pcpu", name))
    dump_map = None
    cdm = _symbol(vmcore, symbols, "crashdumpmap")
    if cdm is not None:
        va = _read_u64(vmcore, cdm)
        if va:
            dump_map = (va, va + 1024 * PAGE_SIZE)  # MAXDUMPPGS (DFLTPHYS/PAGE_SIZE) is far smaller
    return ranges, dump_map


def _pa_ranges(vmcore: Any, ranges: list[VaRange]) -> list[VaRange]:
    """Translate VA ranges (msgbuf, pcpu) page by page through the dump, for pages only the DMAP maps."""
    out: list[VaRange] = []
    for r in ranges:
        if r.end - r.start > (64 << 20):
            continue
        va = r.start - r.start % PAGE_SIZE
        while va < r.end:
            pa = _translate(vmcore, va)
            if pa is not None:
                lo = max(r.start, va) - va + pa
                hi = min(r.end, va + PAGE_SIZE) - va + pa
                out.append(VaRange(lo, hi, r.kind, r.label))
            va += PAGE_SIZE
    return out


def parse_ddb_registers(text: str) -> dict[str, int]:
    """`show registers` output -> {name: value} (values are hex with 0x, or a bare 0)."""
    regs: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in TRAPFRAME:
            v = _as_int(parts[1])
            if v is not None:
                regs[parts[0]] = v
    return regs


def crosscheck_registers(
    vmcore: Any, symbols: KernelSymbols | None, regs: Mapping[str, int]
) -> list[CrossCheck]:
    """ddb's `show registers` prints ``*kdb_frame``; the reader must find the same trap frame in the dump."""
    checks: list[CrossCheck] = []
    addr = _symbol(vmcore, symbols, "kdb_frame")
    frame = _read_u64(vmcore, addr) if addr is not None else None
    raw = _read_va(vmcore, frame, TRAPFRAME_SIZE) if frame else None
    if raw is None:
        checks.append(
            CrossCheck("show registers", "trap frame at *kdb_frame", "not readable in dump", False, "reader")
        )
        return checks
    for name, value in regs.items():
        off, size = TRAPFRAME[name]
        got = int.from_bytes(raw[off : off + size], "little")
        checks.append(
            CrossCheck(
                f"register {name}",
                f"{value:#x}",
                f"{got:#x}",
                got == value,
                "ddb show registers vs reader (*kdb_frame)",
            )
        )
    return checks


def crosscheck_symbols(
    vmcore: Any, live: LiveMemory, symbols: KernelSymbols | None, values: Mapping[str, Any]
) -> list[CrossCheck]:
    """Values ddb printed at a symbol (`x/gx S` = 8 bytes, `x/lx S` = 4) must be what the reader and the
    live image hold there. ``values`` maps a symbol to an int (8 bytes) or to ``(value, size)``."""
    checks: list[CrossCheck] = []
    for name, spec in values.items():
        value, size = (spec, 8) if isinstance(spec, int) else (int(spec[0]), int(spec[1]))
        cmd = {8: "x/gx", 4: "x/lx", 2: "x/hx", 1: "x/bx"}.get(size, f"x/{size}")
        addr = _symbol(vmcore, symbols, name)
        raw = _read_va(vmcore, addr, size) if addr is not None else None
        got = int.from_bytes(raw, "little") if raw is not None else None
        checks.append(
            CrossCheck(
                f"{cmd} {name}",
                f"{value:#x}",
                "unreadable" if got is None else f"{got:#x}",
                got == value,
                "ddb vs reader",
            )
        )
        pa = _translate(vmcore, addr) if addr is not None else None
        if pa is not None and live.contains(pa, size):
            lv = int.from_bytes(live.read(pa, size), "little")
            checks.append(
                CrossCheck(
                    f"{cmd} {name} (live)", f"{value:#x}", f"{lv:#x}", lv == value, "ddb vs live image"
                )
            )
    return checks


def verify_dump(
    vmcore: Any,
    live: Any,
    *,
    kernel: str | os.PathLike[str] | None = None,
    before: Any = None,
    pml4_pa: int | None = None,
    ddb_values: Mapping[str, Any] | None = None,
    ddb_registers: Mapping[str, int] | None = None,
    timings: Mapping[str, float | None] | None = None,
    walk_page_tables: bool = True,
    strict: bool = False,
    flow: str = "ddb",
    io_ranges: Sequence[tuple[int, int, str]] | None = None,
    device_state: DumpDeviceState | None = None,
    kernel_debug: str | os.PathLike[str] | Layouts | None = None,
) -> VerificationReport:
    """Verify ``vmcore`` (a `reader.Vmcore` or anything with the same page interface) against ``live``.

    ``before`` is an optional live image taken in ddb right before `dump`. Every differing byte is
    decided on its own (`harness.verify.attribution.Attributor.attribute`): a dumped byte equal to its
    before-value is consistent; any other must lie in memory the dump code or ddb writes (named
    variables such as ``dumping``/``dumper``, msgbuf, stacks, per-CPU data, page-table bits, device I/O)
    or, in memory no symbol names (driver heap), have changed between before and after. ``pml4_pa``
    overrides the page-table root; ``strict`` also fails on mapped pages the kernel chose not to dump;
    ``ddb_values``/``ddb_registers`` are what ddb printed (`x/gx`, `show registers`).
    ``flow`` is how the dump was made: "ddb" (ddb's `dump`, every CPU stopped in ddb) or "panic" (the
    kernel's own dump on panic, held at "Press a key"; no before image, no ddb values): it selects the
    expected-volatile kinds (`harness.verify.attribution.expected_kinds`). In the panic flow ``before``
    (if given) is the image taken right before the panic trigger, the last stop there is: a page changed
    between it and the held kernel is excused as in the ddb flow, and every stable page must still match
    or be of a panic-flow kind. ``io_ranges`` are physical
    ``(address, size, label)`` ranges of the dump device's own I/O state as the hypervisor reports them
    (legacy callers; `fbsd-hil repro` passes ``device_state=``): differences there are ``dump-device-io``.
    ``device_state`` (`harness.verify.dumpdevice.DumpDeviceState`, QEMU's facts about the dump device)
    replaces them: the dump device's own state is then explained field by field with named evidence
    (hypervisor: rings, indirect tables, headers, status; DWARF from ``kernel_debug``, else a
    ``KERNEL.debug``/``kernel.debug`` beside the kernel, else the kernel's own: the driver's objects), and
    nothing is excused by an address range alone.
    """
    t0 = time.monotonic()
    expected = expected_kinds(flow)
    report = VerificationReport(flow=flow)
    if timings:
        report.timings.update(timings)
    report.dump_kind, report.dump_format = dump_kind_of(vmcore)
    report.dump = str(getattr(vmcore, "path", "") or "")
    live = LiveMemory.from_image(live)
    report.live_image = str(live.path or "")
    before_mem = LiveMemory.from_image(before) if before is not None else None

    symbols: KernelSymbols | None = None
    kpath = kernel or getattr(vmcore, "kernel_path", None) or getattr(vmcore, "kernel", None)
    kpath = getattr(kpath, "path", kpath)  # reader.kernel.Kernel
    if isinstance(kpath, str | os.PathLike) and Path(kpath).is_file():
        report.kernel = str(kpath)
        loaded = getattr(vmcore, "kernel", None)
        try:
            if getattr(loaded, "table", None) is not None and Path(loaded.path) == Path(kpath):
                symbols = KernelSymbols.from_kernel(loaded)  # parsed once, when the vmcore was opened
            else:
                symbols = KernelSymbols.from_elf(kpath)
        except KernelSymbolsError as exc:
            report.notes.append(f"no attribution by symbol: {exc}")

    cmp = compare_pages(vmcore, live)
    report.pages_compared = cmp.pages_compared
    report.bytes_compared = cmp.bytes_compared
    report.pages_not_in_live_image = len(cmp.not_in_live)
    for pa in cmp.not_in_live[:20]:
        report.errors.append(f"dumped page {pa:#x} lies outside the live image")

    arch = str(_get(_info(vmcore), "arch") or "amd64")
    dmap = _dmap(vmcore)
    mappings: KernelMappings | None = None
    if walk_page_tables and arch in ("amd64", "x86_64"):
        root, how = (pml4_pa, "given") if pml4_pa is not None else find_page_table_root(vmcore, live, symbols)
        if root is None:
            msg = f"cannot walk the live kernel page tables: {how}"
            (report.errors if report.dump_kind == "mini" else report.notes).append(msg)
        else:
            va_start, va_end = _kva_range(vmcore)
            try:
                mappings = walk_kernel(_TableReader(live), root, va_start, va_end, skip=[dmap])
                report.notes.append(
                    f"live page tables from {how} at {root:#x}: {len(mappings.tables)} table pages, "
                    f"{mappings.va.size} kernel pages mapped in [{va_start:#x}, {va_end:#x})"
                )
                for pa, level, va in mappings.unreadable_tables[:10]:
                    report.errors.append(
                        f"level-{level} table page {pa:#x} (for va {va:#x}) not in live image"
                    )
            except PageTableError as exc:
                report.errors.append(f"live page-table walk failed: {exc}")

    avail = dump_avail_ranges(vmcore, symbols)
    if report.dump_kind == "mini" and mappings is not None:
        _check_minidump_complete(report, mappings, cmp.dump_pfns, avail, live, dmap, symbols, strict)
    elif report.dump_kind == "full":
        _check_full_complete(report, cmp.dump_pfns, avail, live)

    # -- attribution of differing pages ----------------------------------------------------------
    attr = Attributor(symbols=symbols, dmap=dmap, expected=expected)
    if mappings is not None:
        attr.tables = mappings.tables
        if cmp.differing:
            want = np.array(cmp.differing, dtype=np.uint64)
            sel = np.isin(mappings.pa, want)
            for v, p in zip(mappings.va[sel].tolist(), mappings.pa[sel].tolist(), strict=True):
                attr.pa_to_vas.setdefault(p, []).append(v)
    elif cmp.differing and hasattr(vmcore, "kernel_pages"):
        want_set = set(cmp.differing)
        with contextlib.suppress(Exception):
            for v, p in vmcore.kernel_pages():
                if p in want_set:
                    attr.pa_to_vas.setdefault(p, []).append(v)
    if cmp.differing:
        special, attr.dump_map = _special_ranges(vmcore, symbols)
        attr.ranges = (_panic_state_ranges(vmcore, symbols) if flow == "panic" else []) + special
        attr.ranges += _thread_stack_ranges(vmcore, symbols, flow)
        if device_state is None:
            attr.pa_ranges = [VaRange(a, a + n, "dump-device-io", label) for a, n, label in io_ranges or ()]
        attr.pa_ranges += _pa_ranges(vmcore, [r for r in special if r.kind in ("msgbuf", "pcpu")])
    if symbols is None and cmp.differing:
        report.notes.append(
            "attribution is coarse: no kernel symbol table, so .data/.bss bytes cannot be told from other "
            "memory; only the message buffer, stacks, page tables and device I/O ranges explain a difference"
        )
    explainer = None
    if device_state is not None and cmp.differing:
        explainer = _dump_device_explainer(
            vmcore, live, before_mem, symbols, device_state, report, kernel_debug
        )
    for pa in cmp.differing:
        dumped = vmcore.read_phys(pa, PAGE_SIZE)
        lv = live.view(pa, PAGE_SIZE)
        bv = None
        if before_mem is not None:
            with contextlib.suppress(LiveMemoryError):
                bv = before_mem.view(pa, PAGE_SIZE)
        dev = explainer.explain_page(pa, dumped, lv, bv) if explainer and explainer.covers(pa) else None
        a = attr.attribute(pa, dumped, lv, bv, device=dev)
        if explainer is not None and not a.explained and dev is None:
            dev = explainer.explain_page(pa, dumped, lv, bv)  # only to learn whether the device owns it
        dump_device = ""
        if dev is not None and a.explained and explainer is not None and explainer.covers(pa):
            if not dev.evidence:  # every differing byte holds its before- or after-dump value
                dev.evidence = [
                    f"hypervisor: page {dev.tied}: each differing byte holds its value from before or after "
                    "the dump"
                ]
            dump_device = "named"
            a.kind = "dump-device-state"
            a.text = f"dump-device-state: {dev.evidence[0]}" + (
                f" (+{len(dev.evidence) - 1} more fields)" if len(dev.evidence) > 1 else ""
            )
        elif (
            dev is not None
            and not a.explained
            and dev.tied
            and not dev.refuted.any()
            and dev.unnamed_window is not None
            and a.bad_mask is not None
            and not (a.bad_mask & ~dev.unnamed_window).any()
            and not explainer.named_by_dwarf  # type: ignore[union-attr]
        ):
            dump_device = "unnamed"
            a.kind = "dump-device-unnamed"
            a.text = f"dump-device-unnamed: {dev.tied}"
        explained, reason = a.explained, a.reason
        if bv is not None:
            changed = not np.array_equal(bv, lv)
            if changed and explained:
                reason = (
                    "changed while the dump was written"
                    if flow == "ddb"
                    else "changed between the live image taken right before the panic trigger and the held "
                    "kernel (panic flow: no stop between the panic and the dump)"
                )
            elif changed:
                reason = (
                    "changed while the dump was written, yet the dump holds bytes equal to neither the "
                    "before nor the after image outside memory the dump code writes"
                )
            elif not explained:
                reason = "page was stable during the dump, yet the dump differs"
            else:
                reason = "same before and after the dump: differs only in memory the dump code and ddb write"
        if dump_device == "named":
            reason = "the dump device's own state: every differing byte is a value of the request in flight"
        elif dump_device == "unnamed":
            reason = (
                "tied to the dump device by the hypervisor; its differing bytes cannot be named without the "
                f"kernel's DWARF ({explainer.no_dwarf_reason})"  # type: ignore[union-attr]
            )
        report.differences.append(
            Difference(
                pa,
                a.text,
                a.kind,
                a.first_offset,
                a.differing_bytes,
                explained,
                reason,
                a.va,
                unexplained=[_unexplained_entry(symbols, pa, a.va, *u) for u in a.unexplained[:16]],
                consistent_bytes=a.consistent_bytes,
                dump_device=dump_device,
                symbol=_name_of(symbols, a.va + a.first_offset if a.va is not None else None),
                evidence=list(dev.evidence) if dev is not None and (dump_device or dev.refuted.any()) else [],
            )
        )
    report.pages_differing_explained = sum(1 for d in report.differences if d.explained)
    report.pages_dump_device_named = sum(1 for d in report.differences if d.dump_device == "named")
    report.pages_dump_device_unnamed = sum(1 for d in report.differences if d.dump_device == "unnamed")
    report.pages_differing_unexplained = (
        len(report.differences) - report.pages_differing_explained - report.pages_dump_device_unnamed
    )
    report.pages_identical = report.pages_compared - len(cmp.differing) - len(cmp.not_in_live)

    if ddb_values:
        report.crosschecks.extend(crosscheck_symbols(vmcore, live, symbols, ddb_values))
    if ddb_registers:
        report.crosschecks.extend(crosscheck_registers(vmcore, symbols, ddb_registers))
    report.timings["verify"] = round(time.monotonic() - t0, 3)
    report.decide()
    return report


def _dumping_thread(vmcore: Any) -> tuple[int, int | None] | None:
    """(struct thread address, saved rsp) of the thread that dumped (`dumptid`), if the reader finds it."""
    with contextlib.suppress(Exception):
        for t in vmcore.threads():
            if getattr(t, "crashed", False):
                regs = getattr(t, "registers", None) or {}
                return int(t.address), regs.get("rsp")
    return None


def _dump_device_explainer(
    vmcore: Any,
    live: LiveMemory,
    before: LiveMemory | None,
    symbols: KernelSymbols | None,
    state: DumpDeviceState,
    report: VerificationReport,
    kernel_debug: str | os.PathLike[str] | Layouts | None,
) -> DumpDeviceExplainer:
    """The dump device's facts over the three images (reads through the dump's page tables)."""

    def read_dump(pa: int, n: int) -> bytes | None:
        try:
            return bytes(vmcore.read_phys(pa, n))
        except Exception:  # noqa: BLE001 - page not in the dump
            return None

    def read_live(mem: LiveMemory) -> Any:
        def read(pa: int, n: int) -> bytes | None:
            return bytes(mem.read(pa, n)) if mem.contains(pa, n) else None

        return read

    images = ImageSet(
        read_before=read_live(before) if before is not None else None,
        read_dump=read_dump,
        read_after=read_live(live),
        translate_va=lambda va: _translate(vmcore, va),
        dmap=_dmap(vmcore),
    )
    if state.dump_extent is None and len(state.devices) == 1 and state.devices[0].capacity_bytes:
        # the kernel writes the dump at the end of the dump device, before the trailing header; the
        # vmcore's size bounds it (a compressed dump on disk is smaller still); 1 MiB for the leader
        # header, key and alignment. A compressed dump is written from the start of the extent reserved
        # for the uncompressed payload (kern_shutdown.c dump_start()), so the decoded size bounds it.
        dump_file = Path(str(getattr(vmcore, "path", "") or ""))
        if str(dump_file) not in ("", ".") and dump_file.is_file():
            cap = state.devices[0].capacity_bytes
            size = max(dump_file.stat().st_size, int(getattr(vmcore, "payload_size", 0) or 0))
            state = dataclasses.replace(state, dump_extent=(max(0, cap - 512 - size - (1 << 20)), cap))
    explainer = build_explainer(
        state,
        images,
        kernel=report.kernel or None,
        kernel_debug=kernel_debug
        if isinstance(kernel_debug, Layouts) or not kernel_debug
        else str(kernel_debug),
        symbol=lambda name: _symbol(vmcore, symbols, name),
        dump_thread=_dumping_thread(vmcore),
    )
    report.dump_device = {
        "hypervisor": state.describe(),
        "driver": explainer.described,
        "no_dwarf_reason": "" if explainer.named_by_dwarf else explainer.no_dwarf_reason,
        "notes": explainer.notes + state.notes,
    }
    if explainer.named_by_dwarf:
        report.notes.append("dump device's driver objects (DWARF): " + "; ".join(explainer.described))
    else:
        report.notes.append(f"dump device's driver state not nameable: {explainer.no_dwarf_reason}")
    return explainer


def _unexplained_entry(
    symbols: KernelSymbols | None, pa: int, va: int | None, off: int, n: int, kind: str, label: str
) -> dict[str, Any]:
    """One run of bytes no rule explains, for the report: where, how many, what memory it is."""
    return {
        "address": f"{pa + off:#x}",
        "va": f"{va + off:#x}" if va is not None else None,
        "symbol": _name_of(symbols, va + off if va is not None else None),
        "offset": off,
        "bytes": n,
        "what": f"{kind}: {label}" if label else kind,
    }


def _name_of(symbols: KernelSymbols | None, va: int | None) -> str:
    """`symbol+0xoff` from the kernel's symbol table for a kernel VA it names, else ""."""
    if symbols is None or va is None:
        return ""
    return symbols.name_of(va) or ""


def _check_minidump_complete(
    report: VerificationReport,
    m: KernelMappings,
    dump_pfns: np.ndarray,
    avail: list[tuple[int, int]] | None,
    live: LiveMemory,
    dmap: tuple[int, int],
    symbols: KernelSymbols | None,
    strict: bool = False,
) -> None:
    """Every PT page and every mapped kernel-image page must be in a minidump (if inside dump_avail).

    Other mapped pages missing from the dump are counted as ``pages_mapped_not_dumped``: the kernel
    skips pages whose vm_page has PG_NODUMP, which cannot be seen from outside without the kernel's
    struct layouts (a real FreeBSD 14 minidump, the LLDB fixture, has 50 such pages). ``strict``
    counts them as missing too.
    """
    leaf = m.pa // np.uint64(PAGE_SIZE)
    pt = np.array(m.pt_pages(), dtype=np.uint64) // np.uint64(PAGE_SIZE)
    expected = np.unique(np.concatenate([leaf, pt]))
    # PHYS_IN_DMAP: only memory the direct map covers is dumped
    expected = expected[expected * np.uint64(PAGE_SIZE) < np.uint64(dmap[1] - dmap[0])]
    if avail is not None:
        mask = _in_ranges_mask(expected, avail)
        what = "dump_avail"
    else:
        mask = np.array([live.contains(int(p) * PAGE_SIZE) for p in expected.tolist()], dtype=bool)
        what = "the live image's RAM ranges (no dump_avail known)"
        report.notes.append("minidump completeness judged against live RAM ranges: dump_avail unknown")
    report.excluded_not_dumpable = int((~mask).sum())
    if report.excluded_not_dumpable:
        report.notes.append(f"{report.excluded_not_dumpable} mapped pages outside {what} are not dumpable")
    expected = expected[mask]
    missing = np.setdiff1d(expected, dump_pfns, assume_unique=True)
    if not missing.size:
        return
    pt_set = set(pt.tolist())
    sel = np.isin(leaf, missing)
    first_va: dict[int, int] = {}
    for v, p in zip(m.va[sel].tolist(), leaf[sel].tolist(), strict=True):
        first_va.setdefault(p, v)
    must: list[tuple[int, int | None, str]] = []
    nodump: list[tuple[int, int | None, str]] = []
    for p in missing.tolist():
        va = first_va.get(p)
        sec = symbols.section_at(va) if symbols is not None and va is not None else None
        if p in pt_set:
            must.append((p, va, "page-table page"))
        elif sec is not None:
            must.append((p, va, f"kernel image {sec.name}: {symbols.describe(va)}"))  # type: ignore[union-attr]
        else:
            nodump.append((p, va, "mapped in kernel VA, not dumped (PG_NODUMP?)"))
    report.missing_pages = len(must) + (len(nodump) if strict else 0)
    report.pages_mapped_not_dumped = len(nodump)
    if nodump:
        report.notes.append(
            f"{len(nodump)} pages mapped in kernel VA are not in the dump; the kernel leaves out pages it "
            "judges not dumpable (PG_NODUMP, e.g. UMA_ZONE_NODUMP zones)"
            + (" - counted as missing (strict)" if strict else "")
        )
    for p, va, what_ in (must + nodump)[:500]:
        report.missing.append(
            {
                "pa": f"{p * PAGE_SIZE:#x}",
                "va": f"{va:#x}" if va else None,
                "symbol": _name_of(symbols, va),
                "what": what_,
                "counted": strict or (p, va, what_) in must,
            }
        )


def _check_full_complete(
    report: VerificationReport, dump_pfns: np.ndarray, avail: list[tuple[int, int]] | None, live: LiveMemory
) -> None:
    """A full dump holds every dump_avail segment, whole."""
    if avail is None:
        report.notes.append("full-dump segments not checked against dump_avail (not readable)")
        return
    missing_total = 0
    for s, e in avail:
        first, last = s // PAGE_SIZE, -(-e // PAGE_SIZE)
        want = np.arange(first, last, dtype=np.uint64)
        miss = np.setdiff1d(want, dump_pfns, assume_unique=True)
        missing_total += int(miss.size)
        if miss.size:
            report.missing.append(
                {
                    "pa": f"{int(miss[0]) * PAGE_SIZE:#x}",
                    "va": None,
                    "what": f"segment [{s:#x}, {e:#x}) lacks {miss.size} pages",
                }
            )
    report.missing_pages = missing_total
    report.notes.append(f"full dump checked against {len(avail)} dump_avail segments")

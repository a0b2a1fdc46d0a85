"""Byte-level decision for one dumped page of the dump device's state, with the evidence for each field.

`DumpDeviceExplainer` gathers every `FieldFact` (hypervisor: rings, indirect tables, request headers,
status bytes; DWARF: the driver's virtqueue bookkeeping, softc lock word and dump request, sglist) and, for
a page, returns which differing bytes a fact explains (the dumped value is one a request in flight gives),
which a fact refutes (a value no request gives), and the evidence lines for the report. Pages the
hypervisor ties to the dump device whose remaining bytes no fact names (no DWARF) are marked ``tied`` so
the report can list them under their own heading instead of calling a correct dump wrong.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from harness.verify.dumpdevice.driver import CU_HINTS, NEEDED_STRUCTS, driver_facts
from harness.verify.dumpdevice.facts import DumpDeviceState
from harness.verify.dumpdevice.fieldfacts import FieldFact
from harness.verify.dumpdevice.images import ImageSet
from harness.verify.dumpdevice.layouts import Layouts
from harness.verify.dumpdevice.rings import gather, ring_facts

PAGE = 4096
#: lowest kernel virtual address (amd64 canonical upper half)
KERNEL_VA_MIN = 0xFFFF_8000_0000_0000
#: bytes either side of what the hypervisor locates that may stay unnamed without DWARF
NEAR = 0x100
#: evidence lines kept per page (the rest are counted)
MAX_EVIDENCE = 12


@dataclass
class PageExplanation:
    explained: np.ndarray  # bool[4096]: differing bytes a fact explains
    refuted: np.ndarray  # bool[4096]: differing bytes a fact rejects (wrong even if the page changed)
    evidence: list[str] = field(default_factory=list)
    tied: str = ""  # why the hypervisor ties this page to the dump device ("" if it does not)
    #: without DWARF, the bytes near what tied the page (bool[4096]): only there may bytes stay unnamed
    unnamed_window: np.ndarray | None = None


class DumpDeviceExplainer:
    """All facts about the dump device's state, indexed by page."""

    def __init__(
        self,
        state: DumpDeviceState,
        images: ImageSet,
        *,
        layouts: Layouts | None = None,
        symbol: Callable[[str], int | None] | None = None,
        no_dwarf_reason: str = "",
        dump_thread: tuple[int, int | None] | None = None,
    ) -> None:
        self.state = state
        self.images = images
        self.buffers = gather(state, images)
        self.described: list[str] = []
        self.notes: list[str] = []
        self.no_dwarf_reason = no_dwarf_reason
        facts: list[FieldFact] = []
        if layouts is not None and symbol is not None and not no_dwarf_reason:
            missing = layouts.missing(NEEDED_STRUCTS)
            if missing:
                self.no_dwarf_reason = f"{layouts.source} lacks struct {', struct '.join(missing)}"
            else:
                try:
                    df, notes = driver_facts(state, images, layouts, symbol, self.buffers, dump_thread)
                except KeyError as exc:  # a member this kernel's struct lacks
                    self.no_dwarf_reason = str(exc.args[0] if exc.args else exc)
                else:
                    facts += df.facts
                    self.described = df.described
                    self.notes += notes
                    if not df.described:
                        self.no_dwarf_reason = (
                            "; ".join(notes) or "no vtblk device found through the kernel's data"
                        )
        elif not self.no_dwarf_reason:
            self.no_dwarf_reason = "no kernel.debug (DWARF) given"
        facts += ring_facts(state, images, self.buffers)
        self.by_page: dict[int, list[FieldFact]] = {}
        for f in facts:
            for page in {f.pa - f.pa % PAGE, (f.pa + f.size - 1) - (f.pa + f.size - 1) % PAGE}:
                self.by_page.setdefault(page, []).append(f)
        self._ring_pas = [(q.desc, q.avail, q.used) for _d, q in state.queues]

    @property
    def named_by_dwarf(self) -> bool:
        return bool(self.described)

    def covers(self, pa: int) -> bool:
        return pa in self.by_page

    def explain_page(
        self, pa: int, dumped: bytes, live: np.ndarray, before: np.ndarray | None
    ) -> PageExplanation:
        d = np.frombuffer(dumped, dtype=np.uint8)
        differs = d != live
        if before is not None:
            differs &= d != before
        explained = np.zeros(PAGE, dtype=bool)
        refuted = np.zeros(PAGE, dtype=bool)
        evidence: dict[str, None] = {}
        for f in self.by_page.get(pa, []):
            lo, hi = max(f.pa, pa) - pa, min(f.pa + f.size, pa + PAGE) - pa
            if not differs[lo:hi].any():
                continue
            if lo != f.pa - pa or hi != f.pa + f.size - pa:
                continue  # straddles a page: judged by the generic rules
            vals = {
                "dump": int.from_bytes(d[lo:hi].tobytes(), "little"),
                "after": int.from_bytes(live[lo:hi].tobytes(), "little"),
                "before": int.from_bytes(before[lo:hi].tobytes(), "little") if before is not None else None,
            }
            why = f.check(vals)
            if why:
                explained[lo:hi] = True
                evidence[f.evidence(why)] = None
            else:
                refuted[lo:hi] |= differs[lo:hi]
                evidence[
                    f"{f.source}: {f.what}: dumped {vals['dump']:#x} is no value a request gives (REFUTED)"
                ] = None
        lines = _condense(list(evidence))
        tied, window = self._tie(pa, dumped, live)
        return PageExplanation(explained & differs, refuted, lines, tied, window)

    # -- without DWARF: why the hypervisor ties a page to the dump device -------------------------------
    def _tie(self, pa: int, dumped: bytes, live: np.ndarray) -> tuple[str, np.ndarray]:
        """Why the hypervisor ties the page to the dump device, and the window of bytes around what tied
        it where, without DWARF, bytes may stay unnamed: the driver's objects sit next to what the
        hypervisor locates (the queue's bookkeeping around its ring pointers and before its per-descriptor
        array; the softc around its embedded request header; the sglist around its header segment).
        Anything farther away - e.g. an indirect-table entry beyond every chain - is not excused."""
        window = np.zeros(PAGE, dtype=bool)
        reasons: list[str] = []
        for f in self.by_page.get(pa, []):
            if f.source == "hypervisor":
                reasons.append("holds " + (f.obj or f.what))
                break
        for h in self.buffers.headers:
            if pa <= h < pa + PAGE:
                window[max(0, h - pa - NEAR) : h - pa + NEAR] = True
        raw = live.tobytes()
        words = struct.unpack(f"<{PAGE // 8}Q", raw)
        for desc, avail, used in self._ring_pas:
            for i in range(len(words) - 2):
                w = words[i]
                if (
                    w >= KERNEL_VA_MIN
                    and w % PAGE == desc % PAGE  # a VA keeps its PA's page offset: cheap test first
                    and self.images.pa_of(w) == desc
                    and self.images.pa_of(words[i + 1]) == avail
                    and (self.images.pa_of(words[i + 2]) == used)
                ):
                    window[max(0, 8 * i - NEAR) :] = True
                    reasons.append(
                        f"holds at +{8 * i:#x} the kernel pointers to QEMU's rings (desc {desc:#x}, avail "
                        f"{avail:#x}, used {used:#x}): the driver's queue bookkeeping"
                    )
        for h in self.buffers.headers:
            pat = struct.pack("<QQ", h, 16)
            for img_raw in (raw, dumped):
                k = img_raw.find(pat)
                if k >= 0 and k % 8 == 0:
                    window[max(0, k - NEAR) : k + NEAR] = True
                    reasons.append(
                        f"holds at +{k:#x} the segment (request header {h:#x}, 16): the driver's "
                        "scatter/gather list"
                    )
                    break
        return "; ".join(reasons[:2]), window


def _condense(lines: list[str]) -> list[str]:
    """Fold runs of the same field over an array index ("used.ring[3]", "used.ring[4]", ...) into one line
    when they hold the same kind of value (reasons that differ only in numbers): a cookie naming the dump
    request and one naming a request from the free list stay two lines."""
    groups: dict[tuple[str, str], list[str]] = {}
    for line in lines:
        parts = line.split(": ", 2)
        what = re.sub(r"\[\d+\]", "[i]", parts[1] if len(parts) == 3 else line)
        why = re.sub(r"0x[0-9a-f]+|\d+", "N", parts[2]) if len(parts) == 3 else ""
        groups.setdefault((what, why), []).append(line)
    out = []
    for (what, _why), members in groups.items():
        out.append(members[0] if len(members) == 1 else f"{members[0]} (and {len(members) - 1} more {what})")
    if len(out) > MAX_EVIDENCE:
        out = out[:MAX_EVIDENCE] + [f"... {len(out) - MAX_EVIDENCE} more fields"]
    return out


def build_explainer(
    state: DumpDeviceState,
    images: ImageSet,
    *,
    kernel: str | None,
    kernel_debug: str | Layouts | None,
    symbol: Callable[[str], int | None] | None,
    dump_thread: tuple[int, int | None] | None = None,
) -> DumpDeviceExplainer:
    """The explainer with DWARF when a matching kernel.debug (or a kernel with .debug_info) is at hand,
    else hypervisor facts only, with the reason why no DWARF was used. ``kernel_debug`` may also be
    `Layouts` already read (e.g. recorded from a kernel's DWARF)."""
    from harness.verify.dumpdevice.layouts import (
        KernelDebugError,
        cached_layouts,
        check_debug_matches,
        find_kernel_debug,
    )

    if isinstance(kernel_debug, Layouts):
        return DumpDeviceExplainer(
            state, images, layouts=kernel_debug, symbol=symbol, dump_thread=dump_thread
        )
    layouts = None
    reason = ""
    debug = kernel_debug or find_kernel_debug(kernel) or kernel
    if debug is None:
        reason = "no kernel or kernel.debug given"
    else:
        try:
            match = check_debug_matches(kernel, debug) if kernel and str(debug) != str(kernel) else "kernel"
            layouts = cached_layouts(debug, NEEDED_STRUCTS, cu_hints=CU_HINTS)
            layouts.source += f" ({match})"
        except KernelDebugError as exc:
            reason = str(exc)
    return DumpDeviceExplainer(
        state, images, layouts=layouts, symbol=symbol, no_dwarf_reason=reason, dump_thread=dump_thread
    )

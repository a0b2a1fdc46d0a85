"""The in-guest witness step: before the dump, read a sample of kernel pages from the guest's own shell
through ``/dev/kmem`` and ``/dev/mem``; after the verification, compare them with the dump and with the
hypervisor's images (`harness.verify.witness`), as a cross-check of its own in every dump's report.

The physical address of each page (what ``/dev/mem`` is read at) comes from the kernel's page tables
read by the hypervisor while the guest runs: ``KPML4phys`` (the kernel pmap's root, found through the
tables CR3 points at) walked with physical reads, never from fixed addresses. Where the guest has no
shell (a bare kernel) or there is no kernel file, the witness does not run and the report says why.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from harness.run.boot import Booted
from harness.run.context import RunContext
from harness.verify import witness as w
from harness.verify.symbols import KernelSymbols

#: the kernel pmap's root, a variable of amd64 FreeBSD kernels
ROOT_SYMBOL = "KPML4phys"
#: how often CR3 is sampled until its tables map ROOT_SYMBOL
CR3_SAMPLES = 5


def read_in_guest(ctx: RunContext, booted: Booted, count: int = w.DEFAULT_PAGES) -> w.WitnessResult:
    """Run the witness in the guest's shell (never raises for what the guest answers: that is evidence)."""
    if booted.shell is None:
        return w.WitnessResult(False, "the guest has no shell (a bare kernel boot): /dev/kmem cannot be read")
    if booted.kernel is None:
        return w.WitnessResult(False, "no kernel file to find read-only pages and KPML4phys in")
    ctx.enter("in-guest witness")
    t = time.monotonic()
    try:
        symbols = KernelSymbols.from_elf(booted.kernel)
        pages = w.choose_pages(booted.kernel, count, symbols.describe)
        translation = _place(booted.guest, symbols, pages)
    except (w.WitnessError, OSError, ValueError) as exc:
        return w.WitnessResult(False, f"pages could not be chosen or placed: {exc}")
    with ctx.timed("witness"):
        reads = []
        for page in pages:
            reads.append(w.read_page(lambda c: booted.shell.run(c, 60.0), "/dev/kmem", page))
            if page.pa is not None:
                reads.append(w.read_page(lambda c: booted.shell.run(c, 60.0), "/dev/mem", page))
    result = w.WitnessResult(True, reads=reads, translation=translation, seconds=time.monotonic() - t)
    bad = [r for r in reads if r.error]
    ctx.progress(
        f"in-guest witness: {len(reads)} page reads in {result.seconds:.1f}s"
        + (f", {len(bad)} failed (first: {bad[0].error})" if bad else "")
    )
    return result


def _place(guest: Any, symbols: KernelSymbols, pages: list[w.WitnessPage]) -> str:
    """Each page's PA through the kernel pmap (``KPML4phys``), read by the hypervisor; says how."""
    from harness.run.verify import _cr3

    root_va = symbols.address(ROOT_SYMBOL)
    if root_va is None:
        raise w.WitnessError(f"the kernel's symbol table has no {ROOT_SYMBOL}")
    seen = []
    for _ in range(CR3_SAMPLES):
        # CR3 is sampled while the guest runs: with PTI a CPU in user mode runs on the user page table,
        # which does not map kernel data; the idle loop and the kernel half of every process do
        cr3 = _cr3(guest)
        root_pa = w.translate(guest.read_phys, cr3, root_va) if cr3 is not None else None
        if root_pa is not None:
            break
        seen.append(f"{cr3:#x}" if cr3 is not None else "none")
        time.sleep(0.2)
    else:
        raise w.WitnessError(
            f"{ROOT_SYMBOL} (va {root_va:#x}) is not mapped by the tables at CR3 ({', '.join(seen)})"
        )
    root = int.from_bytes(guest.read_phys(root_pa, 8), "little")
    for page in pages:
        with contextlib.suppress(OSError, ValueError):
            page.pa = w.translate(guest.read_phys, root, page.va)
    return f"{ROOT_SYMBOL} = {root:#x} (read at pa {root_pa:#x} via CR3 {cr3:#x}), walked by the hypervisor"


def judge_into(
    ctx: RunContext, report: Any, result: w.WitnessResult | None, vm: Any, crash: Any, live: Any
) -> None:
    """Add the witness's cross-checks, section and summary line to `report` (the verdict follows them):
    the open dump `vm` (the one just verified), and the hypervisor's images of this dump (before it, if
    taken, and after)."""
    if result is None:
        return
    images = {"hypervisor image after the dump": live.image}
    if crash.before is not None:
        images = {"hypervisor image before the dump": crash.before, **images}
    ctx.enter("in-guest witness (compare)")
    checks, section, line = w.judge(result, vm, images)
    report.crosschecks.extend(checks)
    report.witness = section
    ctx.progress(line)
    report.decide()

"""Enter: choose the dump flow for this kernel and trigger, and take the kernel to where it dumps from.

Two flows (`FLOWS`): with a ddb backend, enter ddb by the trigger and note what ddb prints for the
cross-checks (`show registers`, `x` of `DDB_SYMBOL_CHECKS`); without one (release GENERIC), arm the
panic (no reboot countdown to race, the ALT panic sequence enabled) - the kernel dumps by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.freebsd.enter import enter_ddb
from harness.freebsd.kernel import KernelFacts, kernel_facts
from harness.freebsd.panicdump import DumpFlow, FlowChoice, PanicMethod, select_flow
from harness.freebsd.stages import TAIL_WINDOW
from harness.run.boot import Booted
from harness.run.context import RunContext

#: Symbols ddb prints before the dump, checked against the reader: (symbol, ddb format, size).
DDB_SYMBOL_CHECKS = [("KPML4phys", "gx", 8), ("hz", "lx", 4)]


@dataclass
class Entered:
    """The kernel at the point it dumps from: the flow, and what ddb printed (ddb flow)."""

    choice: FlowChoice
    ddb: Any = None  # harness.freebsd.ddb.Ddb (ddb flow): still active after `dump`
    registers: dict[str, int] | None = None
    values: dict[str, tuple[int, int]] = field(default_factory=dict)


def kernel_facts_with_shell(console: Any, shell: Any) -> KernelFacts | None:
    """The boot banner's `KernelFacts`; with a shell, the debugger backends from ``sysctl -n
    debug.kdb.available`` instead (exact, and independent of how much console text scrolled by since
    the banner). None without a shell: `select_flow` reads the banner itself."""
    if shell is None:
        return None
    facts = kernel_facts(console.tail(TAIL_WINDOW))
    r = shell.run("sysctl -n debug.kdb.available")
    if r.status == 0:
        backends = tuple(r.output.split())
        facts = dataclasses.replace(
            facts, backends=backends, current_backend=facts.current_backend if backends else None
        )
    return facts


def choose_flow(ctx: RunContext, booted: Booted) -> FlowChoice:
    ctx.enter("dump flow")
    source = booted.source
    choice = select_flow(
        booted.guest.console,
        ctx.cfg.trigger.replace("-", "_"),
        shell=booted.shell,
        kenv=source.kenv if source is not None else None,
        facts=booted.facts or kernel_facts_with_shell(booted.guest.console, booted.shell),
        force=ctx.cfg.flow,
    )
    ctx.progress(choice.describe())
    return choice


def enter_ddb_flow(ctx: RunContext, booted: Booted, choice: FlowChoice) -> Entered:
    ctx.enter("ddb")
    with ctx.timed("ddb"):
        t = time.monotonic()
        entry = enter_ddb(
            booted.guest.console,
            choice.trigger,
            guest=booted.guest,
            shell=booted.shell,
            memory_mib=ctx.cfg.memory_mib,
        )
        ddb = entry.ddb
        ctx.progress(f"in ddb via {choice.trigger.value} after {time.monotonic() - t:.1f}s")
        registers = ddb.show_registers()
        values: dict[str, tuple[int, int]] = {}
        for sym, fmt, size in DDB_SYMBOL_CHECKS:
            with contextlib.suppress(Exception):
                values[sym] = (ddb.x(sym, fmt)[0], size)
    return Entered(choice, ddb, registers, values)


def arm_panic_flow(ctx: RunContext, booted: Booted, choice: FlowChoice) -> Entered:
    ctx.enter("panic dump")
    if booted.shell is not None:
        # no countdown to race (a tunable for bare kernels, writable at run time on 12.x and later)
        booted.shell.run("sysctl kern.panic_reboot_wait_time=-1")
        if PanicMethod.ALT_PANIC in (choice.method, choice.fallback):
            booted.shell.run("sysctl debug.kdb.alt_break_to_debugger=1")
    return Entered(choice)


#: the dump flow -> how the kernel is taken to where it dumps from
FLOWS: dict[DumpFlow, Callable[[RunContext, Booted, FlowChoice], Entered]] = {
    DumpFlow.DDB: enter_ddb_flow,
    DumpFlow.PANIC: arm_panic_flow,
}


def enter(ctx: RunContext, booted: Booted, choice: FlowChoice) -> Entered:
    return FLOWS[choice.flow](ctx, booted, choice)

"""Dump twice in one boot: a minidump, then a full dump, both verified against live memory.

Two ways to switch minidumps off between the dumps (`toggle_variant`, ``--dump-twice-via``):

* ``ddb``: in the same ddb session, ``write/l do_minidump 0`` and ``dump`` again (any kernel with ddb and
  the ``do_minidump`` symbol, also a bare kernel);
* ``sysctl``: what a user does on a guest with a shell: ``c`` back to the shell the first trigger
  interrupted, ``sysctl debug.minidump=0``, ``sysctl debug.kdb.enter=1``, ``dump``. The host has taken the
  first dump off the dump disk before (the second overwrites it); the kernel ran in between, so the second
  dump gets a before image of its own, taken in ddb right before it.

``auto`` (the default) takes the shell way where the guest has a shell, else the ddb way.

In the ddb way both dumps are verified against live memory: the first against the images right
before and right after it, the second against the image right after it, with the first dump's after
image as its before image (nothing but ddb's own write ran in between: every CPU stayed stopped).
Only the ddb flow can do this (a kernel without ddb dumps once, on its panic), and only a kernel whose
symbol table has ``do_minidump``: both are checked before the first dump, and the run stops with one
line if either is missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from harness.freebsd.enter import DdbRoute
from harness.freebsd.panicdump import DumpFlow, FlowChoice
from harness.run.boot import Booted
from harness.run.config import ReproUnsupported
from harness.run.context import RunContext
from harness.run.dump import Crash, run_ddb_dump
from harness.run.enter import enter_ddb_flow
from harness.run.verify import LiveAfter
from harness.verify.symbols import KernelSymbols, KernelSymbolsError

MINIDUMP_SWITCH = "do_minidump"
#: the sysctl that switches minidumps off at run time (the toggle the shell way)
MINIDUMP_SYSCTL = "debug.minidump"
VARIANTS = ("auto", "ddb", "sysctl")


def toggle_variant(ctx: RunContext, booted: Booted) -> str:
    """"ddb" or "sysctl": the configured way, or for "auto" the shell way where there is a shell."""
    via = getattr(ctx.cfg, "dump_twice_via", "auto") or "auto"
    if via not in VARIANTS:
        raise ReproUnsupported(
            f"--dump-twice-via {via!r}: expected one of {', '.join(VARIANTS)}", step=ctx.step
        )
    if via == "auto":
        return "sysctl" if booted.shell is not None else "ddb"
    if via == "sysctl" and booted.shell is None:
        raise ReproUnsupported(
            "--dump-twice-via sysctl needs a shell on the guest (an image, or --kernel with --root-image): "
            "a bare kernel boot has none",
            step=ctx.step,
            evidence=ctx.dir,
        )
    return via


def check_can_dump_twice(ctx: RunContext, booted: Booted, choice: FlowChoice) -> None:
    """Refuse (one line, before any dump) a run that cannot switch minidumps off between its dumps."""
    via = toggle_variant(ctx, booted)
    ctx.progress(f"dump twice: minidumps switched off by {_describe(via)}")
    if choice.flow != DumpFlow.DDB:
        raise ReproUnsupported(
            f"--dump-twice needs ddb (`write/l {MINIDUMP_SWITCH} 0` between the dumps), but this run takes "
            f"the {choice.flow.value} flow ({choice.why})",
            step=ctx.step,
            evidence=ctx.dir,
        )
    if via == "sysctl":
        return  # every kernel has debug.minidump; no symbol needed
    if booted.kernel is None:
        raise ReproUnsupported(
            f"--dump-twice needs the kernel file to find {MINIDUMP_SWITCH} in its symbol table, and there is "
            f"none ({booted.kernel_source or 'no kernel'})",
            step=ctx.step,
            evidence=ctx.dir,
        )
    if minidump_switch_address(booted.kernel) is None:
        raise ReproUnsupported(
            f"kernel {booted.kernel} has no symbol {MINIDUMP_SWITCH}: ddb cannot switch minidumps off, so "
            "there is no second (full) dump to make",
            step=ctx.step,
            evidence=ctx.dir,
        )


def minidump_switch_address(kernel: Path) -> int | None:
    """``do_minidump``'s address in `kernel`'s symbol table (None: no such symbol)."""
    try:
        return KernelSymbols.from_elf(kernel).address(MINIDUMP_SWITCH)
    except KernelSymbolsError as exc:
        raise ReproUnsupported(
            f"kernel {kernel}: no symbol table to find {MINIDUMP_SWITCH} in: {exc}", step="dump twice"
        ) from exc


def _describe(via: str) -> str:
    if via == "sysctl":
        return f"the shell: `c`, `sysctl {MINIDUMP_SYSCTL}=0`, `sysctl debug.kdb.enter=1`, `dump`"
    return f"ddb: `write/l {MINIDUMP_SWITCH} 0` in the same session"


def dump_again_full(ctx: RunContext, booted: Booted, first: Crash, first_live: LiveAfter) -> Crash:
    """The second (full) dump, the way `toggle_variant` chose."""
    if toggle_variant(ctx, booted) == "sysctl":
        return dump_again_full_by_sysctl(ctx, booted, first)
    return dump_again_full_in_ddb(ctx, booted, first, first_live)


def dump_again_full_by_sysctl(ctx: RunContext, booted: Booted, first: Crash) -> Crash:
    """Back to the shell (`c`), ``sysctl debug.minidump=0``, into ddb again by ``sysctl debug.kdb.enter=1``
    and `dump`; a new before image, since the kernel ran between the dumps."""
    ctx.enter("second dump (back to the shell)")
    booted.guest.resume()  # paused for the first extraction; the kernel still sits in ddb
    first.ddb.continue_()
    booted.shell.attach(60.0)
    r = booted.shell.run(f"sysctl {MINIDUMP_SYSCTL}=0", 60.0, check=True)
    said = " / ".join(ln.strip() for ln in r.output.splitlines() if ln.strip())
    ctx.progress(f"shell: sysctl {MINIDUMP_SYSCTL}=0 ({said})")
    choice = dataclasses.replace(first.choice, trigger=DdbRoute.SYSCTL)
    entered = enter_ddb_flow(ctx, booted, choice)
    ctx.enter("live image (before the second dump)")
    before_path = ctx.dir / "live-before-2.raw"
    before = booted.guest.memory_image(before_path)
    ctx.enter("second dump")
    result = run_ddb_dump(ctx, booted, entered.ddb, "second dump")
    note = (
        f"second dump of the boot: after the first ({first.result.kind}) dump, `c` back to the shell, "
        f"`sysctl {MINIDUMP_SYSCTL}=0` ({said}), `sysctl debug.kdb.enter=1`, `dump`; its before image was "
        "taken in ddb right before it"
    )
    return Crash(choice, result, entered.registers, entered.values, before, before_path, entered.ddb, [note])


def dump_again_full_in_ddb(ctx: RunContext, booted: Booted, first: Crash, first_live: LiveAfter) -> Crash:
    """Still in ddb after the first dump (the guest was paused for its extraction): switch minidumps
    off, `dump` again. The first dump's after image is this dump's before image."""
    ctx.enter("second dump")
    booted.guest.resume()  # paused for the first extraction; the kernel still sits in ddb
    was = first.ddb.set_minidump(False)
    ctx.progress(f"ddb: write/l {MINIDUMP_SWITCH} 0 (was {was})")
    result = run_ddb_dump(ctx, booted, first.ddb, "second dump")
    note = (
        f"second dump of the session: `write/l {MINIDUMP_SWITCH} 0` in ddb after the first "
        f"({first.result.kind}) dump; its before image is the first dump's after image"
    )
    before, before_path = first_live.image, first_live.path
    return Crash(first.choice, result, first.registers, first.values, before, before_path, first.ddb, [note])

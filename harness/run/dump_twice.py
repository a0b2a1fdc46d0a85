"""Dump twice in one ddb session: a minidump, then ``write/l do_minidump 0`` and a full dump.

Both dumps are verified against live memory: the first against the images right before and right
after it, the second against the image right after it, with the first dump's after image as its
before image (nothing but ddb's own write ran in between: every CPU stayed stopped). Only the ddb flow
can do this (a kernel without ddb dumps once, on its panic), and only a kernel whose symbol table has
``do_minidump``: both are checked before the first dump, and the run stops with one line if either is
missing.
"""

from __future__ import annotations

from pathlib import Path

from harness.freebsd.panicdump import DumpFlow, FlowChoice
from harness.run.boot import Booted
from harness.run.config import ReproUnsupported
from harness.run.context import RunContext
from harness.run.dump import Crash, disk_writes, incomplete_dump_fails
from harness.run.verify import LiveAfter
from harness.verify.symbols import KernelSymbols, KernelSymbolsError

MINIDUMP_SWITCH = "do_minidump"


def check_can_dump_twice(ctx: RunContext, booted: Booted, choice: FlowChoice) -> None:
    """Refuse (one line, before any dump) a run that cannot switch minidumps off from ddb."""
    if choice.flow != DumpFlow.DDB:
        raise ReproUnsupported(
            f"--dump-twice needs ddb (`write/l {MINIDUMP_SWITCH} 0` between the dumps), but this run takes "
            f"the {choice.flow.value} flow ({choice.why})",
            step=ctx.step,
            evidence=ctx.dir,
        )
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


def dump_again_full(ctx: RunContext, booted: Booted, first: Crash, first_live: LiveAfter) -> Crash:
    """Still in ddb after the first dump (the guest was paused for its extraction): switch minidumps
    off, `dump` again. The first dump's after image is this dump's before image."""
    ctx.enter("second dump")
    booted.guest.resume()  # paused for the first extraction; the kernel still sits in ddb
    was = first.ddb.set_minidump(False)
    ctx.progress(f"ddb: write/l {MINIDUMP_SWITCH} 0 (was {was}); dump")
    with ctx.timed("dump"), incomplete_dump_fails(ctx):
        result = first.ddb.dump(witness=disk_writes(ctx, booted))
    ctx.progress(f"second dump: {result.kind} dump, {result.dump_mb} MB in {result.seconds:.1f}s")
    note = (
        f"second dump of the session: `write/l {MINIDUMP_SWITCH} 0` in ddb after the first "
        f"({first.result.kind}) dump; its before image is the first dump's after image"
    )
    before, before_path = first_live.image, first_live.path
    return Crash(first.choice, result, first.registers, first.values, before, before_path, first.ddb, [note])

"""Dump: a live image right before the dump, then the dump itself, leaving every CPU stopped.

ddb flow: `dump` at the ``db>`` prompt; the kernel stays in ddb. Panic flow: `panic_dump` panics, parses
the dump the kernel writes and holds it at "Press a key on the console to reboot". There is no stop
between the panic and the dump, so the before image is taken right before the trigger (the guest
paused): the dump device's driver state in heap (struct virtqueue, sglist) changes while dumping and
cannot be named from outside, and only this image tells such a page from a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.freebsd.ddb import DumpFailed, dump_disk_witness
from harness.freebsd.panicdump import DumpFlow, FlowChoice, panic_dump
from harness.run.boot import Booted
from harness.run.config import ReproError
from harness.run.context import RunContext
from harness.run.enter import Entered, enter


@dataclass
class Crash:
    """What making the dump left behind: the flow, ddb's values (ddb flow), the before image."""

    choice: FlowChoice
    result: Any  # harness.freebsd.ddb.DumpResult
    registers: dict[str, int] | None = None
    values: dict[str, tuple[int, int]] = field(default_factory=dict)
    before: Any = None
    before_path: Path | None = None
    ddb: Any = None  # harness.freebsd.ddb.Ddb (ddb flow): still active after `dump`
    notes: list[str] = field(default_factory=list)


def run_ddb_dump(ctx: RunContext, booted: Booted, ddb: Any, done: str) -> Any:
    """ddb's `dump`, timed, watched (console and dump-disk writes) and failing as "dump incomplete";
    `done` starts the progress line that gives its kind, size and seconds."""
    ctx.progress("ddb: dump")
    with ctx.timed("dump"), incomplete_dump_fails(ctx):
        result = ddb.dump(witness=disk_writes(ctx, booted))
    ctx.progress(f"{done}: {result.kind} dump, {result.dump_mb} MB in {result.seconds:.1f}s")
    return result


def dump_in_ddb(ctx: RunContext, booted: Booted, entered: Entered) -> Crash:
    ctx.enter("live image (before dump)")
    before_path = ctx.dir / "live-before.raw"
    before = booted.guest.memory_image(before_path)
    ctx.enter("dump")
    result = run_ddb_dump(ctx, booted, entered.ddb, "dump complete")
    return Crash(entered.choice, result, entered.registers, entered.values, before, before_path, entered.ddb)


def dump_on_panic(ctx: RunContext, booted: Booted, entered: Entered) -> Crash:
    choice = entered.choice
    before = before_path = None
    if ctx.cfg.panic_before_image:
        ctx.enter("live image (before the panic trigger)")
        before_path = ctx.dir / "live-before.raw"
        before = booted.guest.memory_image(before_path)  # paused for the copy, running again afterwards
        ctx.enter("panic dump")
    ctx.progress(f"panic flow: panicking via {choice.method.value}; the kernel writes its own dump")
    with ctx.timed("dump"), incomplete_dump_fails(ctx):
        result = panic_dump(
            booted.guest.console, choice, guest=booted.guest, shell=booted.shell,
            memory_mib=ctx.cfg.memory_mib, witness=disk_writes(ctx, booted),
        )
    ctx.progress(
        f"dump complete: {result.kind} dump, {result.dump_mb} MB in {result.seconds:.1f}s; kernel held "
        f"at 'Press a key' (panic: {result.panic})"
    )
    notes = _panic_notes(choice, result, before)
    return Crash(choice, result, before=before, before_path=before_path, notes=notes)


@contextmanager
def incomplete_dump_fails(ctx: RunContext) -> Iterator[None]:
    """A dump that did not complete (partition too small, an I/O error, the guest hung, reset or died
    mid-dump) fails the step as "dump incomplete": there is nothing whole to verify. The console tail
    that shows it is kept in the run directory (`evidence.collect_on_failure`)."""
    try:
        yield
    except DumpFailed as exc:
        first = str(exc).splitlines()[0]
        raise ReproError(f"dump incomplete: {first}", step=ctx.step, evidence=ctx.dir, tail=exc.tail) from exc


def disk_writes(ctx: RunContext, booted: Booted):
    """What changes while the guest writes its dump disk, for the hang rule (`DUMP_HANG_SECONDS`). None
    - only the console's silence counts - without a dump disk on this host to watch (a remote libvirt's
    QEMU writes its own copy) and for compressed dumps (the kernel may compress zero-filled memory for
    a long while between two writes)."""
    source = booted.source
    if source is None or not getattr(booted.guest, "local", True) or ctx.cfg.compression != "none":
        return None
    return dump_disk_witness(source.dump_disk)


def _panic_notes(choice: FlowChoice, result: Any, before: Any) -> list[str]:
    where = (
        "the before image was taken right before the panic trigger (there is no stop between the panic "
        "and the dump)"
        if before is not None
        else "no live image before the dump"
    )
    return [
        f"panic flow ({choice.why}): the kernel wrote its own dump on panic; no ddb cross-checks (no "
        f"ddb); the panic flow's expected-volatile kinds apply; {where}",
        *[n for n in (result.notes or []) if n],
    ]


#: the dump flow -> how the dump is made once the kernel is there
DUMPS: dict[DumpFlow, Callable[[RunContext, Booted, Entered], Crash]] = {
    DumpFlow.DDB: dump_in_ddb,
    DumpFlow.PANIC: dump_on_panic,
}


def dump(ctx: RunContext, booted: Booted, entered: Entered) -> Crash:
    return DUMPS[entered.choice.flow](ctx, booted, entered)


def enter_and_dump(ctx: RunContext, booted: Booted, choice: FlowChoice) -> Crash:
    """The enter and dump steps together (what a run does between the boot and the after image)."""
    return dump(ctx, booted, enter(ctx, booted, choice))

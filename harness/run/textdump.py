"""``repro --textdump``: the steps of a run that makes a textdump instead of a memory dump.

    boot -> enter ddb -> show msgbuf/panic, textdump set, capture on, commands, textdump dump
         -> retrieve (textdump.tar.N) -> check the members against the console -> evidence

A textdump has no memory pages, so there is no live image and no page comparison: the verdict is the
member checks of `harness.verify.textdump_checks` (ddb.txt, msgbuf.txt, panic.txt, version.txt, the
dump header), each with its evidence, in report.json and the summary. Only ddb is needed (no shell),
so a bare kernel can do it; a kernel without ddb cannot (nothing can ask it for a textdump by hand).
"""

from __future__ import annotations

from typing import Any

from harness.freebsd.panicdump import DumpFlow, FlowChoice
from harness.freebsd.stages import TAIL_WINDOW
from harness.freebsd.textdump import make_textdump
from harness.run import evidence
from harness.run.boot import Booted
from harness.run.config import ReproOutcome, ReproUnsupported
from harness.run.context import RunContext
from harness.run.dump import Crash, disk_writes, incomplete_dump_fails
from harness.run.enter import enter
from harness.run.rundir import save_text
from harness.run.verify import RETRIEVAL_LABELS, LiveAfter
from harness.verify.textdump_checks import judge_textdump, kernel_version

#: the run directory's copies of the console text ddb.txt must equal and of `show msgbuf`
CONSOLE_EVIDENCE = "textdump-console.txt"
MSGBUF_EVIDENCE = "textdump-show-msgbuf.txt"


def textdump_steps(
    ctx: RunContext, guest: Any, booted: Booted, choice: FlowChoice, fetch: Any
) -> ReproOutcome:
    """Make, retrieve and check one textdump (the guest already booted, the flow chosen)."""
    if choice.flow != DumpFlow.DDB:
        raise ReproUnsupported(
            f"--textdump is made in ddb (capture on, textdump dump), but this run takes the "
            f"{choice.flow.value} flow ({choice.why})",
            step=ctx.step,
            evidence=ctx.dir,
        )
    entered = enter(ctx, booted, choice)
    ctx.enter("textdump")
    ctx.progress("ddb: show msgbuf, show panic, textdump set, capture on, ..., textdump dump")
    with ctx.timed("dump"), incomplete_dump_fails(ctx):
        session = make_textdump(entered.ddb, witness=disk_writes(ctx, booted))
    ctx.progress(f"textdump complete in {session.result.seconds:.1f}s")
    # what the members are checked against, kept beside the report for a person to diff
    save_text(ctx.dir / CONSOLE_EVIDENCE, session.console_captured)
    save_text(ctx.dir / MSGBUF_EVIDENCE, session.show_msgbuf)
    crash = Crash(choice, session.result, entered.registers, entered.values, ddb=entered.ddb)
    got = fetch.retrieve(ctx, booted, crash)
    report = check_retrieved(ctx, booted, session, got)
    live = LiveAfter(image=None, path=ctx.dir / "live-after.raw")
    return evidence.conclude(ctx, guest, [evidence.Judged(report, crash, live, got)])


def check_retrieved(ctx: RunContext, booted: Booted, session: Any, got: Any):
    """Open the retrieved textdump (and the dump disk's header, when the host has the disk) and judge it."""
    from reader.errors import ReaderError
    from reader.textdump import open_textdump

    ctx.enter("verify")
    with ctx.timed("verify"):
        td = open_textdump(got.vmcore)
        header = td.header
        disk = getattr(booted.source, "dump_disk", None)
        notes: list[str] = []
        if header is None and disk is not None and disk.exists():
            try:
                on_disk = open_textdump(disk)
            except ReaderError as exc:
                notes.append(f"dump disk {disk}: no textdump header read ({exc})")
            else:
                header = on_disk.header
                if on_disk.members != td.members:
                    notes.append(f"the retrieved {got.vmcore.name} differs from the textdump on {disk}")
        banner = booted.guest.console.tail(TAIL_WINDOW) if hasattr(booted.guest.console, "tail") else ""
        version, version_source = kernel_version(got.kernel or booted.kernel, banner)
        report = judge_textdump(td.members, header, session, version, version_source)
    report.flow = DumpFlow.DDB.value
    report.dump = str(got.vmcore)
    report.kernel = str(got.kernel or booted.kernel or "")
    report.kernel_source = got.kernel_source or booted.kernel_source or "none"
    report.retrieval = RETRIEVAL_LABELS.get(ctx.cfg.retrieve, ctx.cfg.retrieve)
    report.timings = ctx.timings
    report.notes.extend(got.notes)
    report.notes.extend(notes)
    report.notes.append(
        f"the console text ddb.txt is checked against: {CONSOLE_EVIDENCE}; `show msgbuf` before it: "
        f"{MSGBUF_EVIDENCE}"
    )
    report.notes.append(
        "textdump made in ddb: `textdump dump` after capturing "
        f"{', '.join(session.commands)}; no memory pages to verify, so the verdict is its member checks"
    )
    return report

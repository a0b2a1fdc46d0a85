"""`run_repro`: one run, step by step (the order is the whole point of this module).

    source -> boot -> enter -> dump -> capture live memory -> retrieve -> verify -> evidence

(or, with ``cfg.saved_boot``, restore a saved booted guest instead of source and boot).

Any failure becomes a `ReproError` naming the step it happened in and the run directory that holds
the evidence; a passing or failing verification is an outcome, not an error.
"""

from __future__ import annotations

import json

from harness.run import boot, dump, dump_twice, enter, evidence, saved_boot, verify, witness
from harness.run.boot import Booted
from harness.run.config import Progress, ReproConfig, ReproError, ReproOutcome
from harness.run.context import RunContext
from harness.run.kernel_check import check_kernel_file
from harness.run.retrieve import retrieval
from harness.run.rundir import make_dump_disk, make_private, new_run_dir
from harness.run.sources import GuestSource, build_source
from harness.run.textdump import textdump_steps


def run_repro(cfg: ReproConfig, progress: Progress = print) -> ReproOutcome:
    """Run the whole chain once; raise `ReproError` (one clear line + evidence dir) on a failed step."""
    if cfg.dump_twice and (cfg.retrieve != "disk" or not cfg.minidump):
        raise ReproError(
            "dumping twice makes a minidump, then a full dump, both read from the dump disk: it needs "
            "minidumps on and --retrieve disk",
            step="setup",
        )
    if cfg.textdump and cfg.dump_twice:
        raise ReproError(
            "a textdump is made and checked on its own: it does not go with dumping twice", step="setup"
        )
    if cfg.kernel is not None:
        check_kernel_file(cfg.kernel, force=cfg.force_kernel)
    kind = "text" if cfg.textdump else "mini" if cfg.minidump else "full"
    run_dir = new_run_dir(cfg.artifacts, f"repro-{kind}-{cfg.trigger}")
    ctx = RunContext(cfg, run_dir, progress)
    _write_config(ctx)
    try:
        if cfg.saved_boot is not None:
            with saved_boot.restored(ctx) as (guest, booted):
                return _run_guest(ctx, guest, booted.source, booted)
        dump_disk = make_dump_disk(run_dir / "dump-disk.raw", cfg.memory_mib, cfg.dump_disk_mib)
        source = build_source(ctx, dump_disk)
        with boot.started(ctx, source) as guest:
            return _run_guest(ctx, guest, source)
    except ReproError:
        make_private(run_dir)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line + evidence
        make_private(run_dir)
        raise ReproError(f"{type(exc).__name__}: {exc}", step=ctx.step, evidence=run_dir) from exc


def _run_guest(ctx: RunContext, guest, source: GuestSource, booted: Booted | None = None) -> ReproOutcome:
    try:
        return _steps(ctx, guest, source, booted)
    except Exception as exc:
        evidence.keep_boot_iso(source.spec, ctx.dir)
        evidence.collect_on_failure(guest, ctx.dir, exc)
        raise


def _steps(ctx: RunContext, guest, source: GuestSource, booted: Booted | None = None) -> ReproOutcome:
    """The steps after the guest started; `booted`: already booted (restored from a saved boot)."""
    fetch = retrieval(ctx.cfg.retrieve)
    booted = booted or boot.boot(ctx, guest, source)
    fetch.before_dump(ctx, booted)
    choice = enter.choose_flow(ctx, booted)
    if ctx.cfg.textdump:
        return textdump_steps(ctx, guest, booted, choice, fetch)
    if ctx.cfg.dump_twice:
        dump_twice.check_can_dump_twice(ctx, booted, choice)
    seen = witness.read_in_guest(ctx, booted)
    crash = dump.enter_and_dump(ctx, booted, choice)
    live = verify.capture_live(ctx, booted, crash)
    got = fetch.retrieve(ctx, booted, crash)
    judged = [_judge(ctx, crash, live, got, seen=seen)]
    if ctx.cfg.dump_twice:
        second = dump_twice.dump_again_full(ctx, booted, crash, live)
        live2 = verify.capture_live(ctx, booted, second, name="live-after-2.raw")
        got2 = fetch.retrieve(ctx, booted, second, outdir="crash-2")
        judged.append(_judge(ctx, second, live2, got2, "report-2.json", seen=seen))
    return evidence.conclude(ctx, guest, judged)


def _judge(
    ctx: RunContext, crash, live, got, report_name: str = "report.json", *, seen=None
) -> evidence.Judged:
    with verify.opened_dump(ctx, got.vmcore, got.kernel) as vm:
        report = verify.judge(ctx, crash, live, vm, got.vmcore, got.kernel, got.kernel_source, got.header)
        report.notes.extend(got.notes)
        witness.judge_into(ctx, report, seen, vm, crash, live)
    return evidence.Judged(report, crash, live, got, report_name)


def _write_config(ctx: RunContext) -> None:
    config = {k: str(v) if hasattr(v, "__fspath__") else v for k, v in ctx.cfg.__dict__.items()}
    (ctx.dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

"""``--retrieve savecore``: the guest's own savecore onto a UFS2 crash disk, read on the host; no SSH.

For a kernel with a single-user root image (no network, no sshd): the source gives the guest a second,
empty disk (``crash-disk.raw``, /dev/vtbd1) and lets the domain restart on reboot. Before the dump the
guest runs ``newfs`` on it. After the dump the host first extracts the dump from the dump disk itself
(the guest paused), then leaves ddb with ``reset`` (panic flow: the key ``cngetc()`` waits for), takes
the single-user shell of the new boot, mounts the crash disk on /var/crash, runs ``savecore -v`` and
unmounts it (`harness.freebsd.savecore_disk`). The host then reads ``vmcore.N`` / ``info.N`` from the
crash disk image with `harness.freebsd.ufs` (no mount, no root), checks it holds the same payload as its
own extraction and verifies that copy. The live images were taken before the reboot, as the notes say.
"""

from __future__ import annotations

from harness.freebsd.savecore_disk import prepare_crash_disk, save_onto_crash_disk
from harness.freebsd.session import ConsoleShell
from harness.freebsd.stages import Stage
from harness.freebsd.ufs import copy_savecore_output
from harness.run.boot import Booted
from harness.run.config import ReproError, ReproUnsupported
from harness.run.context import RunContext
from harness.run.dump import Crash
from harness.run.retrieve.after_reboot import compare_with_host, reboot_after_dump
from harness.run.retrieve.base import Retrieved
from harness.run.retrieve.dump_disk import retrieve as retrieve_from_dump_disk

#: the guest reboots for savecore (the domain restarts)
REBOOTS = True
CRASH_DEV = "/dev/vtbd1"


def before_dump(ctx: RunContext, booted: Booted) -> None:
    source = booted.source
    if booted.shell is None or source is None or not source.single_user or source.crash_disk is None:
        raise ReproError(
            "--retrieve savecore needs --kernel with --root-image (a single-user shell and a crash disk)",
            step="savecore",
        )
    ctx.enter("newfs crash disk")
    tools = booted.shell.run("command -v newfs && command -v savecore", 60.0)
    if tools.status != 0:
        raise ReproUnsupported(
            f"the root image {ctx.cfg.root_image} has no newfs/savecore on the shell's PATH "
            f"({tools.output.strip() or 'command -v found nothing'}): --retrieve savecore cannot run on it",
            step=ctx.step,
            evidence=ctx.dir,
        )
    prepare_crash_disk(booted.shell, CRASH_DEV)
    ctx.progress(f"crash disk {CRASH_DEV} ({source.crash_disk}) made a UFS2 file system for savecore")


def retrieve(ctx: RunContext, booted: Booted, crash: Crash, *, outdir: str = "crash") -> Retrieved:
    host_copy = retrieve_from_dump_disk(ctx, booted, crash, outdir=outdir)
    ctx.enter("savecore")
    with ctx.timed("extract"):
        _reboot_to_single_user(ctx, booted, crash)
        run = save_onto_crash_disk(booted.shell, booted.source.dump_dev, CRASH_DEV)
        ctx.progress(f"savecore wrote vmcore.{run.number} (Dump Status: {run.status}) onto {CRASH_DEV}")
        booted.guest.pause()  # the disk is unmounted; nothing may change it while the host reads it
        ctx.enter("read crash disk")
        out = ctx.dir / f"{outdir}-savecore"
        out.mkdir(mode=0o700)
        got = copy_savecore_output(booted.source.crash_disk, out, "/", number=run.number)
    notes = [
        "retrieved by the guest's savecore onto a UFS2 crash disk, read on the host without mounting it; "
        "verified against the live image taken before the reboot",
        compare_with_host(ctx, got.vmcore, host_copy.vmcore, step="savecore"),
    ]
    evidence = {"vmcore": str(got.vmcore), "vmcore_host": str(host_copy.vmcore)}
    if got.info is not None:
        evidence["info"] = str(got.info)
    return Retrieved(got.vmcore, booted.kernel, booted.kernel_source, notes, evidence)


def _reboot_to_single_user(ctx: RunContext, booted: Booted, crash: Crash) -> None:
    reboot_after_dump(ctx, booted, crash, Stage.SINGLE_USER, "single-user for savecore")
    booted.shell = ConsoleShell(booted.guest.console)
    booted.shell.single_user(60.0)



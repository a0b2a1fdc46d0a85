"""The dump read on the host straight from the raw dump disk (savecore semantics, the guest paused):
needs no guest userland, so early-boot and bare-kernel dumps are retrievable."""

from __future__ import annotations

from harness.freebsd.retrieve import from_dump_disk
from harness.run.boot import Booted
from harness.run.context import RunContext
from harness.run.dump import Crash
from harness.run.retrieve.base import Retrieved

#: the guest does not need to reboot for this retrieval
REBOOTS = False


def before_dump(ctx: RunContext, booted: Booted) -> None:
    """Nothing to note: the dump disk is read as a whole."""


def retrieve(ctx: RunContext, booted: Booted, crash: Crash, *, outdir: str = "crash") -> Retrieved:
    ctx.enter("extract")
    with ctx.timed("extract"):
        disk = booted.source.dump_disk
        swap = booted.source.swap_partition
        got = from_dump_disk(
            disk, ctx.dir / outdir, guest=booted.guest, kernel=booted.kernel,
            partition=swap.index if swap else None,
        )
    size = got.sizes.get("vmcore", 0)
    if got.compression != "none":
        what = f"{got.compression}-compressed by the kernel, {size} bytes"
        ctx.progress(f"extracted {got.vmcore} ({what}): {got.placement}")
    else:
        ctx.progress(f"extracted {got.vmcore} ({size >> 20} MiB): {got.placement}")
    notes = [f"dump device {swap.describe()}; dump found at its end: {got.placement}"] if swap else []
    evidence = {"vmcore": str(got.vmcore)}
    return Retrieved(
        got.vmcore, booted.kernel, booted.kernel_source, notes=notes, evidence=evidence, header=got.header
    )

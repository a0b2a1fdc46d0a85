"""``--retrieve ssh``: the FreeBSD way. Leave ddb with `reset` (panic flow: the key `cngetc()` waits
for), let the guest reboot, let rc's savecore copy the dump to /var/crash (or run it), fetch it over
SFTP.

The host extracts the same dump from the dump disk first, while the guest is still paused; the
savecore copy must hold the same payload bytes, and that is checked. Verification can only use the
live image taken before the reboot (the rebooted guest's memory is another boot), which the notes say.
"""

from __future__ import annotations

import contextlib

from harness.freebsd.retrieve import via_savecore
from harness.freebsd.session import ConsoleShell
from harness.freebsd.stages import Stage
from harness.run.boot import Booted
from harness.run.config import ReproError
from harness.run.context import RunContext
from harness.run.dump import Crash
from harness.run.guest_ssh import DHCP_COMMAND, ssh_session
from harness.run.retrieve.after_reboot import compare_with_host, reboot_after_dump
from harness.run.retrieve.base import Retrieved
from harness.run.retrieve.dump_disk import retrieve as retrieve_from_dump_disk

#: the guest reboots into userland for savecore (its domain must restart, not go away)
REBOOTS = True


def crash_bounds(shell) -> int | None:
    """``bounds - 1`` in /var/crash before the dump (None: no bounds file), for `via_savecore`."""
    r = shell.run("cat /var/crash/bounds 2>/dev/null")
    text = r.output.strip()
    return int(text) - 1 if r.status == 0 and text.isdigit() else None


def before_dump(ctx: RunContext, booted: Booted) -> None:
    if booted.shell is None or booted.source is None or booted.source.prepared is None:
        raise ReproError("--retrieve ssh needs a prepared image (a bare kernel has no userland)", step="ssh")
    booted.bounds_before = crash_bounds(booted.shell)


def retrieve(ctx: RunContext, booted: Booted, crash: Crash) -> Retrieved:
    host_copy = retrieve_from_dump_disk(ctx, booted, crash)
    ctx.enter("savecore + sftp")
    with ctx.timed("extract"):
        _reboot_to_userland(ctx, booted, crash)
        with ssh_session(booted.guest, booted.source.prepared) as ssh:
            got = via_savecore(
                ssh,
                ctx.dir / "savecore",
                dump_device=booted.source.dump_dev,
                previous_bounds=booted.bounds_before,
                fetch_kernel=booted.kernel is None,
            )
    ctx.progress(f"fetched {got.vmcore} by SFTP after savecore")
    notes = [
        "retrieved by savecore + SFTP after a reboot: verified against the live image taken before the "
        "reboot (the guest's memory after the reboot is another boot, so nothing later can be compared)",
        compare_with_host(ctx, got.vmcore, host_copy.vmcore, step="savecore + sftp"),
    ]
    kernel, kernel_source = booted.kernel, booted.kernel_source
    if kernel is None and got.kernel is not None:
        kernel, kernel_source = got.kernel, "fetched by SFTP from the guest after savecore"
    evidence = {"vmcore": str(got.vmcore), "vmcore_host": str(host_copy.vmcore)}
    return Retrieved(got.vmcore, kernel, kernel_source, notes, evidence)


def _reboot_to_userland(ctx: RunContext, booted: Booted, crash: Crash) -> None:
    reboot_after_dump(ctx, booted, crash, Stage.LOGIN, "and savecore runs")
    booted.shell = ConsoleShell(booted.guest.console)
    booted.shell.login(ctx.cfg.boot_seconds)
    with contextlib.suppress(Exception):
        booted.shell.run(DHCP_COMMAND, 60.0)

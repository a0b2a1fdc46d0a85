"""Boot: start the guest of a `GuestSource` and bring it to the state the dump starts from.

A bare kernel: waiting for a root device (or at ``mountroot>``). An image: logged in as root on the
console, the dump configured (`DumpPlan`: dumpon, kind, compression), its kernel file fetched over SSH
for symbols, and the chosen retrieval told the guest is up (savecore notes ``/var/crash/bounds``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.freebsd.dumps import DumpPlan
from harness.freebsd.session import ConsoleShell
from harness.freebsd.stages import TAIL_WINDOW, FreeBSDStageError, Stage, mountroot_failure, wait_for_stage
from harness.run.config import ReproUnsupported
from harness.run.context import RunContext
from harness.run.guest_ssh import fetch_kernel_over_ssh
from harness.run.rundir import save_text
from harness.run.sources.base import GuestSource
from harness.vm.console import CommandFailed
from harness.vm.guest import Guest


@dataclass
class Booted:
    """A guest in the state the dump starts from, and what the boot learnt."""

    guest: Any  # harness.vm.guest.Guest (or a stand-in with its console and controls)
    source: GuestSource | None = None
    shell: Any = None  # harness.freebsd.session.ConsoleShell on an image; None on a bare kernel
    kernel: Path | None = None
    kernel_source: str = ""
    #: savecore retrieval: ``bounds - 1`` in /var/crash before the dump (None: no bounds file)
    bounds_before: int | None = None
    #: the boot banner's facts when the console no longer shows it (a guest restored from a saved boot)
    facts: Any = None  # harness.freebsd.kernel.KernelFacts


@contextmanager
def started(ctx: RunContext, source: GuestSource) -> Iterator[Any]:
    """The running guest; destroyed on the way out unless ``cfg.keep``."""
    ctx.enter("boot")
    guest_cm = Guest(source.spec, ctx.dir, keep=ctx.cfg.keep)
    guest = guest_cm.__enter__()
    try:
        save_text(ctx.dir / "domain.xml", getattr(guest, "domain_xml", ""))
        cfg = ctx.cfg
        ctx.progress(
            f"guest {guest.name} started ({cfg.memory_mib} MiB, {guest.accel}); booting {cfg.source()}"
        )
        yield guest
    finally:
        guest_cm.__exit__(None, None, None)  # destroys the domain unless cfg.keep


def boot(ctx: RunContext, guest: Any, source: GuestSource) -> Booted:
    booted = Booted(guest, source, kernel=source.kernel, kernel_source=source.kernel_source)
    with ctx.timed("boot"):
        if source.userland:
            _login_and_configure(ctx, booted)
        elif source.single_user:
            _single_user_and_configure(ctx, booted)
        else:
            _wait_for_root(ctx, booted)
    return booted


def _wait_for_root(ctx: RunContext, booted: Booted) -> None:
    t = time.monotonic()
    ev = wait_for_stage(
        booted.guest.console,
        [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT],
        ctx.cfg.boot_seconds,
        guest=booted.guest,
        progress=ctx.progress,
    )
    ctx.progress(f"kernel up: {ev.stage.value} after {time.monotonic() - t:.1f}s")


class RootImageNotMounted(FreeBSDStageError):
    """The kernel could not mount the root image and asks ``mountroot>``: nothing more can run."""


def _single_user_and_configure(ctx: RunContext, booted: Booted) -> None:
    """init's single-user shell on the console (no login), the root remounted read-write, the dump
    configured at runtime (`dumpon`, ``debug.minidump``); the kernel for symbols is the user's file."""
    cfg = ctx.cfg
    t = time.monotonic()
    console = booted.guest.console
    ev = wait_for_stage(
        console,
        [Stage.SINGLE_USER, Stage.MOUNTROOT_PROMPT],
        cfg.boot_seconds,
        guest=booted.guest,
        progress=ctx.progress,
    )
    if ev.stage is Stage.MOUNTROOT_PROMPT:
        said = mountroot_failure(console.tail(TAIL_WINDOW)) or "no 'Mounting from ... failed' line"
        raise RootImageNotMounted(
            f"root image {cfg.root_image} did not mount: the kernel is at the mountroot> prompt ({said})",
            tail=console.tail(4096),
        )
    ctx.progress(f"single-user prompt after {time.monotonic() - t:.1f}s")
    booted.shell = ConsoleShell(console)
    booted.shell.single_user(60.0)
    booted.shell.run("mount -u -o rw /", 60.0, check=True)
    plan = DumpPlan(
        minidump=cfg.minidump,
        minidump_via="sysctl",
        trigger=cfg.trigger.replace("-", "_"),
        compression=cfg.compression,
        dump_disk=booted.source.dump_dev,
        device=cfg.device,
        swap_device=booted.source.swap_partition.device if booted.source.swap_partition else None,
    )
    dumpon = plan.dumpon_command()
    for cmd in plan.shell_commands(minimal_userland=True):
        r = booted.shell.run(cmd, 60.0)
        if r.status != 0 and cmd == dumpon and cfg.compression != "none":
            said = " / ".join(ln.strip() for ln in r.output.splitlines() if ln.strip()) or "no output"
            raise ReproUnsupported(
                f"this guest cannot write {cfg.compression}-compressed dumps: `{cmd}` exited "
                f"{r.status} ({said})",
                step=ctx.step,
                evidence=ctx.dir,
            )
        if r.status != 0:
            raise CommandFailed(r, booted.guest.console.tail())
    ctx.progress(f"single-user root shell ready, root read-write, dump configured by {plan.dumpon_command()}")


def _login_and_configure(ctx: RunContext, booted: Booted) -> None:
    cfg = ctx.cfg
    t = time.monotonic()
    booted.shell = ConsoleShell(booted.guest.console)
    booted.shell.login(cfg.boot_seconds)
    ctx.progress(f"logged in on the console after {time.monotonic() - t:.1f}s")
    plan = DumpPlan(
        minidump=cfg.minidump,
        trigger=cfg.trigger.replace("-", "_"),
        compression=cfg.compression,
        dump_disk=booted.source.dump_dev,
    )
    for cmd in plan.shell_commands():
        booted.shell.run(cmd, check=True)
    ctx.enter("kernel over ssh")
    booted.kernel, booted.kernel_source = fetch_kernel_over_ssh(
        booted.guest, booted.shell, booted.source.prepared, ctx.dir, ctx.progress
    )

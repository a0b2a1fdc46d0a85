"""A bare kernel file (a developer's own build) booted from a GRUB ISO with no root file system: the
kernel waits for a root device, a quiet state to enter ddb from."""

from __future__ import annotations

from pathlib import Path

from harness.freebsd.handover import HANDOVER_QEMU_ARGS
from harness.freebsd.panicdump import PANIC_FLOW_KENV
from harness.run.config import ReproConfig
from harness.run.context import RunContext
from harness.run.sources.base import GuestSource
from harness.run.sources.boot_iso import cached_kernel_iso
from harness.vm.domain_xml import ExtraDisk, GuestSpec, IsoBoot
from images.grub_iso import DEFAULT_KENV, NO_ROOT_KENV

#: the dedicated dump disk is the only disk of a bare-kernel guest
DUMP_DEV = "/dev/vtbd0"


def bare_kernel_kenv(cfg: ReproConfig) -> dict[str, str]:
    """The kernel environment of a bare-kernel boot: no root, the dump disk as ``dumpdev``, the dump
    kind, `PANIC_FLOW_KENV` (a kernel without ddb must be able to panic from the console and wait for a
    key after its own dump), then the user's ``--kenv`` (the user wins)."""
    kenv = dict(DEFAULT_KENV) | dict(NO_ROOT_KENV) | {"dumpdev": DUMP_DEV}
    kenv["debug.minidump"] = "1" if cfg.minidump else "0"
    kenv |= PANIC_FLOW_KENV
    kenv |= cfg.kenv
    return kenv


def build(ctx: RunContext, dump_disk: Path) -> GuestSource:
    cfg = ctx.cfg
    assert cfg.kernel is not None
    ctx.enter("grub iso")
    kenv = bare_kernel_kenv(cfg)
    iso, built = cached_kernel_iso(cfg.kernel, kenv)
    ctx.progress(f"{'built' if built else 'reusing'} GRUB ISO for {cfg.kernel}: {iso}")
    spec = GuestSpec(
        memory_mib=cfg.memory_mib,
        vcpus=cfg.vcpus,
        accel=cfg.accel,
        boot=IsoBoot(iso),
        disks=(ExtraDisk(dump_disk),),
        uri=cfg.uri,
        on_reboot="destroy",
        extra_qemu_args=HANDOVER_QEMU_ARGS,  # QEMU logs a triple fault at the hand-over
    )
    return GuestSource(spec, DUMP_DEV, cfg.kernel, f"--kernel {cfg.kernel}", kenv=kenv, dump_disk=dump_disk)

"""A kernel file with a root file system image: GRUB loads the image as the kernel's memory-disk root
(``kfreebsd_module IMG type=mfs_root``, root ``ufs:/dev/md0``) and boots single-user (``-s``), so init(8)
offers a root ``/bin/sh`` on the serial console with no login, no network and no sshd. The image is
copied onto the ISO: the user's file is never written (the kernel writes only to its md0 copy)."""

from __future__ import annotations

from pathlib import Path

from harness.freebsd.handover import HANDOVER_QEMU_ARGS
from harness.freebsd.swap_disk import lay_out_swap_dump_disk
from harness.run.context import RunContext
from harness.run.rundir import make_dump_disk
from harness.run.sources.base import GuestSource
from harness.run.sources.boot_iso import cached_kernel_iso
from harness.vm.domain_xml import ExtraDisk, GuestSpec, IsoBoot
from images.grub_iso import DEFAULT_KENV, MFS_ROOT

#: the dedicated dump disk is the first disk; `dumpon` names it at runtime (no ``dumpdev`` tunable)
DUMP_DEV = "/dev/vtbd0"
#: boot flags: single-user (-s) on the serial console (-h)
BOOT_FLAGS = "-s -h"


def root_image_kenv(cfg) -> dict[str, str]:
    """The kernel environment: the md root, the dump kind (the shell sets it again by sysctl), the
    user's ``--kenv`` last."""
    kenv = dict(DEFAULT_KENV) | {"vfs.root.mountfrom": MFS_ROOT}
    kenv["debug.minidump"] = "1" if cfg.minidump else "0"
    kenv |= cfg.kenv
    return kenv


def build(ctx: RunContext, dump_disk: Path) -> GuestSource:
    cfg = ctx.cfg
    assert cfg.kernel is not None and cfg.root_image is not None
    ctx.enter("grub iso")
    kenv = root_image_kenv(cfg)
    iso, built = cached_kernel_iso(cfg.kernel, kenv, root_image=cfg.root_image, boot_flags=BOOT_FLAGS)
    ctx.progress(
        f"{'built' if built else 'reusing'} GRUB ISO for {cfg.kernel} + root image {cfg.root_image}: {iso}"
    )
    crash_disk = None
    disks = [ExtraDisk(dump_disk)]
    swap = None
    if cfg.device == "swap":  # a GPT on the dump disk; `dumpon` names its freebsd-swap partition
        swap = lay_out_swap_dump_disk(dump_disk, DUMP_DEV, cfg.swap_mib)
        ctx.progress(f"dump device {swap.describe()}")
    if cfg.retrieve == "savecore":  # savecore writes onto a second disk, after a reboot
        crash_disk = make_dump_disk(ctx.dir / "crash-disk.raw", cfg.memory_mib)
        disks.append(ExtraDisk(crash_disk))
    spec = GuestSpec(
        memory_mib=cfg.memory_mib,
        vcpus=cfg.vcpus,
        accel=cfg.accel,
        boot=IsoBoot(iso),
        disks=tuple(disks),
        uri=cfg.uri,
        on_reboot="restart" if crash_disk is not None else "destroy",
        extra_qemu_args=HANDOVER_QEMU_ARGS,
    )
    return GuestSource(
        spec,
        DUMP_DEV if swap is None else swap.device,
        cfg.kernel,
        f"--kernel {cfg.kernel}",
        kenv=kenv,
        dump_disk=dump_disk,
        single_user=True,
        crash_disk=crash_disk,
        swap_partition=swap,
    )

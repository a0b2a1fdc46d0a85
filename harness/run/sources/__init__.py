"""Guest sources: what boots, and what is known about it before it does.

A source turns the run's configuration into a `GuestSource` (the libvirt `GuestSpec`, the dump disk's
name in the guest, a kernel file for symbols if one is known before boot, and whether a userland with
a root shell comes up). Adding a source (say a kernel with a root image) means one module with a
``build(ctx, dump_disk) -> GuestSource`` and one entry in `SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from harness.run.config import ReproUnsupported
from harness.run.context import RunContext
from harness.run.sources import bare_kernel, disk_image, kernel_root_image
from harness.run.sources.base import GuestSource

Build = Callable[[RunContext, Path], GuestSource]

#: `ReproConfig.source_kind()` -> how that source is built
SOURCES: dict[str, Build] = {
    "kernel": bare_kernel.build,  # a kernel file booted from a GRUB ISO, no root file system
    "kernel_root_image": kernel_root_image.build,  # + a root image (md root), single-user shell
    "image": disk_image.build,  # a user's disk image, prepared by images.prepare
    "release": disk_image.build,  # an official release, downloaded, cached and prepared
}


def build_source(ctx: RunContext, dump_disk: Path) -> GuestSource:
    kind = ctx.cfg.source_kind()
    try:
        build = SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown guest source {kind!r} (known: {', '.join(SOURCES)})") from None
    if ctx.cfg.device == "swap" and kind != "kernel_root_image":
        raise ReproUnsupported(
            "dumping onto a swap partition runs `dumpon /dev/vtbdNpM` in a shell and is built for a kernel "
            "with a root image (--root-image) only: a bare kernel has no shell, and the official images' "
            "own freebsd-swap partition (on their system disk) is not used by this pipeline",
            step="setup",
        )
    return build(ctx, dump_disk)


__all__ = ["SOURCES", "GuestSource", "build_source"]

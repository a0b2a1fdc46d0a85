"""A disk image (a user's, or an official release downloaded and cached), *prepared* by
`images.prepare` (loader-time dump device, our SSH key, no ddb scripts; cached after the first time)
and booted on an overlay, the dump disk on the same bus, SSH forwarded. Its kernel file for symbols
is fetched over SSH after the boot (`harness.run.boot`)."""

from __future__ import annotations

from pathlib import Path

import images
from harness.run.context import RunContext
from harness.run.sources.base import GuestSource
from harness.vm.domain_xml import DiskImageBoot, ExtraDisk, GuestSpec, UserNetwork


def build(ctx: RunContext, dump_disk: Path) -> GuestSource:
    cfg = ctx.cfg
    ctx.enter("image")
    what: str | Path = cfg.image if cfg.image is not None else str(cfg.release)
    ctx.progress(f"preparing {what} for the harness (cached after the first time)")
    prepared = images.prepare(what, offline=cfg.offline, accel=cfg.accel, uri=cfg.uri, progress=True)
    spec = GuestSpec(
        memory_mib=cfg.memory_mib,
        vcpus=cfg.vcpus,
        accel=cfg.accel,
        boot=DiskImageBoot(image=Path(prepared.image), format="qcow2", bus=prepared.disk_bus),
        disks=(ExtraDisk(dump_disk, format="raw", bus=prepared.disk_bus),),
        network=UserNetwork(),
        uri=cfg.uri,
        # savecore retrieval reboots the guest and reads /var/crash afterwards
        on_reboot="restart" if cfg.retrieve == "ssh" else "destroy",
    )
    return GuestSource(spec, prepared.dump_device, None, "", prepared=prepared, dump_disk=dump_disk)

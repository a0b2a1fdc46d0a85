"""`GuestSource`: the one thing every guest source hands to the boot step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.freebsd.swap_disk import SwapPartition
from harness.vm.domain_xml import GuestSpec


@dataclass
class GuestSource:
    """What boots and what we know about it before it does."""

    spec: GuestSpec
    dump_dev: str  # the dump disk's name in the guest
    kernel: Path | None  # a kernel file for symbols (bare kernel: the user's; image: fetched after boot)
    kernel_source: str  # where `kernel` came from, for the report
    kenv: dict[str, str] | None = None  # the kernel environment a bare kernel booted with
    prepared: Any = None  # images.PreparedImage for images: our SSH key and the pinned host key
    dump_disk: Path | None = None  # the dump disk's file on the host
    #: a kernel with a root image booted single-user: init's root shell on the console, no login/SSH
    single_user: bool = False
    crash_disk: Path | None = None  # --retrieve savecore: the guest's UFS2 crash disk (/dev/vtbd1)
    #: device swap: the dump disk's freebsd-swap partition the dump goes to (`dump_dev` is its name)
    swap_partition: SwapPartition | None = None

    @property
    def userland(self) -> bool:
        """Whether a login shell comes up (an image) or the kernel waits for a root device (bare)."""
        return self.prepared is not None

    @property
    def has_shell(self) -> bool:
        """Whether a root shell on the console comes up (an image's login, or init's single-user sh)."""
        return self.userland or self.single_user

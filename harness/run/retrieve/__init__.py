"""Retrievals: how the written dump gets from the guest to the host.

A retrieval is a module with ``REBOOTS`` (whether the guest reboots for it), ``before_dump(ctx,
booted)`` (note what it needs while the guest is still up) and ``retrieve(ctx, booted, crash) ->
Retrieved``. Adding one (say savecore onto a UFS2 disk) means one module and one entry in
`RETRIEVALS`.
"""

from __future__ import annotations

from types import ModuleType

from harness.run.retrieve import dump_disk, savecore_sftp, savecore_ufs
from harness.run.retrieve.base import Retrieved

#: ``--retrieve`` value -> retrieval
RETRIEVALS: dict[str, ModuleType] = {
    "disk": dump_disk,  # read the dump disk on the host, the guest paused
    "ssh": savecore_sftp,  # reboot, savecore, SFTP (checked against the host's copy)
    "savecore": savecore_ufs,  # reboot single-user, savecore onto a UFS2 crash disk read on the host
}


def retrieval(name: str) -> ModuleType:
    try:
        return RETRIEVALS[name]
    except KeyError:
        raise ValueError(f"unknown retrieval {name!r} (known: {', '.join(RETRIEVALS)})") from None


__all__ = ["RETRIEVALS", "Retrieved", "retrieval"]

"""A dump disk laid out like a FreeBSD system disk's swap: a GPT with a freebsd-boot and a freebsd-swap
partition, the dump going to the swap partition (``dumpon /dev/vtbd0p2``) instead of the raw disk.

The swap partition starts 1 MiB into the disk and ends at least 1 MiB before the backup table, so a
dump placed at the end of the DISK instead of the end of the PARTITION (FreeBSD 12+: trailer in the
partition's last sector) is found nowhere and fails loudly. The partition is found again by its type
in the table as written (`reader.gpt.find_by_type`), the way a user's disk would be searched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.vm.gpt_disk import LBA, GptPartitionSpec, last_usable_lba, write_gpt
from reader.gpt import find_by_type

FREEBSD_BOOT = "83bd6b9d-7f41-11dc-be0b-001560b84f0f"
FREEBSD_SWAP = "516e7cb5-6ecf-11d6-8ff8-00022d09712b"
#: where the swap partition starts, and the least free space left after it (bytes)
SWAP_START = 1 << 20
TAIL_GAP = 1 << 20


@dataclass(frozen=True)
class SwapPartition:
    """The dump device: a freebsd-swap partition of the dump disk; `device` is GEOM's name in the guest."""

    disk: Path
    index: int
    offset: int
    size: int
    device: str

    def describe(self) -> str:
        return (
            f"{self.device}: GPT partition {self.index} (freebsd-swap) of {self.disk.name}, bytes "
            f"{self.offset:#x}..{self.offset + self.size:#x} ({self.size >> 20} MiB)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"disk": str(self.disk), "index": self.index, "offset": self.offset, "size": self.size,
                "device": self.device}


def swap_fits(disk_bytes: int, swap_mib: int | None) -> int:
    """The swap partition's size in bytes: `swap_mib`, else all the disk leaves (start + tail gap)."""
    room = (last_usable_lba(disk_bytes) + 1) * LBA - SWAP_START - TAIL_GAP
    want = room if swap_mib is None else swap_mib << 20
    if want <= 0 or want > room:
        raise ValueError(
            f"a {swap_mib} MiB swap partition does not fit a {disk_bytes >> 20} MiB dump disk "
            f"(room for {room >> 20} MiB after the 1 MiB start, leaving 1 MiB free at the end)"
        )
    return want


def lay_out_swap_dump_disk(disk: Path, guest_disk: str, swap_mib: int | None = None) -> SwapPartition:
    """Write the GPT onto the new, empty dump disk `disk` (seen as `guest_disk`, e.g. ``/dev/vtbd0``)
    and return its swap partition as found again by type."""
    swap_bytes = swap_fits(disk.stat().st_size, swap_mib)
    first = SWAP_START // LBA
    write_gpt(
        disk,
        [
            GptPartitionSpec(FREEBSD_BOOT, 40, 40 + (512 << 10) // LBA - 1, "gptboot0"),
            GptPartitionSpec(FREEBSD_SWAP, first, first + swap_bytes // LBA - 1, "swap0"),
        ],
    )
    entry = find_by_type(disk, "freebsd-swap")
    return SwapPartition(disk, entry.index, entry.offset, entry.size, f"{guest_disk}p{entry.index}")

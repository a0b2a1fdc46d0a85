"""A named field of the dump device's state and the rule that says which dumped values are legitimate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Values = dict[str, "int | None"]  # image ("before" | "dump" | "after") -> the field's value there
#: returns why the dumped value is legitimate (for the report), or None when it is not
Check = Callable[[Values], "str | None"]

#: virtio-blk request types (virtio spec 5.2.6): IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES
VIRTIO_BLK_TYPES = {0: "read", 1: "write", 4: "flush", 8: "get-id", 11: "discard", 13: "write-zeroes"}
#: status byte: 0 = OK; FreeBSD's vtblk presets -1 (0xff) before queueing, so a dumped in-flight request
#: holds 0xff
STATUS_VALUES = {0: "0 (done, OK)", 0xFF: "0xff (preset by the driver: request in flight)"}
VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT = 1, 2, 4
#: a data segment of one request never exceeds this (FreeBSD MAXPHYS is 128 KiB .. 1 MiB)
MAX_SEGMENT = 1 << 20
SECTOR = 512


def sector_verdict(typ: int, sector: int, capacity: int | None, extent: tuple[int, int] | None) -> str | None:
    """Where a request's sector points: inside the disk, and a dump write inside the dump's extent on it
    (`DumpDeviceState.dump_extent`); None when it cannot be a sector this dump wrote."""
    at = sector * SECTOR
    if sector >= 1 << 41 or (capacity is not None and typ in (0, 1) and at >= capacity):
        return None
    if typ == 1 and extent is not None:
        if not extent[0] <= at < extent[1]:
            return None
        lo, hi = extent
        return f"sector {sector} (disk offset {at:#x}, inside the dump's extent [{lo:#x}, {hi:#x}))"
    return f"sector {sector} (disk offset {at:#x}" + (
        f", inside the {capacity >> 20} MiB disk)" if capacity else ")"
    )


@dataclass(frozen=True)
class FieldFact:
    pa: int
    size: int
    what: str  # e.g. "struct virtqueue.vq_free_cnt of vtblk0's queue"
    source: str  # "hypervisor" | "DWARF"
    check: Check
    obj: str = ""  # the object the field belongs to ("virtio-disk0 queue 0 descriptor table")

    def evidence(self, why: str) -> str:
        return f"{self.source}: {self.what}: {why}"


def unchanged(v: Values) -> str | None:
    """The dumped value is the before- or after-value (caught before or after the request)."""
    d = v.get("dump")
    if d is not None and d == v.get("before"):
        return "as before the dump"
    if d is not None and d == v.get("after"):
        return "as after the dump"
    return None


def between(v: Values, bits: int = 16) -> bool:
    """A free-running counter's dumped value lies between its before- and after-values (mod 2**bits)."""
    d, b, a = v.get("dump"), v.get("before"), v.get("after")
    if d is None or a is None:
        return False
    m = (1 << bits) - 1
    if b is None:  # panic flow: no before image; the counter only moves forward
        return (a - d) & m < (1 << (bits - 1))
    return (d - b) & m <= (a - b) & m


def segment_shape(
    addr: int, length: int, flags: int | None, headers: set[int], statuses: set[int]
) -> str | None:
    """What a (PA, length[, descriptor flags]) pair of a request is: header, status byte or data."""
    if length == 16 and addr in headers and (flags is None or flags & ~VRING_DESC_F_NEXT == 0):
        return f"request header {addr:#x}"
    if length == 1 and addr in statuses and (flags is None or flags & VRING_DESC_F_WRITE):
        return f"status byte {addr:#x}"
    if (
        0 < length <= MAX_SEGMENT
        and length % SECTOR == 0
        and addr
        and (flags is None or flags & ~(VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) == 0)
    ):
        return f"data {addr:#x}+{length:#x}"
    return None

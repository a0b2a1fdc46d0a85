"""What the hypervisor alone names: the rings QEMU reports and what their descriptors point at.

From QEMU's ring addresses, the descriptor tables in the three images give the indirect tables (flag
INDIRECT), and those tables' chains give the request headers (first entry, 16 bytes, device-readable) and
status bytes (last entry, 1 byte, device-writable). Each such field gets a rule that accepts only values a
request can hold, so a wrong byte in a ring page is still caught.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from harness.verify.dumpdevice.facts import DumpDeviceState, QueueFacts, VirtioDeviceFacts
from harness.verify.dumpdevice.fieldfacts import (
    STATUS_VALUES,
    VIRTIO_BLK_TYPES,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    FieldFact,
    Values,
    between,
    sector_verdict,
    segment_shape,
    unchanged,
)
from harness.verify.dumpdevice.images import IMAGES, ImageSet

HYP = "hypervisor"
#: an indirect table larger than this is not believed (virtio: at most the queue size; FreeBSD uses <= 64)
MAX_INDIRECT_ENTRIES = 1024


@dataclass
class RequestBuffers:
    """Addresses the rings tie to the dump device, gathered from every image (and DWARF, when given)."""

    tables: dict[int, int] = field(default_factory=dict)  # indirect table PA -> entries allotted
    headers: set[int] = field(default_factory=set)
    statuses: set[int] = field(default_factory=set)
    queue_of: dict[int, str] = field(default_factory=dict)  # table/header/status PA -> "virtio-disk0 queue 0"


def _entries(raw: bytes) -> list[tuple[int, int, int, int]]:
    return [struct.unpack_from("<QIHH", raw, i) for i in range(0, len(raw) - 15, 16)]


def _chain(entries: list[tuple[int, int, int, int]], start: int = 0) -> list[tuple[int, int, int, int]]:
    """The chain from entry ``start`` following NEXT (next = index), bounded by the table."""
    out, i, seen = [], start, set()
    while 0 <= i < len(entries) and i not in seen:
        seen.add(i)
        out.append(entries[i])
        addr, length, flags, nxt = entries[i]
        if not flags & VRING_DESC_F_NEXT:
            break
        i = nxt
    return out


def gather(state: DumpDeviceState, images: ImageSet, buffers: RequestBuffers | None = None) -> RequestBuffers:
    """Indirect tables, headers and status bytes reached from each queue's descriptor table."""
    b = buffers or RequestBuffers()
    for dev, q in state.queues:
        where = f"{dev.short} queue {q.index}"
        for img in IMAGES:
            raw = images.read(img, q.desc, 16 * q.num)
            if raw is None:
                continue
            entries = _entries(raw)
            for head in range(len(entries)):  # direct chains: header ... status in the ring itself
                _add_request(b, _chain(entries, head), where)
            for addr, length, flags, _nxt in entries:
                if (
                    flags & VRING_DESC_F_INDIRECT
                    and 16 <= length <= 16 * MAX_INDIRECT_ENTRIES
                    and length % 16 == 0
                ):
                    b.tables[addr] = max(b.tables.get(addr, 0), length // 16)
                    b.queue_of.setdefault(addr, where)
        for table, n in list(b.tables.items()):
            for img in IMAGES:
                raw = images.read(img, table, 16 * n)
                if raw is None:
                    continue
                _add_request(b, _chain(_entries(raw)), where)
    return b


def _add_request(b: RequestBuffers, chain: list[tuple[int, int, int, int]], where: str) -> None:
    """A chain that starts with a 16-byte device-readable header and ends with a 1-byte device-writable
    status is a virtio-blk request: remember both buffers."""
    if len(chain) < 2 or chain[0][1] != 16 or chain[0][2] & (VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT):
        return
    if chain[-1][1] != 1 or not chain[-1][2] & VRING_DESC_F_WRITE:
        return
    for addr, group in ((chain[0][0], b.headers), (chain[-1][0], b.statuses)):
        group.add(addr)
        b.queue_of.setdefault(addr, where)


def ring_facts(state: DumpDeviceState, images: ImageSet, b: RequestBuffers) -> list[FieldFact]:
    facts: list[FieldFact] = []
    for dev, q in state.queues:
        facts += _queue_facts(dev, q, b)
    for table, n in b.tables.items():
        facts += _table_facts(table, n, images, b)
    for h in b.headers:
        facts.append(
            FieldFact(
                h,
                16,
                f"request header {h:#x} ({b.queue_of.get(h, 'dump device')} chain)",
                HYP,
                _header_check(_capacity(state), state.dump_extent),
                f"request header {h:#x}",
            )
        )
    for s in b.statuses:
        facts.append(
            FieldFact(
                s,
                1,
                f"status byte {s:#x} ({b.queue_of.get(s, 'dump device')} chain)",
                HYP,
                _status_check,
                f"status byte {s:#x}",
            )
        )
    return facts


def _capacity(state: DumpDeviceState) -> int | None:
    caps = [d.capacity_bytes for d in state.devices if d.capacity_bytes]
    return max(caps) if caps else None


def _queue_facts(dev: VirtioDeviceFacts, q: QueueFacts, b: RequestBuffers) -> list[FieldFact]:
    where = f"{dev.short} queue {q.index}"
    out: list[FieldFact] = []
    for i in range(q.num):
        out.append(
            FieldFact(
                q.desc + 16 * i,
                16,
                f"{where} descriptor {i}",
                HYP,
                _desc_check(b),
                f"{where} descriptor table",
            )
        )
    out.append(FieldFact(q.avail, 2, f"{where} avail.flags", HYP, _small_flags, f"{where} avail ring"))
    out.append(FieldFact(q.avail + 2, 2, f"{where} avail.idx", HYP, _counter, f"{where} avail ring"))
    for j in range(q.num):
        out.append(
            FieldFact(
                q.avail + 4 + 2 * j,
                2,
                f"{where} avail.ring[{j}]",
                HYP,
                _index_below(q.num),
                f"{where} avail ring",
            )
        )
    out.append(
        FieldFact(
            q.avail + 4 + 2 * q.num, 2, f"{where} avail.used_event", HYP, _counter, f"{where} avail ring"
        )
    )
    out.append(FieldFact(q.used, 2, f"{where} used.flags", HYP, _small_flags, f"{where} used ring"))
    out.append(FieldFact(q.used + 2, 2, f"{where} used.idx", HYP, _counter, f"{where} used ring"))
    for j in range(q.num):
        out.append(
            FieldFact(
                q.used + 4 + 8 * j, 8, f"{where} used.ring[{j}]", HYP, _used_elem(q.num), f"{where} used ring"
            )
        )
    out.append(
        FieldFact(q.used + 4 + 8 * q.num, 2, f"{where} used.avail_event", HYP, _counter, f"{where} used ring")
    )
    return out


def _small_flags(v: Values) -> str | None:
    d = v.get("dump")
    return unchanged(v) or (f"{d} (notification flag)" if d in (0, 1) else None)


def _counter(v: Values) -> str | None:
    if unchanged(v):
        return unchanged(v)
    if between(v):
        return (
            f"{v['dump']} between {v.get('before')} (before) and {v.get('after')} (after): requests went on"
        )
    return None


def _index_below(num: int):  # noqa: ANN202
    def check(v: Values) -> str | None:
        d = v.get("dump")
        return unchanged(v) or (f"head {d} < {num}" if d is not None and d < num else None)

    return check


def _used_elem(num: int):  # noqa: ANN202
    def check(v: Values) -> str | None:
        d = v.get("dump")
        if unchanged(v) or d is None:
            return unchanged(v)
        ident, length = d & 0xFFFFFFFF, d >> 32
        if ident < num and length <= 1 << 24:
            return f"completed head {ident}, {length} bytes written by the device"
        return None

    return check


def _desc_check(b: RequestBuffers):  # noqa: ANN202
    def check(v: Values) -> str | None:
        d = v.get("dump")
        if unchanged(v) or d is None:
            return unchanged(v)
        addr, length, flags, nxt = struct.unpack("<QIHH", d.to_bytes(16, "little"))
        if (
            flags & VRING_DESC_F_INDIRECT
            and addr in b.tables
            and length % 16 == 0
            and 16 <= length <= 16 * b.tables[addr]
        ):
            return f"indirect table {addr:#x}, {length // 16} entries in use"
        shape = segment_shape(addr, length, flags, b.headers, b.statuses)
        return shape

    return check


def _table_facts(table: int, n: int, images: ImageSet, b: RequestBuffers) -> list[FieldFact]:
    where = b.queue_of.get(table, "dump device")
    out = []
    for j in range(n):
        out.append(
            FieldFact(
                table + 16 * j,
                16,
                f"{where} indirect table {table:#x} entry {j}",
                HYP,
                _table_entry_check(table, n, j, images, b),
                f"{where} indirect table {table:#x}",
            )
        )
    return out


def _table_entry_check(table: int, n: int, j: int, images: ImageSet, b: RequestBuffers):  # noqa: ANN202
    def check(v: Values) -> str | None:
        d = v.get("dump")
        if d is None:
            return None
        raw = images.read("dump", table, 16 * n)
        entries = _entries(raw) if raw is not None else []
        chain = _chain(entries) if entries else []
        addr, length, flags, nxt = struct.unpack("<QIHH", d.to_bytes(16, "little"))
        if j < len(chain):
            last = j == len(chain) - 1
            if j == 0 and length == 16 and addr in b.headers and flags == VRING_DESC_F_NEXT and nxt == 1:
                return f"request header {addr:#x} (16 B), first of a {len(chain)}-entry chain"
            if last and j > 0 and length == 1 and addr in b.statuses and flags & VRING_DESC_F_WRITE:
                return f"status byte {addr:#x}, last of the {len(chain)}-entry chain"
            if j > 0 and not last and nxt == j + 1:
                shape = segment_shape(addr, length, flags, set(), set())
                if shape:
                    cover = " (the data the request in flight writes)"
                    return shape + cover
            return unchanged(v)
        # beyond the chain in use: an entry an earlier, longer request left
        if unchanged(v):
            return unchanged(v) + " (beyond the chain in use)"
        shape = segment_shape(addr, length, flags, b.headers, b.statuses)
        return f"stale {shape} beyond the {len(chain)}-entry chain in use" if shape else None

    return check


def _header_check(capacity: int | None, extent: tuple[int, int] | None):  # noqa: ANN202
    def check(v: Values) -> str | None:
        d = v.get("dump")
        if unchanged(v) or d is None:
            return unchanged(v)
        typ, ioprio, sector = struct.unpack("<IIQ", d.to_bytes(16, "little"))
        if typ not in VIRTIO_BLK_TYPES or ioprio > 0xFF:
            return None
        where = sector_verdict(typ, sector, capacity, extent)
        return f"{VIRTIO_BLK_TYPES[typ]}, ioprio {ioprio}, {where}" if where else None

    return check


def _status_check(v: Values) -> str | None:
    d = v.get("dump")
    return unchanged(v) or STATUS_VALUES.get(d) if d is not None else None

"""The virtio-blk driver's own objects, reached through the kernel's data with DWARF layouts.

Route (no fixed address or offset): ELF symbol ``vtblk_devclass`` (else the ``devclasses`` list, by name
"vtblk") -> ``struct devclass``.devices[] -> ``struct device`` (nameunit "vtblkN") .softc -> ``struct
vtblk_softc`` -> .vtblk_vq (``struct virtqueue``, whose ``vq_ring.desc`` must translate to a ring PA QEMU
reports), .vtblk_sglist (``struct sglist``), the embedded .vtblk_dump_request; ``kdb_thread`` and
``kdb_frame`` for the debugger's thread and stack. Every field then gets a rule saying which dumped values
one request in flight explains (`FieldFact`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.verify.dumpdevice.facts import DumpDeviceState, QueueFacts, VirtioDeviceFacts
from harness.verify.dumpdevice.fieldfacts import (
    FieldFact,
    Values,
    between,
    segment_shape,
    unchanged,
)
from harness.verify.dumpdevice.images import ImageSet
from harness.verify.dumpdevice.layouts import Layouts, StructLayout
from harness.verify.dumpdevice.requests import find_requests, plural, request_checks, request_facts
from harness.verify.dumpdevice.rings import RequestBuffers

DW = "DWARF"
#: the structs this module reads (complete definitions needed in the DWARF)
NEEDED_STRUCTS = (
    "devclass",
    "device",
    "vtblk_softc",
    "virtqueue",
    "vq_desc_extra",
    "vtblk_request",
    "sglist",
    "sglist_seg",
)
#: compilation units that define them in FreeBSD (searched first; any other unit is searched after)
CU_HINTS = ("virtqueue.c", "virtio_blk.c", "subr_bus.c", "subr_sglist.c")

Symbol = Callable[[str], "int | None"]


@dataclass
class VtblkObjects:
    name: str  # nameunit, "vtblk0"
    softc: int  # VA
    vq: int
    sglist: int
    queue: QueueFacts
    device: VirtioDeviceFacts
    notes: list[str] = field(default_factory=list)


def _read_ptr(images: ImageSet, va: int) -> int | None:
    for img in ("after", "dump", "before"):
        v = images.uint_va(img, va, 8)
        if v is not None:
            return v
    return None


def find_vtblk(
    state: DumpDeviceState, images: ImageSet, lay: Layouts, symbol: Symbol
) -> tuple[list[VtblkObjects], list[str]]:
    """Each vtblk device whose queue QEMU reports, with the reason for every one that could not be tied."""
    notes: list[str] = []
    dc_t, dev_t, sc_t, vq_t = lay["devclass"], lay["device"], lay["vtblk_softc"], lay["virtqueue"]
    devclass = None
    a = symbol("vtblk_devclass")
    if a is not None:
        devclass = _read_ptr(images, a)
    if not devclass and dc_t.has("name") and dc_t.has("link.tqe_next"):
        head = symbol("devclasses")
        cur = _read_ptr(images, head) if head is not None else None
        for _ in range(4096):
            if not cur:
                break
            name_ptr = _read_ptr(images, cur + dc_t.off("name"))
            if name_ptr and images.string_va("after", name_ptr) == "vtblk":
                devclass = cur
                break
            cur = _read_ptr(images, cur + dc_t.off("link.tqe_next"))
    if not devclass:
        return [], ['no devclass "vtblk" (neither vtblk_devclass nor the devclasses list leads to it)']
    devices = _read_ptr(images, devclass + dc_t.off("devices"))
    # devices[] holds maxunit entries; without that member, look at the first units while they are set
    maxunit = images.uint_va("after", devclass + dc_t.off("maxunit"), 4) if dc_t.has("maxunit") else 16
    found: list[VtblkObjects] = []
    ring_of = {q.desc: (d, q) for d, q in state.queues}
    for unit in range(min(maxunit or 0, 256)):
        dev = _read_ptr(images, devices + 8 * unit) if devices else None
        if not dev:
            continue
        nptr = _read_ptr(images, dev + dev_t.off("nameunit"))
        name = (images.string_va("after", nptr) if nptr else None) or f"vtblk unit {unit}"
        softc = _read_ptr(images, dev + dev_t.off("softc"))
        if not softc:
            notes.append(f"{name}: no softc")
            continue
        vq = _read_ptr(images, softc + sc_t.off("vtblk_vq")) or 0
        sg = _read_ptr(images, softc + sc_t.off("vtblk_sglist")) or 0
        desc_va = _read_ptr(images, vq + vq_t.off("vq_ring.desc")) if vq else None
        desc_pa = images.pa_of(desc_va) if desc_va else None
        if desc_pa not in ring_of:
            notes.append(
                f"{name}: its queue's vq_ring.desc {desc_va or 0:#x} (PA {desc_pa}) is no ring QEMU reports"
            )
            continue
        d, q = ring_of[desc_pa]
        found.append(VtblkObjects(name, softc, vq, sg, q, d))
    return found, notes


@dataclass
class DriverFacts:
    facts: list[FieldFact]
    buffers: RequestBuffers  # DWARF-known indirect tables, header and status PAs, merged into the rings'
    described: list[str]  # one line per device: how it was found


def driver_facts(
    state: DumpDeviceState,
    images: ImageSet,
    lay: Layouts,
    symbol: Symbol,
    buffers: RequestBuffers,
    dump_thread: tuple[int, int | None] | None = None,
) -> tuple[DriverFacts, list[str]]:
    objs, notes = find_vtblk(state, images, lay, symbol)
    facts: list[FieldFact] = []
    described = []
    # who may hold the driver's lock while dumping, and on which stack its bio lives: ddb's thread and
    # trap frame (ddb's `dump`), the thread that panicked and dumps (`dumptid`: panic flow)
    owners = {
        t: "kdb_thread (the thread running ddb and the dump)"
        for t in _kernel_ptr(images, symbol, "kdb_thread").values()
        if t
    }
    stacks = {
        f: "kdb_frame (the stack ddb runs on)" for f in _kernel_ptr(images, symbol, "kdb_frame").values() if f
    }
    if dump_thread is not None:
        td, rsp = dump_thread
        if td:
            owners.setdefault(td, "the dumping thread (dumptid)")
        if rsp:
            stacks.setdefault(rsp, "the dumping thread's saved stack pointer (dumppcb)")
    for o in objs:
        f, line = _device_facts(o, images, lay, buffers, owners, stacks, state.dump_extent)
        facts += f
        described.append(line)
    return DriverFacts(facts, buffers, described), notes


def _at(base: int, t: StructLayout, path: str) -> int | None:
    """Address of member ``path`` of the object at ``base``, None if this kernel's struct lacks it."""
    return base + t.off(path) if t.has(path) else None


def _opt_uint(images: ImageSet, base: int, t: StructLayout, path: str) -> int | None:
    if not t.has(path):
        return None
    return images.uint_va("after", base + t.off(path), t.size_of(path) or 4)


def _kernel_ptr(images: ImageSet, symbol: Symbol, name: str) -> dict[str, int | None]:
    a = symbol(name)
    if a is None:
        return {}
    return {img: images.uint_va(img, a, 8) for img in ("before", "dump", "after")}


def _device_facts(
    o: VtblkObjects,
    images: ImageSet,
    lay: Layouts,
    b: RequestBuffers,
    owners: dict[int, str],
    stacks: dict[int, str],
    state_extent: tuple[int, int] | None = None,
) -> tuple[list[FieldFact], str]:
    vq_t, dx_t, sc_t, rq_t = lay["virtqueue"], lay["vq_desc_extra"], lay["vtblk_softc"], lay["vtblk_request"]
    sg_t, seg_t = lay["sglist"], lay["sglist_seg"]
    out: list[FieldFact] = []
    qname = f"{o.name}'s queue"
    num = _opt_uint(images, o.vq, vq_t, "vq_nentries") or o.queue.num
    max_ind = _opt_uint(images, o.vq, vq_t, "vq_max_indirect_size") or 0
    descx = o.vq + vq_t.off("vq_descx")
    req = o.softc + sc_t.off("vtblk_dump_request")
    hdr_pa = images.pa_of(req + rq_t.off("vbr_hdr"))
    ack_pa = images.pa_of(req + rq_t.off("vbr_ack"))
    if hdr_pa is not None:
        b.headers.add(hdr_pa)
        b.queue_of.setdefault(hdr_pa, f"{o.device.short} queue {o.queue.index}")
    if ack_pa is not None:
        b.statuses.add(ack_pa)
        b.queue_of.setdefault(ack_pa, f"{o.device.short} queue {o.queue.index}")
    # every descriptor's indirect table (allocation size from the queue itself)
    ind_bytes = _opt_uint(images, o.vq, vq_t, "vq_indirect_mem_size") or 16 * max_ind
    for i in range(num if dx_t.has("indirect_paddr") else 0):
        p = images.uint_va("after", descx + i * dx_t.size + dx_t.off("indirect_paddr"), 8)
        if p and ind_bytes:
            b.tables[p] = max(b.tables.get(p, 0), ind_bytes // 16)
            b.queue_of.setdefault(p, f"{o.device.short} queue {o.queue.index}")

    def add(va: int | None, size: int, what: str, check: Callable[[Values], str | None]) -> None:
        if va is None:  # this kernel's struct has no such member: nothing to name there
            return
        pa = images.pa_of(va)
        if pa is not None:
            out.append(FieldFact(pa, size, what, DW, check))

    rs = find_requests(o.name, images, lay, softc=o.softc, vq=o.vq, num=num)
    # the request header and status byte of every request in flight: the rings' chains name them too
    for r in [req, *rs.borrowed]:
        for member, group in (("vbr_hdr", b.headers), ("vbr_ack", b.statuses)):
            p = images.pa_of(r + rq_t.off(member))
            if p is not None:
                group.add(p)
                b.queue_of.setdefault(p, f"{o.device.short} queue {o.queue.index}")

    def free_cnt(v: Values) -> str | None:
        held = rs.outstanding
        used = sum(x.ndescs for x in held)
        if v.get("dump") == num - used:
            return f"{num - used} = {num} - {used} descriptor(s) held by {len(held)} request(s) in flight"
        return unchanged(v)

    def queued_cnt(v: Values) -> str | None:
        d, held = v.get("dump"), rs.outstanding
        if d is not None and d <= len(held):
            return f"{d} queued, {len(held)} request(s) in flight"
        return unchanged(v)

    def head_idx(v: Values) -> str | None:
        """The free chain's head once the descriptors of the requests in flight were taken from it: walking
        the chain (from the head before or after the dump, along the descriptor table of any image) over
        exactly that many descriptors, every one of them the head of a request in flight, reaches it."""
        d, held = v.get("dump"), rs.outstanding
        steps = sum(x.ndescs for x in held)
        heads = {x.head for x in held}
        if not held or d is None:
            return unchanged(v)
        for start_img in ("before", "after"):
            start = v.get(start_img)
            for table in ("after", "before", "dump"):
                cur, seen = start, []
                for _ in range(steps):
                    if cur is None or cur >= o.queue.num:
                        break
                    seen.append(cur)
                    cur = images.uint(table, o.queue.desc + 16 * cur + 14, 2)
                if len(seen) == steps and heads <= set(seen) and cur == d:
                    return (
                        f"{d}: the free chain's head after {steps} descriptor(s) taken by the "
                        f"{plural(len(held), 'request')} in flight"
                    )
        return unchanged(v)

    def used_cons(v: Values) -> str | None:
        if between(v):
            return f"{v['dump']} between {v.get('before')} (before) and {v.get('after')} (after)"
        return unchanged(v)

    add(_at(o.vq, vq_t, "vq_free_cnt"), 2, f"struct virtqueue.vq_free_cnt of {qname}", free_cnt)
    add(_at(o.vq, vq_t, "vq_queued_cnt"), 2, f"struct virtqueue.vq_queued_cnt of {qname}", queued_cnt)
    add(_at(o.vq, vq_t, "vq_desc_head_idx"), 2, f"struct virtqueue.vq_desc_head_idx of {qname}", head_idx)
    add(_at(o.vq, vq_t, "vq_used_cons_idx"), 2, f"struct virtqueue.vq_used_cons_idx of {qname}", used_cons)

    def cookie_check(v: Values) -> str | None:
        d = v.get("dump")
        if d == 0:
            return "0 (no request)"
        pa = images.pa_of(d) if d else None
        va = rs.pa_of.get(pa) if pa is not None else None
        if va is not None:
            what = rs.is_request(va)
            if what is not None:
                k = len(rs.in_flight)
                return f"{d:#x} = {what} " + (
                    "(the request in flight)" if k <= 1 else f"(one of the {k} requests in flight)"
                )
        return unchanged(v)

    def ndescs_check(i: int) -> Callable[[Values], str | None]:
        def check(v: Values) -> str | None:
            d = v.get("dump")
            c = images.uint_va("dump", descx + i * dx_t.size + dx_t.off("cookie"), 8)
            if c and d is not None and 1 <= d <= max(max_ind, 1):
                return f"{d} descriptor(s) for a request in flight"
            if not c and d == 0:
                return "0 (no request)"
            return unchanged(v)

        return check

    for i in range(num):
        e = descx + i * dx_t.size
        add(e + dx_t.off("cookie"), 8, f"struct virtqueue.vq_descx[{i}].cookie of {qname}", cookie_check)
        add(
            e + dx_t.off("ndescs"),
            dx_t.size_of("ndescs"),
            f"struct virtqueue.vq_descx[{i}].ndescs of {qname}",
            ndescs_check(i),
        )

    # softc: the lock word and the embedded dump request
    def lock_check(v: Values) -> str | None:
        d = v.get("dump")
        if d is not None and d & ~0xF in owners:
            return f"{d:#x}: held by {owners[d & ~0xF]}"
        return unchanged(v)

    if sc_t.has("vtblk_mtx.mtx_lock"):
        add(
            o.softc + sc_t.off("vtblk_mtx.mtx_lock"),
            8,
            f"struct vtblk_softc.vtblk_mtx.mtx_lock of {o.name}",
            lock_check,
        )
    base = "struct vtblk_softc.vtblk_dump_request"
    cap, extent = o.device.capacity_bytes, state_extent
    for member, size, check in request_checks(req, lay, images, stacks, cap, extent):
        # ioprio and the bio pointer are optional in a kernel's layout; the header and status are not
        va = _at(req, rq_t, member) if member in ("vbr_hdr.ioprio", "vbr_bp") else req + rq_t.off(member)
        add(va, size, f"{base}.{member} of {o.name}", check)

    # the scatter/gather list the dump request is built in
    maxseg = (
        images.uint_va("after", o.sglist + sg_t.off("sg_maxseg"), sg_t.size_of("sg_maxseg"))
        if sg_t.has("sg_maxseg")
        else max_ind
    ) or max_ind
    segs = _read_ptr(images, o.sglist + sg_t.off("sg_segs")) or 0
    nseg_va = o.sglist + sg_t.off("sg_nseg")
    nseg_size = sg_t.size_of("sg_nseg")
    # a request is built in the sglist: header (its vbr_hdr), data, status (its vbr_ack). The dumped copy
    # holds the last request built: the dump request or one taken off the free list, in flight
    built: dict[int, tuple[int, str]] = {}  # header PA -> (status PA, which request)
    for r in [req, *rs.borrowed]:
        hp, ap = images.pa_of(r + rq_t.off("vbr_hdr")), images.pa_of(r + rq_t.off("vbr_ack"))
        if hp is not None and ap is not None:
            built.setdefault(hp, (ap, "the dump request" if r == req else f"request {r:#x} (in flight)"))
    hdr_set = set(built)
    ack_set = {a for a, _w in built.values()}
    # stale segments beyond the ones in use may name any request of the driver
    stale_hdrs, stale_acks = set(hdr_set), set(ack_set)
    for r in rs.pa_of.values():
        for member, group in (("vbr_hdr", stale_hdrs), ("vbr_ack", stale_acks)):
            p = images.pa_of(r + rq_t.off(member))
            if p is not None:
                group.add(p)

    def seg(j: int, image: str = "dump") -> tuple[int, int] | None:
        e = segs + j * seg_t.size
        p = images.uint_va(image, e + seg_t.off("ss_paddr"), 8)
        n = images.uint_va(image, e + seg_t.off("ss_len"), seg_t.size_of("ss_len"))
        return (p, n) if p is not None and n is not None else None

    def nseg_check(v: Values) -> str | None:
        d = v.get("dump")
        if d is None or not 2 <= d <= max(maxseg, 2):
            return unchanged(v)
        first, last = seg(0), seg(d - 1)
        if first and last and first[0] in built and first[1] == 16 and last == (built[first[0]][0], 1):
            return f"{d} segments (header, {d - 2} data, status) of at most {maxseg}: {built[first[0]][1]}"
        return unchanged(v)

    seg_page = images.pa_of(segs) if segs else None

    def _table_twin(j: int) -> tuple[int, int] | None:
        """Entry j of the indirect table of the request the sglist holds (the table whose first entry is
        the same header) when the dumped copy of the sglist's page holds it too (one snapshot): the table
        is built from the sglist, so the two must agree."""
        first_seg = seg(0)
        if seg_page is None or first_seg is None:
            return None
        for table, entries in b.tables.items():
            if table // 4096 != seg_page // 4096 or j >= entries:
                continue
            first = images.read("dump", table, 16)
            if first is None or int.from_bytes(first[:8], "little") != first_seg[0]:
                continue
            raw = images.read("dump", table + 16 * j, 12)
            if raw is not None:
                return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:12], "little")
        return None

    def seg_check(j: int) -> Callable[[Values], str | None]:
        def check(v: Values) -> str | None:
            n = images.uint_va("dump", nseg_va, nseg_size) or 0
            s = seg(j)
            if s is None:
                return None
            p, ln = s
            if j < n:
                head = seg(0)
                if j == 0:
                    ok = p in built and ln == 16
                elif j == n - 1:
                    ok = head is not None and head[0] in built and p == built[head[0]][0] and ln == 1
                else:
                    ok = segment_shape(p, ln, None, set(), set()) is not None
                if not ok:
                    return None
                what = segment_shape(p, ln, None, hdr_set, ack_set)
                if (j == 0 or j == n - 1) and head is not None and head[0] in built:
                    what = f"{what} of {built[head[0]][1]}"
                twin = _table_twin(j)
                if twin is not None and twin[:2] != (p, ln):
                    return None  # the sglist and the indirect table built from it disagree
                return f"segment {j} of {n}: {what}" + (" = the indirect table's entry" if twin else "")
            shape = segment_shape(p, ln, None, stale_hdrs, stale_acks)
            if unchanged(v):
                return unchanged(v) + f" (beyond the {n} segments in use)"
            return f"stale {shape} beyond the {n} segments in use" if shape else None

        return check

    add(nseg_va, nseg_size, f"struct sglist.sg_nseg of {o.name}", nseg_check)
    for j in range(min(maxseg, 1024)):
        add(segs + j * seg_t.size, seg_t.size, f"struct sglist.sg_segs[{j}] of {o.name}", seg_check(j))
    out += request_facts(rs, images, lay, softc=o.softc, stacks=stacks, capacity=cap, extent=extent)
    line = (
        f"{o.name}: softc {o.softc:#x}, struct virtqueue {o.vq:#x} (vq_ring.desc -> PA {o.queue.desc:#x} = "
        f"QEMU's {o.device.short} queue {o.queue.index}), sglist {o.sglist:#x}, dump request {req:#x}"
        + (
            f", vtblk_req_free ({', '.join(f'{len(e)} elements {i}' for i, e in rs.free_lists.items())})"
            if rs.free_lists
            else ""
        )
        + (
            f", {plural(len(rs.borrowed), 'request')} from it in flight "
            f"({', '.join(f'{r:#x}' for r in rs.borrowed)})"
            if rs.borrowed
            else ""
        )
    )
    return out, line

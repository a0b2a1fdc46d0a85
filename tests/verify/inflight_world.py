"""A synthetic dump of a virtio-blk driver with K requests in flight per dump write, laid out by DWARF.

No recorded run has more than one request in flight (FreeBSD 12.1's dump path uses only the request
embedded in the softc), so this world *plays* a driver that submits K requests before polling: the dump
request plus K-1 taken off the softc's ``vtblk_req_free`` TAILQ, as the MockFreeBSDKernel's
``mock.vtblk_inflight=K`` does. A small model of the driver (virtqueue enqueue/dequeue with indirect
tables, the sglist, the free list, the device completing requests) writes every object at the offsets of
the given kernel's layouts (`Layouts`: the recorded 12.1 DWARF or a gcc -g stand-in's), so nothing here
depends on one layout. The images: "before" after the attach-time reads, "dump" each page copied while
the write carrying that very page is in flight (as a kernel's dump shows it), "after" once the closing
flush completed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import evidence_world as ew

from harness.verify.dumpdevice import DumpDeviceState, Layouts

PAGE = 4096
DMAP = ew.DMAP
KVA_VQ = 0xFFFF_FE00_0040_0000  # the virtqueue lives outside the direct map (as 12.1's does)
PA = {
    "symbols": ew.SYMBOL_PAGE_PA,
    "aux": 0x0500000,  # devclass, devices[], device, nameunit
    "softc": 0x0501000,
    "vq": 0x0510000,  # 3 pages
    "ring": 0x0520000,  # desc / avail / used, a page each
    "sglist": 0x0530000,  # the sglist, then indirect tables for the first heads (they share a page)
    "tables": 0x0531000,
    "requests": 0x0540000,
    "stack": 0x0550000,  # kdb_frame's page: the bios of the dump writes live here
    "data": 0x0560000,  # pages of ordinary memory the dump also writes
}
NUM = 64  # ring entries
MAX_INDIRECT = 19
DISK = 0x1000_0000  # 256 MiB dump disk
EXTENT = (DISK - 0x100_0000, DISK)
KDB_THREAD = 0xFFFF_F800_0300_0000
KDB_FRAME = DMAP + PA["stack"] + 0xD30


@dataclass
class Objects:
    softc: int
    vq: int
    sglist: int
    dump_request: int
    requests: list[int]


class Driver:
    """The model: writes go to ``mem`` (page PA -> bytearray), addressed by kernel VA through the world."""

    def __init__(self, world: ew.World, lay: Layouts, inflight: int, nrequests: int = 16) -> None:
        self.w, self.lay, self.k = world, lay, inflight
        self.mem: dict[int, bytearray] = {}
        self.sc_t, self.vq_t, self.dx_t = lay["vtblk_softc"], lay["virtqueue"], lay["vq_desc_extra"]
        self.rq_t, self.sg_t, self.seg_t = lay["vtblk_request"], lay["sglist"], lay["sglist_seg"]
        for i in range(3):
            world.kva[KVA_VQ + i * PAGE] = PA["vq"] + i * PAGE
        softc = DMAP + PA["softc"] + 0x100
        stride = -(-self.rq_t.size // 64) * 64  # a malloc bucket
        reqs = [DMAP + PA["requests"] + 0x40 + stride * i for i in range(nrequests)]
        self.o = Objects(
            softc, KVA_VQ, DMAP + PA["sglist"], softc + self.sc_t.off("vtblk_dump_request"), reqs
        )
        self.used_seen = 0
        self.bios = 0

    # -- memory ------------------------------------------------------------------------------------------
    def w_pa(self, pa: int, data: bytes) -> None:
        for k, b in enumerate(data):
            p = pa + k
            self.mem.setdefault(p - p % PAGE, bytearray(PAGE))[p % PAGE] = b

    def r_pa(self, pa: int, n: int) -> int:
        return int.from_bytes(
            bytes(self.mem.setdefault(pa - pa % PAGE, bytearray(PAGE))[pa % PAGE :][:n]), "little"
        )

    def put(self, va: int, value: int, size: int) -> None:
        self.w_pa(self.w.pa(va), (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))

    def get(self, va: int, size: int) -> int:
        return self.r_pa(self.w.pa(va), size)

    def f(self, t, base: int, path: str) -> int:  # noqa: ANN001
        return base + t.off(path)

    # -- the objects at attach ---------------------------------------------------------------------------
    def attach(self) -> None:
        o, lay = self.o, self.lay
        sym = DMAP + PA["aux"]
        dc_t, dev_t = lay["devclass"], lay["device"]
        devclass, devices, dev, name = sym, sym + 0x200, sym + 0x300, sym + 0x400
        self.w.symbols.update(
            {
                n: ew.SYMBOL_PAGE_VA + 0x300 + 8 * i
                for i, n in enumerate(("vtblk_devclass", "kdb_thread", "kdb_frame"))
            }
        )
        self.w.kva[ew.SYMBOL_PAGE_VA] = ew.SYMBOL_PAGE_PA
        self.put(self.w.symbols["vtblk_devclass"], devclass, 8)
        self.put(self.w.symbols["kdb_thread"], KDB_THREAD, 8)
        self.put(self.w.symbols["kdb_frame"], KDB_FRAME, 8)
        self.put(devclass + dc_t.off("devices"), devices, 8)
        self.put(devclass + dc_t.off("maxunit"), 1, 4)
        self.put(devices, dev, 8)
        self.w_pa(self.w.pa(name), b"vtblk0\0")
        self.put(dev + dev_t.off("nameunit"), name, 8)
        self.put(dev + dev_t.off("softc"), o.softc, 8)
        sc, vq = self.sc_t, self.vq_t
        self.put(o.softc + sc.off("vtblk_vq"), o.vq, 8)
        self.put(o.softc + sc.off("vtblk_sglist"), o.sglist, 8)
        if sc.has("vtblk_request_count"):
            self.put(o.softc + sc.off("vtblk_request_count"), len(o.requests), 4)
        self.put(o.softc + sc.off("vtblk_req_free.tqh_last"), o.softc + sc.off("vtblk_req_free.tqh_first"), 8)
        self.put(o.vq + vq.off("vq_nentries"), NUM, 2)
        self.put(o.vq + vq.off("vq_max_indirect_size"), MAX_INDIRECT, 4)
        self.put(o.vq + vq.off("vq_indirect_mem_size"), 16 * MAX_INDIRECT, 4)
        self.put(o.vq + vq.off("vq_ring.num"), NUM, 4)
        ring = PA["ring"]
        for k, off in (("desc", 0), ("avail", PAGE), ("used", 2 * PAGE)):
            self.put(o.vq + vq.off(f"vq_ring.{k}"), DMAP + ring + off, 8)
        self.put(o.vq + vq.off("vq_free_cnt"), NUM, 2)
        self.put(o.vq + vq.off("vq_desc_head_idx"), 0, 2)
        for i in range(NUM):
            self.w_pa(ring + 16 * i + 14, struct.pack("<H", i + 1 if i + 1 < NUM else 0x8000))
            table = PA["sglist"] + 0x200 * (i + 1) if i < 7 else PA["tables"] + 0x140 * (i - 7)
            self.put(self.descx(i, "indirect"), DMAP + table, 8)
            self.put(self.descx(i, "indirect_paddr"), table, 8)
        self.put(o.sglist + self.sg_t.off("sg_segs"), o.sglist + self.sg_t.size, 8)
        self.put(o.sglist + self.sg_t.off("sg_maxseg"), MAX_INDIRECT, 2)
        for r in reversed(o.requests):
            self.free_insert_head(r)

    def descx(self, i: int, member: str) -> int:
        return self.o.vq + self.vq_t.off("vq_descx") + i * self.dx_t.size + self.dx_t.off(member)

    # -- the free list (a TAILQ, LIFO as FreeBSD's vtblk uses it) ------------------------------------------
    def free_insert_head(self, r: int) -> None:
        sc, rq, o = self.sc_t, self.rq_t, self.o
        head = o.softc + sc.off("vtblk_req_free.tqh_first")
        first = self.get(head, 8)
        self.put(r + rq.off("vbr_link.tqe_next"), first, 8)
        if first:
            self.put(first + rq.off("vbr_link.tqe_prev"), r + rq.off("vbr_link.tqe_next"), 8)
        else:
            self.put(o.softc + sc.off("vtblk_req_free.tqh_last"), r + rq.off("vbr_link.tqe_next"), 8)
        self.put(head, r, 8)
        self.put(r + rq.off("vbr_link.tqe_prev"), head, 8)

    def free_take_head(self) -> int:
        sc, rq, o = self.sc_t, self.rq_t, self.o
        head = o.softc + sc.off("vtblk_req_free.tqh_first")
        r = self.get(head, 8)
        nxt = self.get(r + rq.off("vbr_link.tqe_next"), 8)
        self.put(head, nxt, 8)
        if nxt:
            self.put(nxt + rq.off("vbr_link.tqe_prev"), head, 8)
        else:
            self.put(o.softc + sc.off("vtblk_req_free.tqh_last"), head, 8)
        self.put(r + rq.off("vbr_link.tqe_next"), 0, 8)  # vtblk_request_dequeue zeroes the request
        self.put(r + rq.off("vbr_link.tqe_prev"), 0, 8)
        return r

    # -- requests ----------------------------------------------------------------------------------------
    def submit(self, r: int, typ: int, sector: int, data: tuple[int, int] | None) -> None:
        """Build ``r`` in the sglist and put it on the ring through the free head's indirect table."""
        rq, sg, seg, vq, o = self.rq_t, self.sg_t, self.seg_t, self.vq_t, self.o
        self.put(r + rq.off("vbr_hdr.type"), typ, 4)
        if rq.has("vbr_hdr.ioprio"):
            self.put(r + rq.off("vbr_hdr.ioprio"), 1, 4)
        self.put(r + rq.off("vbr_hdr.sector"), sector, 8)
        self.bios += 1
        self.put(r + rq.off("vbr_bp"), KDB_FRAME - 0x100 * (self.bios % 4 + 1), 8)
        self.put(r + rq.off("vbr_ack"), 0xFF, 1)
        segs = [(self.w.pa(r + rq.off("vbr_hdr")), 16, 0)]
        if data:
            segs.append((data[0], data[1], 2 if typ == 0 else 0))
        segs.append((self.w.pa(r + rq.off("vbr_ack")), 1, 2))
        base = o.sglist + sg.size
        for j, (p, n, _fl) in enumerate(segs):
            self.put(base + j * seg.size + seg.off("ss_paddr"), p, 8)
            self.put(base + j * seg.size + seg.off("ss_len"), n, seg.size_of("ss_len"))
        self.put(o.sglist + sg.off("sg_nseg"), len(segs), sg.size_of("sg_nseg"))
        head = self.get(o.vq + vq.off("vq_desc_head_idx"), 2)
        self.put(self.descx(head, "cookie"), r, 8)
        self.put(self.descx(head, "ndescs"), 1, self.dx_t.size_of("ndescs"))
        table = self.get(self.descx(head, "indirect_paddr"), 8)
        for j, (p, n, fl) in enumerate(segs):
            more = 1 if j + 1 < len(segs) else 0
            self.w_pa(table + 16 * j, struct.pack("<QIHH", p, n, fl | more, j + 1))
        ring = PA["ring"]
        nxt = self.r_pa(ring + 16 * head + 14, 2)
        self.w_pa(ring + 16 * head, struct.pack("<QIH", table, 16 * len(segs), 4))
        self.put(o.vq + vq.off("vq_desc_head_idx"), nxt, 2)
        self.put(o.vq + vq.off("vq_free_cnt"), self.get(o.vq + vq.off("vq_free_cnt"), 2) - 1, 2)
        idx = self.r_pa(ring + PAGE + 2, 2)
        self.w_pa(ring + PAGE + 4 + 2 * (idx % NUM), struct.pack("<H", head))
        self.w_pa(ring + PAGE + 2, struct.pack("<H", (idx + 1) & 0xFFFF))

    def device_completes(self) -> None:
        """The device answers every request made available: status 0, used ring entries, used.idx."""
        ring = PA["ring"]
        avail = self.r_pa(ring + PAGE + 2, 2)
        used = self.r_pa(ring + 2 * PAGE + 2, 2)
        while used != avail:
            head = self.r_pa(ring + PAGE + 4 + 2 * (used % NUM), 2)
            table = self.r_pa(ring + 16 * head, 8)
            n = self.r_pa(ring + 16 * head + 8, 4) // 16
            status = self.r_pa(table + 16 * (n - 1), 8)
            self.w_pa(status, b"\0")
            self.w_pa(ring + 2 * PAGE + 4 + 8 * (used % NUM), struct.pack("<II", head, 1))
            used = (used + 1) & 0xFFFF
            self.w_pa(ring + 2 * PAGE + 2, struct.pack("<H", used))

    def dequeue_all(self) -> list[int]:
        """The driver polls the used ring: each completed head back on the free chain (LIFO)."""
        vq, o, ring = self.vq_t, self.o, PA["ring"]
        done = []
        cons = self.get(o.vq + vq.off("vq_used_cons_idx"), 2)
        while cons != self.r_pa(ring + 2 * PAGE + 2, 2):
            head = self.r_pa(ring + 2 * PAGE + 4 + 8 * (cons % NUM), 4)
            cons = (cons + 1) & 0xFFFF
            self.put(o.vq + vq.off("vq_used_cons_idx"), cons, 2)
            done.append(self.get(self.descx(head, "cookie"), 8))
            self.put(self.descx(head, "cookie"), 0, 8)
            n = self.get(self.descx(head, "ndescs"), self.dx_t.size_of("ndescs"))
            self.put(o.vq + vq.off("vq_free_cnt"), self.get(o.vq + vq.off("vq_free_cnt"), 2) + n, 2)
            self.put(self.descx(head, "ndescs"), 0, self.dx_t.size_of("ndescs"))
            self.w_pa(
                ring + 16 * head + 14, struct.pack("<H", self.get(o.vq + vq.off("vq_desc_head_idx"), 2))
            )
            self.put(o.vq + vq.off("vq_desc_head_idx"), head, 2)
        return done

    def lock(self, owner: int) -> None:
        if self.sc_t.has("vtblk_mtx.mtx_lock"):
            self.put(self.o.softc + self.sc_t.off("vtblk_mtx.mtx_lock"), owner, 8)

    def taste(self) -> None:
        """Attach-time reads, K at a time through requests off the free list (the before image's state)."""
        buf = PA["data"]
        for first in range(0, 6, self.k):
            self.lock(KDB_THREAD)
            reqs = [self.free_take_head() for _ in range(min(self.k, 6 - first))]
            for j, r in enumerate(reqs):
                self.submit(r, 0, first + j, (buf + 512 * j, 512))
            self.put(self.o.vq + self.vq_t.off("vq_queued_cnt"), 0, 2)
            self.device_completes()
            for r in self.dequeue_all():
                self.free_insert_head(r)
            self.lock(0)

    def dump_write(self, data_pa: int, length: int, sector: int, snapshot) -> None:  # noqa: ANN001
        """One dumper call: the dump request plus K-1 from the free list, each a part of the write;
        ``snapshot()`` runs while they are all in flight (the device reads the data then)."""
        self.lock(KDB_THREAD)
        n = min(self.k, length // 512) if length else 1
        per = -(-length // 512 // n) * 512 if length else 0
        reqs = [self.o.dump_request] + [self.free_take_head() for _ in range(n - 1)]
        for i, r in enumerate(reqs):
            part = min(per, length - i * per)
            self.submit(
                r,
                1 if length else 4,
                sector + i * per // 512 if length else 0,
                (data_pa + i * per, part) if length else None,
            )
        self.put(self.o.vq + self.vq_t.off("vq_queued_cnt"), 0, 2)
        snapshot()
        self.device_completes()
        self.dequeue_all()
        for r in reqs[1:]:
            self.free_insert_head(r)
        self.lock(0)


def build(lay: Layouts, inflight: int = 2) -> tuple[ew.World, Driver]:
    """The world: before (after attach), dump (each page while its own write is in flight), after."""
    w = ew.World(f"synthetic, {inflight} requests in flight")
    drv = Driver(w, lay, inflight)
    drv.attach()
    drv.taste()
    drv.w_pa(PA["data"] + PAGE, b"ordinary memory the dump also writes" * 8)
    before = {p: bytearray(b) for p, b in drv.mem.items()}
    pages = sorted(drv.mem)
    dumped: dict[int, bytearray] = {}
    sector = EXTENT[0] // 512
    for p in pages:
        drv.dump_write(p, PAGE, sector, lambda p=p: dumped.__setitem__(p, bytearray(drv.mem[p])))
        sector += PAGE // 512
    drv.dump_write(0, 0, 0, lambda: None)  # the closing flush
    w.pages = {
        "before": {p: before.get(p, bytearray(PAGE)) for p in pages},
        "dump": dumped,
        "after": {p: bytearray(drv.mem[p]) for p in pages},
    }
    w.state = DumpDeviceState.from_dict(
        {
            "devices": [
                {
                    "path": "/machine/peripheral/virtio-disk0/virtio-backend",
                    "name": "virtio-blk",
                    "capacity_bytes": DISK,
                    "queues": [
                        {
                            "index": 0,
                            "num": NUM,
                            "desc": PA["ring"],
                            "avail": PA["ring"] + PAGE,
                            "used": PA["ring"] + 2 * PAGE,
                        }
                    ],
                }
            ],
            "dump_extent": [hex(EXTENT[0]), hex(EXTENT[1])],
        }
    )
    return w, drv

"""Rebuild the before / dump / after images of a real FreeBSD 12.1 run's dump-device pages from the
recorded evidence (tests/data/freebsd-12.1-evidence, facts from the acceptance side).

Only what the evidence states goes in: every recorded differing field with its three values, the object
chain's pointers (devclass -> device -> softc -> virtqueue / sglist / dump request) at the offsets of that
kernel's DWARF layouts (`layouts_from_dwarf`), the rings' descriptor chain, and the symbols' values.
Bytes the evidence does not record are zero in all three images (they did not differ). Kernel symbols and
the `devices` array / nameunit string, whose addresses the evidence does not give, live on synthetic pages.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from harness.verify.dumpdevice import DumpDeviceState, Layouts
from harness.verify.live import LiveMemory

EVIDENCE = (
    Path(__file__).resolve().parents[1] / "data" / "freebsd-12.1-evidence" / "virtio-blk-dump-state.json"
)
DMAP = 0xFFFF_F800_0000_0000
PAGE = 4096
IMAGES = ("before", "dump", "after")
#: ddb's trap frame per run, as evidence section 5/9 states it (vbr_bp = kdb_frame - 0x598 / - 0x6a8)
KDB_FRAME = {
    "minidump-nmi": 0xFFFFFFFF81F2B3B8 + 0x598,
    "minidump-nmi-fresh": 0xFFFFFFFF81F2B3B8 + 0x598,
    "minidump-nmi-repeat": 0xFFFFFFFF81F2B3B8 + 0x598,
    "full-alt-break": 0xFFFFFE0000405268 + 0x6A8,
    "minidump-nmi-2vcpu": 0xFFFFFE0000A2BF30,
}
DISK_BYTES = 0x28000000  # the 640 MiB dump disk (evidence section 1)
#: synthetic places for what the evidence does not locate (symbols, devices[] array, nameunit string)
SYMBOL_PAGE_VA, SYMBOL_PAGE_PA = 0xFFFFFFFF81D0A000, 0x1D0A000
AUX_PA = 0x1D0B000


def evidence() -> dict:
    return json.loads(EVIDENCE.read_text())


def layouts() -> Layouts:
    return Layouts.from_mapping(
        evidence()["layouts_from_dwarf"], source="DWARF of the 12.1 kernel.debug (recorded)"
    )


@dataclass
class World:
    run: str
    pages: dict[str, dict[int, bytearray]] = field(default_factory=lambda: {i: {} for i in IMAGES})
    kva: dict[int, int] = field(default_factory=dict)  # kernel VA page -> PA page
    symbols: dict[str, int] = field(default_factory=dict)
    state: DumpDeviceState | None = None
    unexplained_pages: list[int] = field(default_factory=list)  # what the old rules reported

    def put(self, pa: int, data: bytes, images: tuple[str, ...] = IMAGES) -> None:
        for img in images:
            for k, b in enumerate(data):
                page = (pa + k) - (pa + k) % PAGE
                self.pages[img].setdefault(page, bytearray(PAGE))[(pa + k) % PAGE] = b
        for img in IMAGES:  # every page exists in all three images
            page = pa - pa % PAGE
            self.pages[img].setdefault(page, bytearray(PAGE))

    def put_va(self, va: int, data: bytes, images: tuple[str, ...] = IMAGES) -> None:
        self.put(self.pa(va), data, images)

    def pa(self, va: int) -> int:
        if DMAP <= va < DMAP + (1 << 40):
            return va - DMAP
        return self.kva[va - va % PAGE] + va % PAGE

    def translate(self, va: int) -> int:
        try:
            return self.pa(va)
        except KeyError:
            raise ValueError(f"{va:#x} not mapped") from None


def _u(n: int, size: int) -> bytes:
    return (n & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def build(run_name: str, lay: Layouts | None = None) -> World:
    """The run's pages; with ``lay`` (another kernel's layouts, e.g. from a gcc -g stand-in's DWARF) the
    driver's objects are laid out by it instead - the recorded values stay, their offsets move."""
    ev = evidence()
    real = layouts()
    lay = lay or real
    run = next(r for r in ev["runs"] if r["run"] == run_name)
    oc = {
        k: (int(v, 16) if isinstance(v, str) and v.startswith("0x") else v)
        for k, v in run["object_chain_in_dump"].items()
    }
    w = World(run_name)
    for p in run["pages"]:
        for va in p.get("other_kernel_vas", []):
            w.kva[int(va, 16)] = int(p["pa"], 16)
    # the virtqueue spans two pages; its second page is not in the evidence (nothing differs there)
    w.kva.setdefault(oc["vtblk_vq"] + PAGE, AUX_PA + 2 * PAGE)
    w.kva[SYMBOL_PAGE_VA] = SYMBOL_PAGE_PA
    ring = {}
    for p in run["pages"]:
        objs = {r["object"] for r in p["ranges"]}
        for key, word in (("desc", "descriptor table"), ("avail", "avail ring"), ("used", "used ring")):
            if any(word in o and o.startswith("vring") for o in objs):
                ring[key] = int(p["pa"], 16)
        if p.get("unexplained_by_current_rules"):
            w.unexplained_pages.append(int(p["pa"], 16))
    num = oc["vq_ring.num"]
    w.state = DumpDeviceState.from_dict(
        {
            "devices": [
                {
                    "path": "/machine/peripheral/virtio-disk0/virtio-backend",
                    "name": "virtio-blk",
                    "capacity_bytes": DISK_BYTES,
                    "queues": [
                        {
                            "index": 0,
                            "num": num,
                            "desc": ring["desc"],
                            "avail": ring["avail"],
                            "used": ring["used"],
                        }
                    ],
                }
            ]
        }
    )
    vq_t, dx_t, sc_t = lay["virtqueue"], lay["vq_desc_extra"], lay["vtblk_softc"]
    sg_t, dc_t, dev_t = lay["sglist"], lay["devclass"], lay["device"]
    vq, softc, sg = oc["vtblk_vq"], oc["softc"], oc["vtblk_sglist"]
    # symbols: vtblk_devclass, kdb_thread, kdb_frame (values from the evidence, addresses synthetic)
    for i, (name, value) in enumerate(
        (
            ("vtblk_devclass", oc["vtblk_devclass_symbol_value"]),
            ("kdb_thread", oc["kdb_thread"]),
            ("kdb_frame", KDB_FRAME[run_name]),
        )
    ):
        w.symbols[name] = SYMBOL_PAGE_VA + 0x300 + 8 * i
        w.put_va(w.symbols[name], _u(value, 8))
    # devclass -> devices[] -> device (nameunit, softc)
    dclass = oc["devclass_vtblk"]
    devices_va = DMAP + AUX_PA
    w.put_va(dclass + dc_t.off("devices"), _u(devices_va, 8))
    w.put_va(dclass + dc_t.off("maxunit"), _u(2, 4))
    w.put_va(devices_va, _u(oc["device"], 8) + _u(0, 8))
    name_va = DMAP + AUX_PA + PAGE
    w.put_va(name_va, oc["device_nameunit"].encode() + b"\0")
    w.put_va(oc["device"] + dev_t.off("nameunit"), _u(name_va, 8))
    w.put_va(oc["device"] + dev_t.off("softc"), _u(softc, 8))
    # softc
    w.put_va(softc + sc_t.off("vtblk_vq"), _u(vq, 8))
    w.put_va(softc + sc_t.off("vtblk_sglist"), _u(sg, 8))
    # virtqueue
    w.put_va(vq + vq_t.off("vq_name"), oc["vq_name"].encode() + b"\0")
    w.put_va(vq + vq_t.off("vq_nentries"), _u(oc["vq_nentries"], 2))
    w.put_va(vq + vq_t.off("vq_max_indirect_size"), _u(oc["vq_max_indirect_size"], 4))
    w.put_va(vq + vq_t.off("vq_indirect_mem_size"), _u(oc["vq_indirect_mem_size"], 4))
    w.put_va(vq + vq_t.off("vq_ring.num"), _u(num, 4))
    for k in ("desc", "avail", "used"):
        w.put_va(vq + vq_t.off(f"vq_ring.{k}"), _u(oc[f"vq_ring.{k}"], 8))
    w.put_va(vq + vq_t.off("vq_ring_mem"), _u(oc["vq_ring_mem"], 8))
    if vq_t.has("vq_intrhand_arg"):
        w.put_va(vq + vq_t.off("vq_intrhand_arg"), _u(oc["vq_intrhand_arg"], 8))
    d0 = vq + vq_t.off("vq_descx")
    w.put_va(d0 + dx_t.off("indirect"), _u(oc["vq_descx[0].indirect"], 8))
    w.put_va(d0 + dx_t.off("indirect_paddr"), _u(oc["vq_descx[0].indirect_paddr"], 8))
    # the descriptor free chain (descriptors i -> i+1) and descriptor 0 -> the indirect table
    for i in range(num):
        w.put(ring["desc"] + 16 * i + 14, _u(i + 1, 2))
    table = oc["vq_descx[0].indirect_paddr"]
    w.put(ring["desc"], _u(table, 8))
    w.put(ring["desc"] + 12, _u(4, 2))  # VRING_DESC_F_INDIRECT
    # the dump request's chain as it stands after the dump: header, status (flush); data in the dump
    old_req = oc["dump_request (softc.vtblk_dump_request)"]
    req = softc + sc_t.off("vtblk_dump_request")
    hdr = req - DMAP + lay["vtblk_request"].off("vbr_hdr")
    status = req - DMAP + lay["vtblk_request"].off("vbr_ack")
    # recorded values that point at the dump request move with it under another layout
    relocate = {
        old_req: req,
        old_req - DMAP: hdr,
        old_req - DMAP + real["vtblk_request"].off("vbr_ack"): status,
    }
    w.put(table, struct.pack("<QIHH", hdr, 16, 1, 1))
    w.put(table + 16, struct.pack("<QIHH", status, 1, 2, 2))
    w.put(table + 32, struct.pack("<QIHH", status, 1, 2, 3))
    # sglist: segments follow the header (sg_segs = sglist + sizeof), 35 of them
    w.put_va(sg + sg_t.off("sg_segs"), _u(sg + sg_t.size, 8))
    w.put_va(sg + sg_t.off("sg_maxseg"), _u(oc["vq_max_indirect_size"], 2))
    w.put_va(sg + sg_t.size, _u(hdr, 8) + _u(16, 8) + _u(status, 8) + _u(1, 8) + _u(status, 8) + _u(1, 8))
    w.put_va(sg + sg_t.off("sg_nseg"), _u(2, 2))
    # the recorded differing fields, with their three values
    for p in run["pages"]:
        base = int(p["pa"], 16)
        for r in p["ranges"]:
            size = r["field_size"]
            off = int(r["field_page_offset"], 16)
            moved = _field_offset(r, lay, real)
            if moved is not None:
                off = off - int(r["field_offset_in_object"], 16) + moved
            m = re.search(r"\((\d+) fields", r["field"])
            count = int(m.group(1)) if m else 1
            stride = real["vring_used_elem"].size if m else 0  # hardware layout (virtio spec)
            for k in range(count):
                for img in IMAGES:
                    value = int(r[img], 16)
                    w.put(base + off + k * stride, _u(relocate.get(value, value), size), (img,))
    return w


def _field_offset(r: dict, lay: Layouts, real: Layouts) -> int | None:
    """A recorded driver field's offset in its object under ``lay`` (None: hardware layout, unchanged)."""
    obj, fld = r["object"], r["field"]
    m = re.fullmatch(r"(\w+)\[(\d+)\]\.(\w+)", fld)
    if obj.startswith("struct virtqueue"):
        if m:
            dx = lay["vq_desc_extra"]
            return lay["virtqueue"].off("vq_descx") + int(m.group(2)) * dx.size + dx.off(m.group(3))
        return lay["virtqueue"].off(fld)
    if obj.startswith("struct vtblk_softc"):
        if fld.startswith("vtblk_dump_request."):
            sub = fld.split(".", 1)[1]
            return lay["vtblk_softc"].off("vtblk_dump_request") + lay["vtblk_request"].off(sub)
        return lay["vtblk_softc"].off(fld)
    if obj.startswith("struct sglist_seg") and m:
        # recorded relative to the segment array, which follows the sglist header (sg_segs = sglist + size)
        seg = lay["sglist_seg"]
        return lay["sglist"].size - real["sglist"].size + int(m.group(2)) * seg.size + seg.off(m.group(3))
    if obj.startswith("struct sglist"):
        return lay["sglist"].off(fld)
    return None


class FakeVmcore:
    """The dump's side: the dumped pages, their page tables (translate), symbols; like reader.Vmcore."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.info = {"format": "minidump amd64 v2", "kind": "minidump", "dmapbase": DMAP}
        self.path = f"evidence:{world.run}"

    def phys_pages(self):
        return sorted(self.w.pages["dump"])

    def read_phys(self, pa: int, size: int) -> bytes:
        out = b""
        while len(out) < size:
            cur = pa + len(out)
            n = min(size - len(out), PAGE - cur % PAGE)
            out += bytes(self.w.pages["dump"][cur - cur % PAGE][cur % PAGE : cur % PAGE + n])
        return out

    def translate(self, va: int) -> int:
        return self.w.translate(va)

    def read(self, va: int, size: int) -> bytes:
        return self.read_phys(self.translate(va), size)

    def symbol(self, name: str) -> int:
        return self.w.symbols[name]


class _Pages:
    def __init__(self, pages: dict[int, bytearray]) -> None:
        self._pages = pages
        self.ranges = [(pa, PAGE, 0) for pa in sorted(pages)]

    def read(self, pa: int, size: int) -> bytes:
        return bytes(self._pages[pa - pa % PAGE][pa % PAGE : pa % PAGE + size])


def live(world: World, image: str) -> LiveMemory:
    return LiveMemory.from_image(_Pages(world.pages[image]))

"""The requests a dumped virtqueue shows in flight, and the driver's free list of requests.

FreeBSD 12.1's vtblk writes each dump block through the one request embedded in its softc
(``vtblk_dump_request``); a driver may also have several requests outstanding at once, the others taken
off the softc's ``vtblk_req_free`` TAILQ. Which requests are in flight is read from the dumped virtqueue
itself: every ``vq_descx[i]`` with a cookie (the ``struct vtblk_request``) and ``ndescs`` > 0. A cookie is
only believed when it is the embedded dump request or an element of ``vtblk_req_free`` as the live images
before and after the dump hold that list (walked through ``tqh_first`` / ``vbr_link.tqe_next``).

Rules (`FieldFact`, source DWARF) for what taking requests off the free list leaves in a dumped copy:
each borrowed request's header (write/flush, a sector this dump writes), ``vbr_bp`` (0 or a bio on the
dumping stack), ``vbr_ack`` (0 / 0xff) and ``vbr_link`` (cleared or trashed when taken off the list);
the softc's ``tqh_first`` / ``tqh_last`` and the remaining neighbours' links: the list minus exactly the
borrowed requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.verify.dumpdevice.fieldfacts import (
    STATUS_VALUES,
    VIRTIO_BLK_TYPES,
    FieldFact,
    Values,
    sector_verdict,
    unchanged,
)
from harness.verify.dumpdevice.images import ImageSet
from harness.verify.dumpdevice.layouts import Layouts

DW = "DWARF"
#: the most list elements walked (FreeBSD preallocates one request per ring entry, <= 32768)
MAX_LIST = 1 << 16
#: what QUEUE_MACRO_DEBUG_TRASH writes into a removed element's links
TRASH = 0xFFFF_FFFF_FFFF_FFFF
#: how far from ddb's trap frame a pointer still lies in the stack ddb runs on (KSTACK_PAGES <= 16)
STACK_SPAN = 16 * 4096


@dataclass(frozen=True)
class Outstanding:
    """One ``vq_descx`` entry the dumped virtqueue shows with a request in flight."""

    head: int  # descriptor index
    ndescs: int
    cookie: int  # the request's kernel VA


@dataclass
class RequestSet:
    """The driver's requests as the three images show them."""

    name: str  # "vtblk0"
    dump_request: int  # VA of the softc's embedded vtblk_dump_request
    outstanding: list[Outstanding] = field(default_factory=list)  # from the dumped vq_descx
    #: image -> the free list's elements in order (tqh_first first), walked in that image
    free_lists: dict[str, list[int]] = field(default_factory=dict)
    pa_of: dict[int, int] = field(default_factory=dict)  # request PA -> its VA (every known request)

    @property
    def in_flight(self) -> list[Outstanding]:
        """Outstanding entries whose cookie is a known request (a non-request is no request in flight)."""
        return [o for o in self.outstanding if o.ndescs > 0 and self.is_request(o.cookie) is not None]

    def is_request(self, va: int) -> str | None:
        """What ``va`` is as a request of this driver: the dump request, an element of the free list."""
        if va == self.dump_request:
            return f"{self.name}'s vtblk_dump_request"
        for img, elems in self.free_lists.items():
            if va in elems:
                k = elems.index(va)
                return f"a struct vtblk_request of {self.name}'s vtblk_req_free (element {k} {img} the dump)"
        return None

    @property
    def borrowed(self) -> list[int]:
        """Requests in flight taken off the free list (each once, in descriptor order)."""
        out: list[int] = []
        for o in self.in_flight:
            if o.cookie != self.dump_request and o.cookie not in out:
                out.append(o.cookie)
        return out


def walk_free_list(images: ImageSet, image: str, head_va: int, next_off: int, bound: int) -> list[int]:
    """The elements of a TAILQ from its head pointer at ``head_va``, in image ``image`` (stops at NULL, a
    cycle, an unreadable element or ``bound`` elements)."""
    out: list[int] = []
    seen: set[int] = set()
    cur = images.uint_va(image, head_va, 8)
    while cur and cur not in seen and len(out) < bound:
        if images.pa_of(cur) is None:
            break
        seen.add(cur)
        out.append(cur)
        cur = images.uint_va(image, cur + next_off, 8)
    return out


def find_requests(
    name: str,
    images: ImageSet,
    lay: Layouts,
    *,
    softc: int,
    vq: int,
    num: int,
) -> RequestSet:
    """The dump request, the free list (before/after) and the requests the dumped virtqueue shows."""
    vq_t, dx_t, sc_t, rq_t = lay["virtqueue"], lay["vq_desc_extra"], lay["vtblk_softc"], lay["vtblk_request"]
    rs = RequestSet(name, softc + sc_t.off("vtblk_dump_request"))
    if sc_t.has("vtblk_req_free.tqh_first") and rq_t.has("vbr_link.tqe_next"):
        bound = MAX_LIST
        if sc_t.has("vtblk_request_count"):
            count = images.uint_va("after", softc + sc_t.off("vtblk_request_count"), 4)
            bound = min(MAX_LIST, max(num, count or 0) + 1)
        for img in ("before", "after"):
            head = softc + sc_t.off("vtblk_req_free.tqh_first")
            elems = walk_free_list(images, img, head, rq_t.off("vbr_link.tqe_next"), bound)
            if elems:
                rs.free_lists[img] = elems
    for va in [rs.dump_request, *(e for elems in rs.free_lists.values() for e in elems)]:
        pa = images.pa_of(va)
        if pa is not None:
            rs.pa_of.setdefault(pa, va)
    descx = vq + vq_t.off("vq_descx")
    nd_size = dx_t.size_of("ndescs") or 2
    for i in range(num):
        e = descx + i * dx_t.size
        c = images.uint_va("dump", e + dx_t.off("cookie"), 8)
        if c:
            n = images.uint_va("dump", e + dx_t.off("ndescs"), nd_size) or 0
            # a cookie naming a request through another mapping still names that request
            pa = images.pa_of(c)
            rs.outstanding.append(Outstanding(i, n, rs.pa_of.get(pa, c) if pa is not None else c))
    return rs


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def request_facts(
    rs: RequestSet,
    images: ImageSet,
    lay: Layouts,
    *,
    softc: int,
    stacks: dict[int, str],
    capacity: int | None,
    extent: tuple[int, int] | None,
) -> list[FieldFact]:
    """Facts for every request borrowed from the free list, the softc's list head and tail, and the links
    of the elements next to a borrowed one."""
    sc_t, rq_t = lay["vtblk_softc"], lay["vtblk_request"]
    out: list[FieldFact] = []

    def add(va: int, size: int, what: str, check: Callable[[Values], str | None]) -> None:
        pa = images.pa_of(va)
        if pa is not None:
            out.append(FieldFact(pa, size, what, DW, check))

    for req in rs.borrowed:
        out += _borrowed_facts(rs, req, images, lay, stacks, capacity, extent)
    borrowed = set(rs.borrowed)
    if not borrowed or not sc_t.has("vtblk_req_free.tqh_first"):
        return out
    head_va = softc + sc_t.off("vtblk_req_free.tqh_first")
    next_off, prev_off = rq_t.off("vbr_link.tqe_next"), rq_t.off("vbr_link.tqe_prev")
    taken = plural(len(borrowed), "request")
    # value candidates per field: field VA -> {value: why}
    heads: dict[int, str] = {}
    tails: dict[int, str] = {}
    links: dict[tuple[int, str], dict[int, str]] = {}  # (element, member) -> {value: why}
    for img, elems in rs.free_lists.items():
        rest = [e for e in elems if e not in borrowed]
        heads.setdefault(
            rest[0] if rest else 0,
            f"head is the free list minus the {taken} taken off it (the list {img} the dump, "
            f"{len(elems)} elements, without {', '.join(f'{b:#x}' for b in rs.borrowed)})",
        )
        tails.setdefault(
            rest[-1] + next_off if rest else head_va,
            f"tail of the free list minus the {taken} taken off it (the list {img} the dump)",
        )
        for k, e in enumerate(elems):
            if e in borrowed:
                continue
            j = rest.index(e)
            nxt = rest[j + 1] if j + 1 < len(rest) else 0
            prev = rest[j - 1] + next_off if j else head_va
            if (elems[k + 1] if k + 1 < len(elems) else 0) != nxt:
                links.setdefault((e, "tqe_next"), {}).setdefault(
                    nxt, f"the next element once the {taken} in flight left the list ({img} the dump)"
                )
            if (elems[k - 1] + next_off if k else head_va) != prev:
                where = "the softc's tqh_first" if not j else f"{rest[j - 1]:#x}'s tqe_next"
                links.setdefault((e, "tqe_prev"), {}).setdefault(
                    prev, f"{where}, once the {taken} in flight left the list ({img} the dump)"
                )

    def one_of(cands: dict[int, str]) -> Callable[[Values], str | None]:
        def check(v: Values) -> str | None:
            d = v.get("dump")
            if d is not None and d in cands:
                return f"{d:#x}: {cands[d]}"
            return unchanged(v)

        return check

    add(head_va, 8, f"struct vtblk_softc.vtblk_req_free of {rs.name}", one_of(heads))
    if sc_t.has("vtblk_req_free.tqh_last"):
        add(
            softc + sc_t.off("vtblk_req_free.tqh_last"),
            8,
            f"struct vtblk_softc.vtblk_req_free.tqh_last of {rs.name}",
            one_of(tails),
        )
    for (elem, member), cands in links.items():
        add(
            elem + (next_off if member == "tqe_next" else prev_off),
            8,
            f"struct vtblk_request.vbr_link.{member} of {rs.name}'s free request {elem:#x} (a neighbour "
            "of a request in flight)",
            one_of(cands),
        )
    return out


def _borrowed_facts(
    rs: RequestSet,
    req: int,
    images: ImageSet,
    lay: Layouts,
    stacks: dict[int, str],
    capacity: int | None,
    extent: tuple[int, int] | None,
) -> list[FieldFact]:
    """A request taken off the free list and in flight: the same rules as the dump request's, plus its
    links, which taking it off the list cleared (vtblk_request_dequeue zeroes the request) or trashed."""
    rq_t = lay["vtblk_request"]
    heads = [o.head for o in rs.in_flight if o.cookie == req]
    what = f"struct vtblk_request.{{}} of {rs.name}'s request {req:#x} (taken off vtblk_req_free, in flight"
    what += f" at vq_descx[{heads[0]}])"
    out: list[FieldFact] = []

    def add(member: str, size: int, check: Callable[[Values], str | None]) -> None:
        if not rq_t.has(member):
            return
        pa = images.pa_of(req + rq_t.off(member))
        if pa is not None:
            out.append(FieldFact(pa, size, what.format(member), DW, check))

    def link_check(v: Values) -> str | None:
        d = v.get("dump")
        if d == 0:
            return "0: cleared when the request was taken off vtblk_req_free"
        if d == TRASH:
            return f"{d:#x}: trashed by TAILQ_REMOVE (QUEUE_MACRO_DEBUG_TRASH)"
        return unchanged(v)

    for member, size, check in request_checks(req, lay, images, stacks, capacity, extent):
        add(member, size, check)
    add("vbr_link.tqe_next", 8, link_check)
    add("vbr_link.tqe_prev", 8, link_check)
    return out


def request_checks(
    req: int,
    lay: Layouts,
    images: ImageSet,
    stacks: dict[int, str],
    capacity: int | None,
    extent: tuple[int, int] | None,
) -> list[tuple[str, int, Callable[[Values], str | None]]]:
    """(member, size, rule) for what every virtio-blk request in flight holds, whichever request it is
    (the softc's embedded dump request or one taken off the free list): a write or flush header with a
    sector inside the dump's extent, a bio on the dumping stack or none, a status byte of 0 or 0xff."""
    rq_t = lay["vtblk_request"]

    def type_check(v: Values) -> str | None:
        d = v.get("dump")
        return unchanged(v) or (f"{d} ({VIRTIO_BLK_TYPES[d]})" if d in (1, 4) else None)

    def ioprio_check(v: Values) -> str | None:
        d = v.get("dump")
        return unchanged(v) or (f"{d}" if d is not None and d <= 0xFF else None)

    def sector_check(v: Values) -> str | None:
        d = v.get("dump")
        if unchanged(v) or d is None:
            return unchanged(v)
        typ = images.uint_va("dump", req + rq_t.off("vbr_hdr.type"), 4)
        return sector_verdict(typ if typ is not None else 1, d, capacity, extent)

    def ack_check(v: Values) -> str | None:
        d = v.get("dump")
        return (unchanged(v) or STATUS_VALUES.get(d)) if d is not None else None

    return [
        ("vbr_hdr.type", 4, type_check),
        ("vbr_hdr.ioprio", 4, ioprio_check),
        ("vbr_hdr.sector", 8, sector_check),
        ("vbr_bp", 8, bio_check(stacks)),
        ("vbr_ack", 1, ack_check),
    ]


def bio_check(stacks: dict[int, str]) -> Callable[[Values], str | None]:
    """``vbr_bp``: 0, or a bio on the stack the dump runs on (within `STACK_SPAN` of a known frame)."""

    def check(v: Values) -> str | None:
        d = v.get("dump")
        if d == 0:
            return "0"
        if d is not None and any(abs(d - f) < STACK_SPAN for f in stacks):
            f = min(stacks, key=lambda x: abs(d - x))
            return f"{d:#x} = {f:#x} {'-' if d < f else '+'} {abs(d - f):#x}: a bio on {stacks[f]}"
        return unchanged(v)

    return check

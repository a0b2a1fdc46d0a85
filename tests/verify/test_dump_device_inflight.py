"""More than one request in flight: the dumped virtqueue, softc, free list, requests and sglist of a driver
that submits K requests per dump write are explained field by field from DWARF and the rings - and a
perturbed field is still caught.

The world (`inflight_world`) plays such a driver (the dump request plus K-1 taken off ``vtblk_req_free``,
as the MockFreeBSDKernel's ``mock.vtblk_inflight=K``) at the offsets of two kernels' layouts: the
recorded FreeBSD 12.1 DWARF and a gcc -g stand-in's (other member order and offsets).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import evidence_world as ew
import inflight_world as iw
import pytest

from harness.verify import verify_dump
from harness.verify.dumpdevice.driver import NEEDED_STRUCTS
from harness.verify.dumpdevice.layouts import Layouts

STANDIN = Path(__file__).with_name("dumpdevice_standin.c")


@pytest.fixture(scope="module")
def standin_layouts(tmp_path_factory) -> Layouts:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    exe = tmp_path_factory.mktemp("standin") / "kernel.debug"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(STANDIN)], check=True)
    return Layouts.from_dwarf(exe, NEEDED_STRUCTS)


@pytest.fixture(params=["12.1", "stand-in"])
def lay(request) -> Layouts:
    return ew.layouts() if request.param == "12.1" else request.getfixturevalue("standin_layouts")


def _verify(world: ew.World, lay: Layouts | None):
    return verify_dump(
        ew.FakeVmcore(world),
        ew.live(world, "after"),
        before=ew.live(world, "before"),
        walk_page_tables=False,
        device_state=world.state,
        kernel_debug=lay,
    )


def _u(world: ew.World, image: str, va: int, size: int) -> int:
    pa = world.pa(va)
    return int.from_bytes(world.pages[image][pa - pa % 4096][pa % 4096 :][:size], "little")


def _set(world: ew.World, va: int, value: int, size: int) -> None:
    pa = world.pa(va)
    world.pages["dump"][pa - pa % 4096][pa % 4096 : pa % 4096 + size] = value.to_bytes(size, "little")


def _in_flight(world: ew.World, drv: iw.Driver) -> list[tuple[int, int]]:
    """(descriptor head, request VA) of every request the dumped virtqueue shows outstanding."""
    out = []
    for i in range(iw.NUM):
        c = _u(world, "dump", drv.descx(i, "cookie"), 8)
        if c:
            out.append((i, c))
    return out


@pytest.mark.parametrize("k", [2, 3, 8])
def test_k_requests_in_flight_are_explained_field_by_field(lay, k):
    world, drv = iw.build(lay, k)
    o = drv.o
    head_va = o.softc + lay["vtblk_softc"].off("vtblk_req_free.tqh_first")
    # the world holds the third values the old rules could not explain: the free list's head while the
    # borrowed requests are off it (before == after), a cookie that is not the dump request
    assert _u(world, "before", head_va, 8) == _u(world, "after", head_va, 8) != _u(world, "dump", head_va, 8)
    flying = _in_flight(world, drv)
    assert len(flying) == k and o.dump_request in {c for _h, c in flying}
    report = _verify(world, lay)
    assert report.status == "PASSED", report.summary()
    named = {d.address for d in report.differences if d.dump_device == "named"}
    for va in (head_va, o.vq, o.sglist, next(c for _h, c in flying if c != o.dump_request)):
        assert world.pa(va) & ~0xFFF in named, hex(va)
    text = "\n".join(e for d in report.differences for e in d.evidence)
    taken = "1 request" if k == 2 else f"{k - 1} requests"
    assert f"DWARF: struct vtblk_softc.vtblk_req_free of vtblk0: {_u(world, 'dump', head_va, 8):#x}: " in text
    assert f"head is the free list minus the {taken} taken off it" in text
    assert f"vq_free_cnt of vtblk0's queue: {iw.NUM - k} = {iw.NUM} - {k} descriptor(s) held by {k}" in text
    assert "= a struct vtblk_request of vtblk0's vtblk_req_free" in text
    assert "vbr_link.tqe_next of vtblk0's request" in text and "0: cleared when the request was taken" in text
    assert "vbr_ack of vtblk0's request" in text and "0xff (preset by the driver" in text
    assert "the free chain's head after" in text
    # the sglist holds the last request built: the last one taken off the free list
    last = [c for _h, c in sorted(flying) if c != o.dump_request][-1]
    sg, seg = lay["sglist"], lay["sglist_seg"]
    segs = o.sglist + sg.size
    hdr = world.pa(last + lay["vtblk_request"].off("vbr_hdr"))
    assert _u(world, "dump", segs + seg.off("ss_paddr"), 8) == hdr
    assert "struct sglist.sg_segs[" in text and " of vtblk0: segment " in text
    ack = world.pa(last + lay["vtblk_request"].off("vbr_ack"))
    for j, line in (
        (0, f"segment 0 of 3: request header {hdr:#x} of request {last:#x} (in flight)"),
        (2, f"segment 2 of 3: status byte {ack:#x} of request {last:#x} (in flight)"),
    ):
        va = segs + j * seg.size + seg.off("ss_paddr")
        d, b, a = (_u(world, img, va, 8).to_bytes(8, "little") for img in ("dump", "before", "after"))
        if any(d[i] not in (b[i], a[i]) for i in range(8)):  # a byte holding a third value
            assert line in text  # named as the borrowed request's own buffer
    assert f"{k - 1} request" in report.dump_device["driver"][0]


def test_one_request_in_flight_needs_no_free_list_rule(lay):
    """FreeBSD 12.1's own dump path: only the embedded request, the free list untouched."""
    world, drv = iw.build(lay, 1)
    assert len(_in_flight(world, drv)) == 1
    report = _verify(world, lay)
    assert report.status == "PASSED", report.summary()
    text = "\n".join(e for d in report.differences for e in d.evidence)
    assert "vtblk_req_free" not in text and "vtblk_dump_request (the request in flight)" in text


def _borrowed(world: ew.World, drv: iw.Driver) -> tuple[int, int]:
    return next((h, c) for h, c in _in_flight(world, drv) if c != drv.o.dump_request)


def _field(lay: Layouts, struct: str, member: str) -> int:
    return lay[struct].off(member)


PERTURBATIONS = {
    # what: (VA of the field, size, dumped value to write) from (world, driver, layouts)
    "a cookie pointing to a non-request (the softc)": lambda w, d, lay: (
        d.descx(_borrowed(w, d)[0], "cookie"),
        8,
        d.o.softc,
    ),
    "a cookie pointing into a request, not at one": lambda w, d, lay: (
        d.descx(_borrowed(w, d)[0], "cookie"),
        8,
        _borrowed(w, d)[1] + 8,
    ),
    "a free-list head pointing outside the list": lambda w, d, lay: (
        d.o.softc + _field(lay, "vtblk_softc", "vtblk_req_free.tqh_first"),
        8,
        ew.DMAP + iw.PA["data"] + 0x40,
    ),
    "a free-list head skipping one request too many": lambda w, d, lay: (
        d.o.softc + _field(lay, "vtblk_softc", "vtblk_req_free.tqh_first"),
        8,
        _u(
            w,
            "dump",
            _u(w, "dump", d.o.softc + _field(lay, "vtblk_softc", "vtblk_req_free.tqh_first"), 8)
            + _field(lay, "vtblk_request", "vbr_link.tqe_next"),
            8,
        ),
    ),
    "vq_free_cnt inconsistent with the descriptors held": lambda w, d, lay: (
        d.o.vq + _field(lay, "virtqueue", "vq_free_cnt"),
        2,
        iw.NUM - 1,
    ),
    "vq_desc_head_idx not the free chain's head": lambda w, d, lay: (
        d.o.vq + _field(lay, "virtqueue", "vq_desc_head_idx"),
        2,
        7,
    ),
    "a borrowed request's status byte no request gives": lambda w, d, lay: (
        _borrowed(w, d)[1] + _field(lay, "vtblk_request", "vbr_ack"),
        1,
        0x55,
    ),
    "a borrowed request's sector outside the dump's extent": lambda w, d, lay: (
        _borrowed(w, d)[1] + _field(lay, "vtblk_request", "vbr_hdr.sector"),
        8,
        0x20,
    ),
    "a borrowed request's link neither cleared nor its old one": lambda w, d, lay: (
        _borrowed(w, d)[1] + _field(lay, "vtblk_request", "vbr_link.tqe_prev"),
        8,
        ew.DMAP + 0x1234560,
    ),
    "a borrowed request's bio nowhere near the dumping stack": lambda w, d, lay: (
        _borrowed(w, d)[1] + _field(lay, "vtblk_request", "vbr_bp"),
        8,
        ew.DMAP + 0x7770000,
    ),
}


@pytest.mark.parametrize("what", list(PERTURBATIONS))
def test_a_perturbed_in_flight_field_fails(lay, what):
    world, drv = iw.build(lay, 2)
    va, size, value = PERTURBATIONS[what](world, drv, lay)
    assert value != _u(world, "dump", va, size)
    _set(world, va, value, size)
    report = _verify(world, lay)
    assert not report.passed, f"{what}: {report.summary()}"
    pa = world.pa(va)
    bad = next(d for d in report.differences if d.address == pa & ~0xFFF)
    assert not bad.explained and bad.dump_device == "", (what, bad)
    assert any("REFUTED" in e for e in bad.evidence), bad.evidence
    assert any(
        int(u["address"], 16) <= pa + k < int(u["address"], 16) + u["bytes"]
        for u in bad.unexplained
        for k in range(size)
    ), bad.unexplained


def test_the_sglist_must_hold_one_requests_header_and_status(lay):
    """The sglist's first segment is a request's header and its last that same request's status byte:
    the dump request's status under a borrowed request's header is refuted."""
    world, drv = iw.build(lay, 2)
    sg, seg = lay["sglist"], lay["sglist_seg"]
    segs = drv.o.sglist + sg.size
    first = _u(world, "dump", segs + seg.off("ss_paddr"), 8)
    dump_hdr = world.pa(drv.o.dump_request + lay["vtblk_request"].off("vbr_hdr"))
    other_ack = world.pa(
        (drv.o.dump_request if first != dump_hdr else _borrowed(world, drv)[1])
        + lay["vtblk_request"].off("vbr_ack")
    )
    last = segs + 2 * seg.size + seg.off("ss_paddr")
    assert _u(world, "dump", last, 8) != other_ack
    _set(world, last, other_ack, 8)
    report = _verify(world, lay)
    assert not report.passed
    bad = next(d for d in report.differences if d.address == world.pa(last) & ~0xFFF)
    assert not bad.explained and any("sg_segs[2]" in e and "REFUTED" in e for e in bad.evidence)


def test_without_dwarf_the_pages_are_hypervisor_tied_never_failed():
    world, _drv = iw.build(ew.layouts(), 2)
    report = _verify(world, None)
    assert report.passed, report.summary()
    assert report.status.startswith("PASSED (with ") and report.pages_dump_device_unnamed >= 3

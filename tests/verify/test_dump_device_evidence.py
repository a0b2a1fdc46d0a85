"""The dump device's own I/O state in real FreeBSD 12.1 dumps (recorded evidence) is explained byte by byte
with named evidence - and a perturbed byte is still caught.

The images are rebuilt from tests/data/freebsd-12.1-evidence (`evidence_world`): every byte real 12.1 dumps
held differently from the live images before and after `dump`, with that kernel's DWARF layouts.
"""

from __future__ import annotations

import evidence_world as ew
import pytest

from harness.verify import verify_dump
from harness.verify.dumpdevice import DumpDeviceState

RUNS = ("minidump-nmi", "full-alt-break", "minidump-nmi-fresh", "minidump-nmi-repeat", "minidump-nmi-2vcpu")


def _verify(world: ew.World, *, dwarf: bool = True):
    return verify_dump(
        ew.FakeVmcore(world),
        ew.live(world, "after"),
        before=ew.live(world, "before"),
        walk_page_tables=False,
        device_state=world.state,
        kernel_debug=ew.layouts() if dwarf else None,
    )


@pytest.mark.parametrize("run", RUNS)
def test_every_differing_byte_of_a_real_run_is_explained_with_dwarf(run):
    world = ew.build(run)
    report = _verify(world)
    assert report.passed, report.summary()
    assert report.status == "PASSED"
    by_pa = {d.address: d for d in report.differences}
    # the three pages the old rules reported are now named, field by field
    assert len(world.unexplained_pages) == 3
    for pa in world.unexplained_pages:
        d = by_pa[pa]
        assert d.explained and d.dump_device == "named" and d.kind == "dump-device-state", d
        assert d.evidence and all(e.startswith(("DWARF: ", "hypervisor: ")) for e in d.evidence)
    text = "\n".join(e for d in report.differences for e in d.evidence)
    assert "DWARF: struct virtqueue.vq_free_cnt of vtblk0's queue: 255 = 256 - 1" in text
    assert (
        "vq_descx[0].cookie of vtblk0's queue" in text
        and "vtblk_dump_request (the request in flight)" in text
    )
    assert "vtblk_mtx.mtx_lock of vtblk0" in text and "held by kdb_thread" in text
    assert "sg_segs[1] of vtblk0: segment 1 of 3: data" in text
    assert report.dump_device["driver"] and "vtblk0: softc" in report.dump_device["driver"][0]
    assert "dump-device state (named" in report.summary()


@pytest.mark.parametrize("run", RUNS)
def test_without_dwarf_the_device_pages_get_their_own_verdict(run):
    world = ew.build(run)
    report = _verify(world, dwarf=False)
    assert report.passed, report.summary()
    assert report.pages_dump_device_unnamed == 3
    assert report.status == "PASSED (with 3 dump-device pages not nameable without kernel.debug)"
    assert {d.address for d in report.differences if d.dump_device == "unnamed"} == set(
        world.unexplained_pages
    )
    assert "hypervisor-tied, not nameable without DWARF" in report.summary()
    assert report.dump_device["no_dwarf_reason"]


def _flip(world: ew.World, pa: int, value: int) -> None:
    world.pages["dump"][pa - pa % 4096][pa % 4096] = value


def _softc_pa(world: ew.World) -> int:
    return world.pa(int(ew.evidence()["runs"][0]["object_chain_in_dump"]["softc"], 16))


@pytest.mark.parametrize(
    ("what", "where", "value"),
    [
        (
            "a stable softc byte (vtblk_flags)",
            lambda w, lay: _softc_pa(w) + lay["vtblk_softc"].off("vtblk_flags"),
            0x5A,
        ),
        (
            "vbr_link, beside the header the ring names",
            lambda w, lay: _softc_pa(w) + lay["vtblk_softc"].off("vtblk_dump_request.vbr_link.tqe_next"),
            0x11,
        ),
        (
            "the status byte holding a value no request gives",
            lambda w, lay: _softc_pa(w) + lay["vtblk_softc"].off("vtblk_dump_request.vbr_ack"),
            0x55,
        ),
        (
            "vq_free_cnt inconsistent with one request in flight",
            lambda w, lay: 0x27FF000 + lay["virtqueue"].off("vq_free_cnt"),
            0xFE,
        ),
        (
            "the lock word naming a thread that is not ddb's",
            lambda w, lay: _softc_pa(w) + lay["vtblk_softc"].off("vtblk_mtx.mtx_lock") + 1,
            0x77,
        ),
        ("an indirect-table entry beyond every chain", lambda w, lay: 0x3335800 + 16 * 20 + 8, 0x01),
        ("the data segment's length, not a whole sector", lambda w, lay: 0x3335800 + 16 + 8, 0x33),
        (
            "the sglist's data segment disagreeing with the indirect table built from it",
            lambda w, lay: 0x3335000 + lay["sglist"].size + lay["sglist_seg"].size + 1,
            0x90,
        ),
    ],
)
@pytest.mark.parametrize("dwarf", [True, False])
def test_a_perturbed_dump_device_byte_fails(what, where, value, dwarf):
    world = ew.build("minidump-nmi")
    pa = where(world, ew.layouts())
    _flip(world, pa, value)
    report = _verify(world, dwarf=dwarf)
    near_driver_object = (
        pa - pa % 4096 == 0x27FF000
        or (pa - pa % 4096 == _softc_pa(world) - _softc_pa(world) % 4096 and "status" not in what)
        or "sglist" in what
    )
    if not dwarf and near_driver_object:
        # without DWARF nobody can name the bytes around the driver's objects: the page keeps its own
        # heading and the verdict says so - never a plain PASSED
        d = next(d for d in report.differences if d.address == pa - pa % 4096)
        assert d.dump_device == "unnamed" and report.status.startswith("PASSED (with 3 dump-device pages")
        return
    assert not report.passed, f"{what}: {report.summary()}"
    bad = next(d for d in report.differences if d.address == pa - pa % 4096)
    assert not bad.explained and bad.dump_device == "", (what, bad)
    assert any(int(u["address"], 16) <= pa < int(u["address"], 16) + 8 for u in bad.unexplained), (
        bad.unexplained
    )


def test_state_json_round_trip_and_qemu_answers(tmp_path):
    """`DumpDeviceState.from_qemu` reads QEMU 7.2's real answers (evidence section 6); JSON round-trips."""
    recorded = ew.evidence()["qemu"]["qmp"]

    def qmp(cmd, **args):
        for a in recorded:
            if a["command"]["execute"] == cmd and a["command"].get("arguments", {}) == args:
                return a["return"]
        raise RuntimeError(f"no recorded answer to {cmd} {args}")

    state = DumpDeviceState.from_qemu(qmp)
    assert [(d.short, q.index, q.num, q.desc, q.avail, q.used) for d, q in state.queues] == [
        ("virtio-disk0", 0, 256, 0x337C000, 0x337D000, 0x337E000)
    ]
    path = state.write(tmp_path / "dump-device-state.json")
    again = DumpDeviceState.read(path)
    assert again == state
    with pytest.raises(FileExistsError):
        state.write(path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a dump-device state file"):
        DumpDeviceState.read(tmp_path / "bad.json")


def test_old_qemu_without_virtio_queries_gives_a_note_not_an_error():
    def qmp(cmd, **_args):
        raise RuntimeError("The command x-query-virtio has not been found")

    state = DumpDeviceState.from_qemu(qmp)
    assert state.devices == [] and "x-query-virtio failed" in state.notes[0]


@pytest.mark.parametrize("dwarf", [True, False])
def test_a_dump_write_outside_the_dumps_extent_on_disk_fails(tmp_path, dwarf):
    """With the disk's size (QEMU) and the vmcore's, a dump write must land where the dump lies: the end of
    the disk. The recorded header is inside it; the same header pointing near the disk's start is not."""
    world = ew.build("minidump-nmi")
    vmcore = tmp_path / "vmcore.0"
    with open(vmcore, "wb") as f:  # the recorded vmcore's size (evidence: dump_disk_placement)
        f.truncate(ew.evidence()["runs"][0]["dump_disk_placement"]["vmcore_size"])
    dump = ew.FakeVmcore(world)
    dump.path = str(vmcore)

    def run():
        return verify_dump(
            dump,
            ew.live(world, "after"),
            before=ew.live(world, "before"),
            walk_page_tables=False,
            device_state=world.state,
            kernel_debug=ew.layouts() if dwarf else None,
        )

    good = run()
    assert good.passed, good.summary()
    assert "inside the dump's extent" in "\n".join(e for d in good.differences for e in d.evidence)
    sector = _softc_pa(world) + ew.layouts()["vtblk_softc"].off("vtblk_dump_request.vbr_hdr.sector")
    _flip(world, sector + 2, 0x00)  # 0x137e3f -> 0x3e3f: 8 MiB into the 640 MiB disk
    bad = run()
    assert not bad.passed
    d = next(d for d in bad.differences if d.address == _softc_pa(world) & ~0xFFF)
    assert not d.explained and any("REFUTED" in e for e in d.evidence)


def test_disk_size_from_query_block():
    recorded = ew.evidence()["qemu"]["qmp"]
    block = [
        {
            "device": "",
            "qdev": "/machine/peripheral/virtio-disk0/virtio-backend",
            "inserted": {"image": {"virtual-size": 0x28000000}},
        }
    ]  # shape of QEMU's query-block

    def qmp(cmd, **args):
        if cmd == "query-block":
            return block
        return next(
            a["return"]
            for a in recorded
            if a["command"]["execute"] == cmd and a["command"].get("arguments", {}) == args
        )

    state = DumpDeviceState.from_qemu(qmp)
    assert state.devices[0].capacity_bytes == 0x28000000
    assert DumpDeviceState.from_json(state.to_json()) == state


@pytest.mark.parametrize("run", ["minidump-nmi", "full-alt-break"])
def test_panic_flow_without_ddb_names_the_dumping_thread(run):
    """A kernel without ddb dumps on panic: no before image, no kdb_thread; the lock holder and the bio's
    stack are the thread that panicked and dumped (the reader's crashed thread: dumptid, dumppcb)."""
    from types import SimpleNamespace

    world = ew.build(run)
    owner = world.symbols.pop("kdb_thread")
    frame = world.symbols.pop("kdb_frame")
    dump = ew.FakeVmcore(world)
    td = int.from_bytes(dump.read(owner, 8), "little")
    rsp = int.from_bytes(dump.read(frame, 8), "little")
    dump.threads = lambda: [SimpleNamespace(tid=100003, crashed=True, address=td, registers={"rsp": rsp})]
    report = verify_dump(
        dump,
        ew.live(world, "after"),
        walk_page_tables=False,
        flow="panic",
        device_state=world.state,
        kernel_debug=ew.layouts(),
    )
    assert report.status == "PASSED", report.summary()
    text = "\n".join(e for d in report.differences for e in d.evidence)
    assert (
        "held by the dumping thread (dumptid)" in text and "the dumping thread's saved stack pointer" in text
    )

"""The MockFreeBSDKernel's (a stand-in, NOT FreeBSD) dump device keeps the state FreeBSD 12.1's does.

The real evidence (/work/shared/freebsd-12.1-amd64/evidence/virtio-blk-dump-state.md): every dumped copy of
vtblk0's own driver memory shows exactly one request in flight, the write carrying that very page, so the
dump holds values equal to neither the live image before the dump nor the one after ("third values"):
`struct virtqueue` (vq_free_cnt 255, vq_desc_head_idx 1, vq_descx[0].cookie = &vtblk_dump_request,
ndescs 1), `struct vtblk_softc` (vtblk_mtx.mtx_lock = kdb_thread, the dump request's header {1, 1,
sector}, vbr_ack 0xff, vbr_bp into ddb's stack), `struct sglist` + the indirect table of vq_descx[0]
(header, data, status). A second dump in the same boot adds more (sg_nseg 3 against 2, the write's
header against the flush's). These tests read the mock's dumps and live images with the reader and the
mock's DWARF (its separate ``.debug`` file), the way a DWARF-based verifier must, and check the same
classes of differences; `mock.vtblk_inflight=2` puts two requests in flight at once.
"""

from __future__ import annotations

import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from mock_freebsd_kernel import INFLIGHT_KNOB, build_mock_kernel

ROOT = Path(__file__).resolve().parents[2]
PS_EVIDENCE = ROOT / "tests" / "data" / "transcripts" / "freebsd-12.1-ddb-ps" / "ddb-ps-12.1.txt"
PS_HEADER = "  pid  ppid  pgrp   uid  state   wmesg   wchan               cmd"


# ----------------------------------------------------------------------------- DWARF
def _type_size(die) -> int | None:
    while die is not None:
        if "DW_AT_byte_size" in die.attributes:
            return die.attributes["DW_AT_byte_size"].value
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
    return None


def struct_layouts(debug: Path, names: set[str]) -> dict[str, dict[str, tuple[int, int | None]]]:
    """member name -> (offset, size) of each named struct, from the DWARF of `debug`."""
    from elftools.elf.elffile import ELFFile

    out: dict[str, dict[str, tuple[int, int | None]]] = {}
    with open(debug, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if (
                    die.tag != "DW_TAG_structure_type"
                    or name is None
                    or "DW_AT_byte_size" not in die.attributes
                ):
                    continue
                sname = name.value.decode()
                if sname not in names or sname in out:
                    continue
                members = {"__size__": (0, die.attributes["DW_AT_byte_size"].value)}
                for m in die.iter_children():
                    if m.tag == "DW_TAG_member" and "DW_AT_name" in m.attributes:
                        off = m.attributes["DW_AT_data_member_location"].value
                        members[m.attributes["DW_AT_name"].value.decode()] = (
                            off,
                            _type_size(m.get_DIE_from_attribute("DW_AT_type")),
                        )
                out[sname] = members
    missing = names - out.keys()
    assert not missing, f"{debug}: no DWARF for struct {sorted(missing)}"
    return out


@dataclass
class Layout:
    """Offsets of the driver objects' fields, from DWARF (never hard-coded: they are the mock's own)."""

    s: dict[str, dict[str, tuple[int, int | None]]]

    def off(self, struct_name: str, path: str) -> int:
        """Offset of a dotted member path, e.g. ("vtblk_softc", "vtblk_mtx.mtx_lock")."""
        types = {
            ("vtblk_softc", "vtblk_mtx"): "mtx",
            ("vtblk_softc", "vtblk_dump_request"): "vtblk_request",
            ("vtblk_request", "vbr_hdr"): "virtio_blk_outhdr",
            ("virtqueue", "vq_ring"): "vring",
        }
        total, cur = 0, struct_name
        for part in path.split("."):
            total += self.s[cur][part][0]
            cur = types.get((cur, part), cur)
        return total

    def size(self, struct_name: str) -> int:
        return self.s[struct_name]["__size__"][1]


STRUCTS = {
    "virtqueue",
    "vq_desc_extra",
    "vring",
    "vtblk_softc",
    "vtblk_request",
    "virtio_blk_outhdr",
    "mtx",
    "sglist",
    "sglist_seg",
    "devclass",
    "device",
    "thread",
    "proc",
}


# ----------------------------------------------------------------------------- reading the three images
class Images:
    """One dump with the live images taken right before and right after it (physical reads)."""

    def __init__(self, vm, before, after):
        self.vm, self.before, self.after = vm, before, after

    def pa(self, va: int) -> int:
        return self.vm.translate(va)

    def read(self, which: str, va: int, size: int) -> bytes:
        pa = self.pa(va)
        if which == "dump":
            return self.vm.read_phys(pa, size)
        return bytes((self.before if which == "before" else self.after).read(pa, size))

    def u(self, which: str, va: int, size: int) -> int:
        return int.from_bytes(self.read(which, va, size), "little")

    def triple(self, va: int, size: int) -> tuple[int, int, int]:
        return tuple(self.u(w, va, size) for w in ("before", "dump", "after"))


@dataclass
class Driver:
    """vtblk0's objects, reached from the local symbol `vtblk_devclass` through pointers (DWARF offsets)."""

    softc: int
    vq: int
    sglist: int
    dump_request: int
    kdb_thread: int
    kstack: tuple[int, int]


def find_driver(img: Images, lay: Layout) -> Driver:
    vm = img.vm
    dc = vm.read_pointer(vm.symbol("vtblk_devclass"))
    name = vm.read_cstring(vm.read_pointer(dc + lay.off("devclass", "name")))
    assert name == "vtblk", name
    dev = vm.read_pointer(vm.read_pointer(dc + lay.off("devclass", "devices")))
    assert vm.read_cstring(vm.read_pointer(dev + lay.off("device", "nameunit"))) == "vtblk0"
    softc = vm.read_pointer(dev + lay.off("device", "softc"))
    vq = vm.read_pointer(softc + lay.off("vtblk_softc", "vtblk_vq"))
    sglist = vm.read_pointer(softc + lay.off("vtblk_softc", "vtblk_sglist"))
    assert vm.read_cstring(vq + lay.off("virtqueue", "vq_name")) == "vtblk0 request"
    td = vm.read_pointer(vm.symbol("kdb_thread"))
    kstack = vm.read_pointer(td + lay.off("thread", "td_kstack"))
    pages = vm.read_int(td + lay.off("thread", "td_kstack_pages"), 4)
    return Driver(
        softc,
        vq,
        sglist,
        softc + lay.off("vtblk_softc", "vtblk_dump_request"),
        td,
        (kstack, kstack + pages * 4096),
    )


def descx(lay: Layout, vq: int, i: int, member: str) -> int:
    return (
        vq
        + lay.off("virtqueue", "vq_descx")
        + i * lay.size("vq_desc_extra")
        + lay.off("vq_desc_extra", member)
    )


# ----------------------------------------------------------------------------- guest
def _needs_vm() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc) to build the mock kernel")
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")


def _boot(tmp_path: Path, kenv: dict[str, str]):
    from harness.run.config import ReproConfig
    from harness.run.rundir import make_dump_disk as _make_dump_disk
    from harness.run.sources.bare_kernel import bare_kernel_kenv
    from harness.vm.domain_xml import ExtraDisk, GuestSpec, IsoBoot
    from harness.vm.guest import Guest
    from images.grub_iso import build_kernel_iso

    mock = build_mock_kernel()
    cfg = ReproConfig(kernel=mock.kernel, memory_mib=128, kenv=kenv)
    iso = build_kernel_iso(mock.kernel, bare_kernel_kenv(cfg), tmp_path / "boot.iso")
    disk = _make_dump_disk(tmp_path / "dump.raw", cfg.memory_mib)
    spec = GuestSpec(memory_mib=128, boot=IsoBoot(iso), disks=(ExtraDisk(disk),), on_reboot="destroy")
    return mock, disk, Guest(spec, tmp_path)


def _in_ddb(guest):
    from harness.freebsd.enter import enter_ddb
    from harness.freebsd.stages import Stage, wait_for_stage

    wait_for_stage(guest.console, [Stage.ROOT_WAIT], 180, guest=guest)
    return enter_ddb(guest.console, "nmi", guest=guest, memory_mib=128)


def _dump(guest, ddb, disk: Path, kernel: Path, out: Path):
    """before image, ddb `dump`, after image, extraction: (before, after, vmcore path)."""
    from harness.freebsd.retrieve import from_dump_disk

    out.mkdir()
    before = guest.memory_image(out / "before.raw")
    assert ddb.dump().ok
    after = guest.memory_image(out / "after.raw")
    got = from_dump_disk(disk, out / "crash", guest=guest, kernel=kernel)  # pauses the guest to read its disk
    guest.resume()
    return before, after, got.vmcore


# ----------------------------------------------------------------------------- ps layout (no VM)
def ps_layout_problems(text: str) -> list[str]:
    """Rows of a ddb `ps` that do not follow the real 12.1 column layout: header, pid/ppid/pgrp/uid in
    5-wide columns, the state at column 25, the kernel name's '[' at column 61, thread rows with the tid
    left-aligned and no pid columns."""
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    bad = [] if lines and lines[0] == PS_HEADER else [f"header {lines[:1]!r}"]
    proc = re.compile(r"^[ \d]{4}\d [ \d]{4}\d [ \d]{4}\d [ \d]{4}\d  \S")
    thread = re.compile(r"^\d{6} {19}\S")
    for ln in lines[1:]:
        if not (proc.match(ln) or thread.match(ln)) or ln[61:62] != "[" or not ln.endswith("]"):
            bad.append(ln)
    return bad


def _evidence_sections() -> list[str]:
    raw = PS_EVIDENCE.read_bytes().decode()
    out = []
    for sec in raw.split("\n# ===== section ")[1:]:
        ps = sec.split("db> ps\r\n", 1)[1].split("db> ", 1)[0]
        out.append(ps)
    return out


def test_ps_layout_check_accepts_the_real_12_1_output():
    sections = _evidence_sections()
    assert len(sections) == 2
    for ps in sections:
        assert ps_layout_problems(ps) == []
    assert ps_layout_problems(PS_HEADER + "\n   11     0     0     0  RL  CPU 0  [idle: cpu0]\n")


# ----------------------------------------------------------------------------- the dumps (VM)
@pytest.mark.vm
def test_dumps_hold_the_driver_with_its_own_write_in_flight(tmp_path):
    """Two dumps in one boot: every class of third value the real 12.1 dumps show, read through DWARF."""
    _needs_vm()
    import reader

    mock, disk, guest = _boot(tmp_path, {})
    lay = Layout(struct_layouts(mock.debug, STRUCTS))
    with guest:
        entry = _in_ddb(guest)
        ddb = entry.ddb
        assert (entry.pid, entry.tid) == (11, 100003)
        ps_text = ddb.command("ps")
        assert ps_layout_problems(ps_text) == []
        procs = ddb.ps()
        idle = next(p for p in procs if p.pid == 11)
        assert (idle.cmd, idle.state, idle.cpu, idle.threaded) == ("idle: cpu0", "RL", 0, False)
        kernel = next(p for p in procs if p.pid == 0)
        assert kernel.threaded and kernel.state == "DLs" and kernel.threads[0].name == "swapper"
        shown = {t.tid: t for t in ddb.show_threads()}
        assert {t.tid for p in procs for t in p.threads} <= shown.keys()
        top = shown[100003].frames[0]  # the interrupted idle thread: its frame, as 12.1's acpi_cpu_c1
        assert top.function == "mock_idle" and top.frame and top.frame >= 0xFFFF_8000_0000_0000
        assert [f.function for f in shown[100000].frames] == ["sched_switch"]  # swapper: switched out
        runs = [_dump(guest, ddb, disk, mock.kernel, tmp_path / f"dump{i}") for i in (1, 2)]

    for n, (before, after, vmcore) in enumerate(runs, 1):
        with reader.open_vmcore(vmcore, kernel=mock.kernel) as vm:
            img = Images(vm, before, after)
            drv = find_driver(img, lay)
            assert shown[100003].td == drv.kdb_thread  # `show threads` names the thread ddb runs on
            vq, sc, req = drv.vq, drv.softc, drv.dump_request
            num = img.u("after", vq + lay.off("virtqueue", "vq_nentries"), 2)
            # struct virtqueue: one descriptor taken, its cookie the softc's dump request
            assert img.triple(vq + lay.off("virtqueue", "vq_free_cnt"), 2) == (num, num - 1, num)
            head = img.u("before", vq + lay.off("virtqueue", "vq_desc_head_idx"), 2)
            ring_desc = img.u("dump", vq + lay.off("virtqueue", "vq_ring.desc"), 8)
            nxt = img.u("dump", ring_desc + 16 * head + 14, 2)
            assert img.triple(vq + lay.off("virtqueue", "vq_desc_head_idx"), 2) == (head, nxt, head)
            assert img.triple(descx(lay, vq, head, "cookie"), 8) == (0, req, 0)
            assert img.triple(descx(lay, vq, head, "ndescs"), 2) == (0, 1, 0)
            cons = img.triple(vq + lay.off("virtqueue", "vq_used_cons_idx"), 2)
            assert cons[0] < cons[1] < cons[2], cons  # the counter moved during the dump
            # struct vtblk_softc: the lock held by the thread ddb runs on; the dump request in flight
            assert img.triple(sc + lay.off("vtblk_softc", "vtblk_mtx.mtx_lock"), 8) == (0, drv.kdb_thread, 0)
            hdr = req + lay.off("vtblk_request", "vbr_hdr")
            assert img.u("dump", hdr + lay.off("virtio_blk_outhdr", "type"), 4) == 1  # write
            assert img.u("dump", hdr + lay.off("virtio_blk_outhdr", "ioprio"), 4) == 1
            assert img.u("dump", req + lay.off("vtblk_request", "vbr_ack"), 1) == 0xFF
            assert img.u("after", req + lay.off("vtblk_request", "vbr_ack"), 1) == 0
            assert img.u("after", hdr + lay.off("virtio_blk_outhdr", "type"), 4) == 4  # the closing flush
            bp = img.triple(req + lay.off("vtblk_request", "vbr_bp"), 8)
            assert drv.kstack[0] <= bp[1] < drv.kstack[1] and bp[1] != bp[2], (bp, drv.kstack)
            sector = img.u("dump", hdr + lay.off("virtio_blk_outhdr", "sector"), 8)
            assert (
                sector * 512 >= 65536 and img.u("after", hdr + lay.off("virtio_blk_outhdr", "sector"), 8) == 0
            )
            # struct sglist + the indirect table of the head: header, data (covering the sglist's own
            # page: the write that carries it), status; a flush (2 entries) afterwards
            sg = drv.sglist
            segs = img.u("dump", sg + lay.off("sglist", "sg_segs"), 8)
            seg = lay.size("sglist_seg")
            assert img.u("dump", sg + lay.off("sglist", "sg_nseg"), 2) == 3
            assert img.u("after", sg + lay.off("sglist", "sg_nseg"), 2) == 2
            data_pa = img.u("dump", segs + seg + lay.off("sglist_seg", "ss_paddr"), 8)
            data_len = img.u("dump", segs + seg + lay.off("sglist_seg", "ss_len"), 8)
            page = img.pa(sg) & ~0xFFF
            assert data_pa <= page < data_pa + data_len and 0 < data_len <= 0x10000 and data_len % 512 == 0
            hdr_pa, ack_pa = img.pa(hdr), img.pa(req + lay.off("vtblk_request", "vbr_ack"))
            table = img.read("dump", img.u("after", descx(lay, vq, head, "indirect"), 8), 48)
            assert [struct.unpack_from("<QIHH", table, 16 * i) for i in range(3)] == [
                (hdr_pa, 16, 1, 1),
                (data_pa, data_len, 1, 2),
                (ack_pa, 1, 2, 3),
            ]
            assert img.u("dump", ring_desc + 16 * head + 8, 4) == 48  # ring descriptor: 3 indirect entries
            assert img.u("after", ring_desc + 16 * head + 8, 4) == 32  # the flush: 2
            if n == 2:
                # the second dump of the boot starts from the first one's leftovers: more third values
                assert img.triple(sg + lay.off("sglist", "sg_nseg"), 2) == (2, 3, 2)
                assert img.triple(hdr + lay.off("virtio_blk_outhdr", "type"), 4) == (4, 1, 4)
                assert img.triple(req + lay.off("vtblk_request", "vbr_ack"), 1) == (0, 0xFF, 0)
                assert bp[0] == bp[2] != bp[1]
            else:
                assert img.u("before", hdr, 16) == 0  # no dump request before the first dump
                assert img.u("before", sg + lay.off("sglist", "sg_nseg"), 2) == 3  # the last boot read


@pytest.mark.vm
def test_two_requests_in_flight(tmp_path):
    """`mock.vtblk_inflight=2`: each dump write goes out as two requests before polling, so a dumped
    virtqueue shows two descriptors taken (the dump request and one of vtblk_req_free). The two halves
    are adjacent on disk: QEMU merges them into one I/O, so both are outstanding while the data is read."""
    _needs_vm()
    import reader

    mock, disk, guest = _boot(tmp_path, {INFLIGHT_KNOB: "2"})
    lay = Layout(struct_layouts(mock.debug, STRUCTS))
    with guest:
        ddb = _in_ddb(guest).ddb
        before, after, vmcore = _dump(guest, ddb, disk, mock.kernel, tmp_path / "dump")
    with reader.open_vmcore(vmcore, kernel=mock.kernel) as vm:
        img = Images(vm, before, after)
        drv = find_driver(img, lay)
        vq = drv.vq
        num = img.u("after", vq + lay.off("virtqueue", "vq_nentries"), 2)
        assert img.triple(vq + lay.off("virtqueue", "vq_free_cnt"), 2) == (num, num - 2, num)
        cookies = [img.u("dump", descx(lay, vq, i, "cookie"), 8) for i in range(num)]
        busy = [c for c in cookies if c]
        assert len(busy) == 2 and drv.dump_request in busy, [hex(c) for c in busy]
        other = next(c for c in busy if c != drv.dump_request)
        assert img.u("dump", other + lay.off("vtblk_request", "vbr_ack"), 1) == 0xFF
        assert all(img.u("after", descx(lay, vq, i, "cookie"), 8) == 0 for i in range(num))
        assert img.triple(drv.softc + lay.off("vtblk_softc", "vtblk_mtx.mtx_lock"), 8) == (
            0,
            drv.kdb_thread,
            0,
        )


# ----------------------------------------------------------------------------- verification (VM)
def _repro(tmp_path: Path, *args: str) -> tuple[int, list[dict], str]:
    """`fbsd-hil repro --kernel MOCK --json` as a user runs it: (exit status, every dump's report, stderr)."""
    import json
    import subprocess
    import sys

    mock = build_mock_kernel()
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "repro",
        "--kernel",
        str(mock.kernel),
        "--memory",
        "128",
        "--accel",
        "tcg",
        "--artifacts",
        str(tmp_path / "artifacts"),
        "--boot-timeout",
        "120",
        "--json",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, check=False)
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON report; exit {proc.returncode}\n{proc.stderr[-4000:]}") from None
    return proc.returncode, out if isinstance(out, list) else [out], proc.stderr


@pytest.mark.vm
@pytest.mark.parametrize(
    "args",
    [("--minidump", "1", "--trigger", "break"), ("--dump-twice",)],
    ids=["minidump", "minidump-then-full"],
)
def test_verification_explains_two_requests_in_flight(tmp_path, args):
    """`mock.vtblk_inflight=2`: the dumped driver shows the dump request and one request taken off
    vtblk_req_free in flight; the verifier names every such byte from DWARF (the free list minus the
    borrowed request, its cookie, its cleared links) and passes a correct dump."""
    _needs_vm()
    rc, reports, stderr = _repro(tmp_path, "--kenv", f"{INFLIGHT_KNOB}=2", *args)
    assert rc == 0, stderr[-4000:] + "\n" + "\n".join(r.get("status", "") for r in reports)
    assert len(reports) == (2 if "--dump-twice" in args else 1)
    for report in reports:
        assert report["status"] == "PASSED", [d for d in report["differences"] if not d["explained"]]
        assert report["pages_differing_unexplained"] == 0 and report["pages_dump_device_named"] >= 4
        assert "1 request from it in flight" in report["dump_device"]["driver"][0]
        text = "\n".join(e for d in report["differences"] for e in d["evidence"])
        assert (
            "DWARF: struct vtblk_softc.vtblk_req_free of vtblk0: " in text
            and "head is the free list minus the 1 request taken off it" in text
        ), text
        assert "= a struct vtblk_request of vtblk0's vtblk_req_free" in text, text
        assert "virtqueue.vq_free_cnt of vtblk0's queue: 254 = 256 - 2 descriptor(s)" in text, text
        assert "0: cleared when the request was taken off vtblk_req_free" in text, text

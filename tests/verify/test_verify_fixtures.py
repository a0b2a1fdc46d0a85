"""The verification engine on real FreeBSD dumps (LLDB fixtures) against live images derived from them.

Each test builds a live image holding exactly the dump's pages at their physical addresses (plus, for the
minidump, PML4/PDP/PD pages rebuilt from the dump's real PDE section), then perturbs it the way a broken
dump or a changed guest would, and checks detection, attribution and completeness on real page tables.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from livebuild import poke, write_live_from_dump

import reader
from harness.verify import VerificationReport, verify_dump
from harness.verify.live import PAGE_SIZE, LiveMemory
from harness.verify.pagetables import PG_A, PG_V


@pytest.fixture(scope="module")
def full(lldb_fixtures):
    with reader.open_vmcore(lldb_fixtures["full"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        yield vm


@pytest.fixture
def full_live(full, tmp_path):
    live, _ = write_live_from_dump(full, tmp_path / "live.raw")
    live.close()
    return tmp_path / "live.raw"


def _verify(vm, path, **kw) -> VerificationReport:
    with LiveMemory.from_raw_file(path) as live:
        return verify_dump(vm, live, **kw)


def test_untouched_minidump_verifies_clean(mini, mini_live, lldb_fixtures):
    path, root = mini_live
    r = _verify(mini, path, pml4_pa=root, kernel=lldb_fixtures["kernel"])
    assert r.passed, r.summary()
    assert r.dump_kind == "mini"
    assert r.pages_compared == r.pages_identical == 24144
    assert r.pages_differing_unexplained == r.pages_differing_explained == 0
    assert r.missing_pages == 0
    # the real 14-CURRENT kernel mapped 50 pages it left out of the dump (PG_NODUMP): reported, not failed
    assert r.pages_mapped_not_dumped == 50
    assert any("13 table pages" in n for n in r.notes)
    d = json.loads(r.to_json())
    for key in (
        "passed",
        "dump_kind",
        "pages_compared",
        "pages_identical",
        "pages_differing_explained",
        "pages_differing_unexplained",
        "missing_pages",
        "differences",
        "timings",
    ):
        assert key in d
    assert set(d["timings"]) >= {"boot", "ddb", "dump", "extract", "verify"}
    assert "PASSED" in r.summary()


def test_strict_completeness_counts_not_dumped_pages(mini, mini_live):
    path, root = mini_live
    r = _verify(mini, path, pml4_pa=root, strict=True)
    assert not r.passed
    assert r.missing_pages == 50
    assert r.missing[0]["pa"] == "0x400f000" and r.missing[0]["va"] == "0xfffffe004580f000"


def test_changed_kernel_data_byte_is_detected_and_attributed(mini, mini_live):
    path, root = mini_live
    pa = mini.translate(mini.symbol("hz"))
    poke(path, pa, struct.pack("<i", 1000))
    r = _verify(mini, path, pml4_pa=root)
    assert r.pages_compared - r.pages_identical == 1
    (d,) = r.differences
    assert d.address == pa & ~0xFFF and d.first_differing_offset == (pa & 0xFFF) + 0  # 100 -> 1000: byte 0
    assert d.kind == "kernel-data" and "hz" in d.attribution
    # `hz` is no variable the dump code or ddb writes: even with no pre-dump image the dump is wrong there
    assert not d.explained and not r.passed
    assert d.unexplained == [
        {
            "address": f"{pa:#x}",
            "va": f"{mini.symbol('hz'):#x}",
            "symbol": "hz",  # the address named from the kernel's symbol table
            "offset": pa & 0xFFF,
            "bytes": 2,
            "what": "kernel-data: hz",
        }
    ]
    assert d.symbol == "hz"  # the first differing byte, named
    summary = r.summary()
    assert f"BAD {d.address:#014x} +{d.first_differing_offset:#05x} [hz] (" in summary
    assert f"wrong: {pa:#x} [hz] (2 B) kernel-data: hz" in summary
    assert '"symbol": "hz"' in r.to_json()


def _unmapped_dumped_page(mini, path, root) -> int:
    """A dumped, non-zero page outside every kernel-VA mapping and table: only the direct map aliases it."""
    from harness.verify.engine import _TableReader
    from harness.verify.pagetables import walk_kernel

    with LiveMemory.from_raw_file(path) as live:
        m = walk_kernel(_TableReader(live), root, 0xFFFFFE0000000000, 0xFFFFFFFFC0000000)
        mapped = set(m.pa.tolist()) | set(m.tables)
    return next(p for p in mini.phys_pages() if p not in mapped and p > 0x100000)


def test_pre_dump_image_excuses_only_pages_that_changed_while_dumping(mini, mini_live, tmp_path):
    """With a live image from before the dump, an unnamed page is excused only if it changed meanwhile."""
    path, root = mini_live
    before = tmp_path / "before.raw"
    before.write_bytes(path.read_bytes())
    pa = _unmapped_dumped_page(mini, path, root)
    poke(path, pa + 0x20, b"\xab")
    poke(before, pa + 0x20, b"\xab")  # the page already held this before the dump: the dump is wrong
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert not r.passed and r.pages_differing_unexplained == 1
    assert r.differences[0].kind == "unattributed" and "stable" in r.differences[0].reason
    poke(before, pa + 0x20, mini.read_phys(pa + 0x20, 1))  # it changed while the dump was being written
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert r.passed and r.differences[0].reason == "changed while the dump was written"
    assert r.differences[0].consistent_bytes == 1  # the dump holds the byte's value from before
    poke(before, pa + 0x20, b"\xcd")  # before 0xcd, after 0xab, dump another value: a mid-dump value in
    with LiveMemory.from_raw_file(before) as b:  # memory nobody names (a driver's heap) that changed
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert r.passed and r.differences[0].consistent_bytes == 0
    poke(path, pa + 0x21, b"\xee")  # ... but a stable byte next to it that differs is a wrong dump
    poke(before, pa + 0x21, b"\xee")
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert not r.passed and r.differences[0].unexplained[0]["offset"] == 0x21
    assert r.differences[0].unexplained[0]["bytes"] == 1


def test_changed_rodata_byte_fails(mini, mini_live):
    path, root = mini_live
    va = mini.symbol("proc_off_p_pid")
    pa = mini.translate(va)
    poke(path, pa + 1, b"\x99")
    r = _verify(mini, path, pml4_pa=root)
    assert not r.passed
    (d,) = r.differences
    assert d.kind == "kernel-rodata" and "proc_off_p_pid" in d.attribution
    assert d.first_differing_offset == (pa & 0xFFF) + 1 and not d.explained
    assert d.va == va & ~0xFFF
    assert "BAD" in r.summary()


def test_page_table_page_accessed_bit_is_expected_but_a_new_mapping_is_not(mini, mini_live):
    path, root = mini_live
    pt_pa = 0x363A000  # a real PT page of this dump (maps 0xfffffe0045800000..)
    entries = np.frombuffer(mini.read_phys(pt_pa, PAGE_SIZE), dtype=np.uint64)
    i = int(np.nonzero(entries & np.uint64(PG_V))[0][0])
    e = int(entries[i])
    poke(path, pt_pa + 8 * i, struct.pack("<Q", e ^ PG_A))
    r = _verify(mini, path, pml4_pa=root)
    (d,) = r.differences
    assert d.kind == "page-table-accessed-dirty" and d.explained and r.passed
    # remap the entry to a page in dump_avail that the dump does not hold: a mapped page is missing
    present = set(mini.phys_pages())
    target = next(pa for pa in range(0x200000, 0x7F00000, PAGE_SIZE) if pa not in present)
    poke(path, pt_pa + 8 * i, struct.pack("<Q", (e & ~0x000FFFFFFFFFF000) | target))
    r = _verify(mini, path, pml4_pa=root)
    assert not r.passed
    (d,) = r.differences
    assert d.kind == "page-table" and not d.explained
    assert any(m["pa"] == f"{target:#x}" for m in r.missing)
    assert r.pages_mapped_not_dumped == 51  # the new mapping joins the 50 the kernel left out


def test_missing_page_table_page_is_missing(mini, mini_live):
    """Point a PDE at a PT page the dump does not hold: the kernel always dumps PT pages."""
    path, root = mini_live
    pd_pa = None
    with LiveMemory.from_raw_file(path) as live:
        pml4 = live.view(root, PAGE_SIZE).view(np.uint64)
        pdp = live.view(int(pml4[np.nonzero(pml4)[0][0]]) & ~0xFFF, PAGE_SIZE).view(np.uint64)
        pd_pa = int(pdp[np.nonzero(pdp)[0][0]]) & 0x000FFFFFFFFFF000
        pd = live.view(pd_pa, PAGE_SIZE).view(np.uint64).copy()
    free = int(np.nonzero(pd == 0)[0][0])
    present = set(mini.phys_pages())
    new_pt = next(pa for pa in range(0x300000, 0x7F00000, PAGE_SIZE) if pa not in present)
    poke(path, pd_pa + 8 * free, struct.pack("<Q", new_pt | 0x3))
    r = _verify(mini, path, pml4_pa=root)
    assert not r.passed and r.missing_pages == 1
    assert r.missing[0] == {
        "pa": f"{new_pt:#x}", "va": None, "symbol": "", "what": "page-table page", "counted": True
    }


def test_change_in_a_page_nobody_maps_is_unattributed(mini, mini_live):
    path, root = mini_live
    pa = _unmapped_dumped_page(mini, path, root)
    poke(path, pa + 0x10, b"\xff")
    r = _verify(mini, path, pml4_pa=root)
    assert not r.passed
    (d,) = r.differences
    assert d.kind == "unattributed" and d.address == pa and d.first_differing_offset == 0x10


def test_dumped_page_outside_the_live_image_fails(mini, tmp_path):
    live, _ = write_live_from_dump(mini, tmp_path / "live.raw")
    live.close()
    with open(tmp_path / "live.raw", "r+b") as f:
        f.truncate(0x4000000)  # the live image now ends at 64 MiB, the dump goes beyond
    r = _verify(mini, tmp_path / "live.raw", walk_page_tables=False)
    assert not r.passed and r.pages_not_in_live_image > 0
    assert "outside the live image" in r.errors[0]


def test_untouched_full_dump_verifies_clean_with_real_kpml4phys(full, full_live):
    r = _verify(full, full_live)
    assert r.passed, r.summary()
    assert r.dump_kind == "full" and r.pages_compared == r.pages_identical == 32634
    assert any("KPML4phys (live) at 0x27be000" in n for n in r.notes)


def test_full_dump_difference_in_bss_symbol(full, full_live):
    pa = full.translate(full.symbol("dumptid"))
    poke(full_live, pa, b"\x01\x02")
    r = _verify(full, full_live)
    (d,) = r.differences
    assert d.kind == "kernel-data" and d.attribution.startswith("kernel-data: dumptid")
    assert d.differing_bytes == 2


def test_ddb_cross_checks(full, full_live):
    r = _verify(full, full_live, ddb_values={"hz": (100, 4)})
    assert [c.ok for c in r.crosschecks] == [True, True] and r.passed
    assert r.crosschecks[0].what == "x/lx hz"
    r = _verify(full, full_live, ddb_values={"hz": (1000, 4)})
    assert not r.passed and r.crosschecks[0].actual == "0x64"
    # `show registers` is checked against *kdb_frame, which this symbol-only kernel does not have
    r = _verify(full, full_live, ddb_registers={"rip": 0xFFFFFFFF80504666})
    assert not r.passed and r.crosschecks[0].actual == "not readable in dump"


def test_report_round_trip_and_no_overwrite(full, full_live, tmp_path):
    r = _verify(full, full_live)
    out = r.write(tmp_path / "report.json")
    again = VerificationReport.from_dict(json.loads(out.read_text()))
    assert again.passed and again.pages_compared == r.pages_compared
    with pytest.raises(FileExistsError):
        r.write(out)


def test_corrupted_byte_in_a_stable_bss_variable_fails(mini, mini_live, tmp_path):
    """`hz` the same before and after the dump, another value in the dump: no dump code writes `hz`."""
    path, root = mini_live
    pa = mini.translate(mini.symbol("hz"))
    poke(path, pa, struct.pack("<i", 7))
    before = tmp_path / "before.raw"
    before.write_bytes(path.read_bytes())
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert not r.passed and r.pages_differing_unexplained == 1
    (d,) = r.differences
    assert d.kind == "kernel-data" and not d.explained
    assert d.reason == "page was stable during the dump, yet the dump differs"
    assert [(u["offset"], u["bytes"], u["what"]) for u in d.unexplained] == [
        (pa & 0xFFF, 1, "kernel-data: hz")
    ]


def test_changed_bytes_inside_dump_state_variables_pass(mini, mini_live, tmp_path):
    """`dumppcb` (savectx while dumping) and `dumptid` are written by the dump code: a dump may hold values
    there that live memory does not show before or after; a byte next to them in `hz` still fails."""
    path, root = mini_live
    pcb = mini.translate(mini.symbol("dumppcb"))
    tid = mini.translate(mini.symbol("dumptid"))
    poke(path, pcb + 0x40, b"\x11\x22\x33")
    poke(path, tid, b"\x07")
    before = tmp_path / "before.raw"
    before.write_bytes(path.read_bytes())
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert r.passed, r.summary()
    assert all(d.explained and d.kind == "kernel-data" and not d.unexplained for d in r.differences)
    assert {d.reason for d in r.differences} == {
        "same before and after the dump: differs only in memory the dump code and ddb write"
    }


def test_third_value_in_a_page_that_changed_fails_outside_dump_state(mini, mini_live, tmp_path):
    """The page changed while dumping (`dumptid` set), but `hz` holds a value it had neither before nor
    after: the dump is wrong at `hz`; the same page with `hz` equal to its before-value passes."""
    path, root = mini_live
    tid = mini.translate(mini.symbol("dumptid"))
    hz = mini.translate(mini.symbol("hz"))
    before = tmp_path / "before.raw"
    before.write_bytes(path.read_bytes())
    poke(before, tid, b"\x05")  # changed while dumping: the dump holds a mid-dump value
    poke(path, tid, b"\x09")
    poke(before, hz, struct.pack("<i", 1000))  # hz: before 1000, after 250, dump 100 (a third value)
    poke(path, hz, struct.pack("<i", 250))
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert not r.passed
    bad = [d for d in r.differences if not d.explained]
    assert [d.address for d in bad] == [hz & ~0xFFF]
    assert bad[0].reason.startswith("changed while the dump was written, yet the dump holds bytes equal to")
    assert [(u["offset"], u["what"]) for u in bad[0].unexplained] == [(hz & 0xFFF, "kernel-data: hz")]
    poke(before, hz, mini.read_phys(hz, 4))  # the dump caught hz's before-value: consistent
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, before=b)
    assert r.passed, r.summary()


def test_volatile_variables_are_decided_byte_by_byte():
    """Unit check of the byte rule on a made-up page: `dumping`/`dumper` may differ, a neighbour may not."""
    from harness.verify.attribution import Attributor
    from harness.verify.symbols import KernelSymbols, Section, Symbol

    base = 0xFFFFFFFF81000000
    syms = KernelSymbols(
        [
            Symbol("dumping", base + 0x10, 4, "data"),
            Symbol("dumper", base + 0x20, 0x60, "data"),
            Symbol("hz", base + 0x80, 4, "data"),
        ],
        [Section(".bss", base, 0x1000, "data")],
    )
    attr = Attributor(symbols=syms, pa_to_vas={0x5000: [base]})
    live = np.zeros(PAGE_SIZE, dtype=np.uint8)
    dumped = bytearray(PAGE_SIZE)
    dumped[0x10] = 1  # dumping == 1 while dumping
    dumped[0x48:0x50] = b"\xff" * 8  # dumper.dumpoff mid-dump
    a = attr.attribute(0x5000, bytes(dumped), live, live.copy())
    assert a.explained and a.kinds == {"kernel-data": ["dumping", "dumper+0x28"]}
    dumped[0x7F:0x86] = b"\x01\x02\x03\x04\x05\x06\x07"  # dumper's last byte, all of hz, 2 unnamed
    a = attr.attribute(0x5000, bytes(dumped), live, live.copy())
    assert not a.explained and a.kind == "kernel-data"
    assert a.unexplained == [(0x80, 4, "kernel-data", "hz"), (0x84, 2, "kernel-data", ".bss+0x84")]
    before = live.copy()
    before[0x80:0x86] = dumped[0x80:0x86]  # the dump holds the before-values: consistent
    a = attr.attribute(0x5000, bytes(dumped), live, before)
    assert a.explained and a.consistent_bytes == 6


def test_message_text_must_hold_its_before_or_after_value():
    """Message-buffer text is appended once per byte while dumping: the dump may hold a byte's before- or
    after-value, never a third; `struct msgbuf`'s write index may hold any value in between. (The LLDB
    fixture kernel has no `msgbufp` symbol, so the ranges are given as the engine builds them.)"""
    from harness.verify.attribution import Attributor, VaRange

    base = 0xFFFFF80000000000 + 0x9000  # a direct-map page holding the header, then text
    attr = Attributor(
        pa_to_vas={0x9000: [base]},
        ranges=[
            VaRange(base, base + 128, "msgbuf", "struct msgbuf"),
            VaRange(base + 128, base + 4096, "msgbuf", "msgbuf"),
        ],
    )
    before = np.zeros(PAGE_SIZE, dtype=np.uint8)
    live = before.copy()
    live[16] = 0x40  # msg_wseq after the dump
    live[0x200] = ord("D")  # "Dumping ..." appended
    dumped = bytearray(before.tobytes())
    dumped[16] = 0x30  # the index mid-dump: a third value, allowed in struct msgbuf
    a = attr.attribute(0x9000, bytes(dumped), live, before)
    assert a.explained and a.consistent_bytes == 1
    dumped[0x200] = ord("X")  # a character the buffer never held
    a = attr.attribute(0x9000, bytes(dumped), live, before)
    assert not a.explained and a.unexplained == [(0x200, 1, "msgbuf", "msgbuf")]
    assert attr.attribute(0x9000, bytes(dumped), live).explained  # no before image: text cannot be judged

"""`fbsd-hil repro --kernel` end to end on the MockFreeBSDKernel (a stand-in, NOT FreeBSD).

No FreeBSD kernel exists on the test machines; the mock (see README.md) is booted by the real chain:
GRUB ISO (kfreebsd) -> libvirt + QEMU TCG -> console stages -> NMI -> ddb dialogue -> the guest writes
a kerneldumpheader-wrapped minidump / ELF full dump onto the raw dump disk -> host extraction with the
reader -> verification against the live memory image. The perturbation test proves the chain notices a
dump whose copy of one page is wrong.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mock_freebsd_kernel import CORRUPT_KNOB, build_mock_freebsd_kernel, build_mock_kernel, mock_debug_path
from mock_runs import ROOT
from mock_runs import libvirt_or_skip as _libvirt_or_skip
from mock_runs import repro_bare_kernel as _repro

KERNBASE = 0xFFFF_FFFF_8000_0000


def test_mock_kernel_is_linked_like_a_freebsd_kernel(mock_kernel):
    """What GRUB's kfreebsd and the reader rely on: ELF64 at KERNBASE, loaded at 2 MiB, the symbols."""
    from elftools.elf.elffile import ELFFile

    with open(mock_kernel, "rb") as f:
        elf = ELFFile(f)
        assert elf.elfclass == 64 and elf["e_machine"] == "EM_X86_64"
        assert elf["e_ident"]["EI_OSABI"] in ("ELFOSABI_FREEBSD", 9)
        assert elf["e_entry"] == KERNBASE + 0x200000
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads[0]["p_paddr"] == 0x200000 and loads[0]["p_vaddr"] == KERNBASE + 0x200000
        syms = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()}
    assert syms["kernbase"] == KERNBASE
    for name in (
        "KPML4phys",
        "hz",
        "msgbufp",
        "dumppcb",
        "dumptid",
        "dumper",
        "do_minidump",
        "version",
        "kdb_frame",
        "dump_avail",
        "mock_pattern_pa",
        "allproc",
        "kdb_thread",
        "vtblk_devclass",
        "devclasses",
        "__pcpu",
    ):
        assert syms.get(name, 0) >= KERNBASE, name


def _build_id(path: Path) -> bytes:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        note = next(ELFFile(f).get_section_by_name(".note.gnu.build-id").iter_notes())
        return bytes.fromhex(note["n_desc"])


def test_dwarf_is_in_a_separate_debug_file_like_kernel_debug(mock_kernel):
    """As FreeBSD ships kernel + kernel.debug: the kernel keeps .symtab, a GNU build ID and a
    .gnu_debuglink naming the debug file; the debug file has the same build ID and the DWARF of the
    driver objects a verifier needs (struct virtqueue, vtblk_softc, sglist, devclass, device, thread)."""
    from elftools.elf.elffile import ELFFile

    debug = mock_debug_path(mock_kernel)
    assert build_mock_kernel().debug == debug and debug.is_file()
    with open(mock_kernel, "rb") as f:
        elf = ELFFile(f)
        assert not elf.has_dwarf_info() and elf.get_section_by_name(".symtab") is not None
        link = elf.get_section_by_name(".gnu_debuglink").data()
        assert link.split(b"\0", 1)[0].decode() == debug.name
    assert len(_build_id(mock_kernel)) == 20 and _build_id(mock_kernel) == _build_id(debug)
    want = {
        "virtqueue", "vq_desc_extra", "vring", "vtblk_softc", "vtblk_request", "sglist", "devclass", "device",
        "thread", "proc", "mtx",
    }
    found: dict[str, set[str]] = {}
    with open(debug, "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if die.tag == "DW_TAG_structure_type" and name and name.value.decode() in want:
                    members = [c.attributes.get("DW_AT_name") for c in die.iter_children()]
                    found[name.value.decode()] = {m.value.decode() for m in members if m is not None}
    assert want <= found.keys(), want - found.keys()
    counters = {"vq_free_cnt", "vq_queued_cnt", "vq_desc_head_idx", "vq_used_cons_idx"}
    assert counters | {"vq_descx", "vq_ring"} <= found["virtqueue"]
    assert {"vtblk_mtx", "vtblk_vq", "vtblk_sglist", "vtblk_dump_request"} <= found["vtblk_softc"]
    assert {"devclass", "unit", "nameunit", "desc", "softc"} <= found["device"]
    # the stand-in's own layouts differ from 12.1's (evidence: device.softc +0x88, devclass +0x48,
    # vtblk_softc.vtblk_vq +0x38): a tool that finds the driver objects must have read the DWARF
    from test_mock_dump_device_state import STRUCTS, Layout, struct_layouts

    lay = Layout(struct_layouts(debug, STRUCTS))
    assert (lay.off("device", "softc"), lay.off("device", "devclass")) != (0x88, 0x48)
    assert lay.off("vtblk_softc", "vtblk_vq") != 0x38
    assert lay.off("vtblk_softc", "vtblk_dump_request") != 0xC0
    assert lay.off("vtblk_softc", "vtblk_mtx.mtx_lock") == 0x20  # as 12.1's: the lock comes second
    assert lay.off("virtqueue", "vq_free_cnt") == 0x78  # struct virtqueue has 12.1's layout
    assert {"td_tid", "td_name", "td_oncpu", "td_pcb", "td_plist"} <= found["thread"]


def test_build_is_cached_by_source_hash(mock_kernel, tmp_path):
    first = build_mock_freebsd_kernel(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_mock_freebsd_kernel(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert first.read_bytes() == mock_kernel.read_bytes(), "the build is reproducible"
    assert mock_debug_path(first).read_bytes() == mock_debug_path(mock_kernel).read_bytes()


def _check_passed(rc: int, report: dict, stderr: str, kind: str, fmt: str) -> None:
    assert rc == 0, stderr[-4000:]
    assert report["passed"] is True
    assert (report["dump_kind"], report["dump_format"]) == (kind, fmt)
    assert report["pages_compared"] > 0
    assert report["pages_differing_unexplained"] == 0
    assert all(d["explained"] for d in report["differences"])
    assert report["missing_pages"] == 0 and report["errors"] == []
    checks = {c["what"]: c["ok"] for c in report["crosschecks"]}
    assert checks["x/gx KPML4phys"] and checks["x/lx hz"] and checks["register rip"], checks
    assert all(checks.values()), checks


def _msgbuf(report: dict, kernel: Path) -> str:
    import reader

    with reader.open_vmcore(report["dump"], kernel=kernel) as vm:
        return vm.msgbuf()


@pytest.mark.vm
@pytest.mark.parametrize("version", [2, 3])
def test_repro_minidump_passes(mock_kernel, tmp_path, version):
    """Minidump v2 (12.x layout, the mock's default; entered by NMI) and v3 (13.0+: dump_avail section,
    compressed bitmap; entered by a serial BREAK)."""
    _libvirt_or_skip()
    knob = ["--kenv", "mock.minidump_version=3", "--trigger", "break"] if version == 3 else []
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--minidump", "1", *knob)
    _check_passed(rc, report, stderr, "mini", "minidump")
    # a minidump holds the kernel's mapped pages, not all of RAM (128 MiB = 32768 pages)
    assert report["pages_compared"] < 4096
    import reader

    with reader.open_vmcore(report["dump"], kernel=mock_kernel) as vm:
        assert vm.info["header"]["version"] == version
        log = vm.msgbuf()
        threads = vm.threads()
    assert "MockFreeBSDKernel" in log and "Dumping " in log and "mountroot: waiting for device" in log
    # the thread the NMI stopped (pid 11 "idle: cpu0", = dumptid) first, then allproc's other threads
    first = threads[0]
    assert (first.tid, first.pid, first.td_name, first.crashed) == (100003, 11, "idle: cpu0", True)
    assert {(t.tid, t.pid, t.td_name) for t in threads} >= {(100000, 0, "swapper"), (100045, 16, "vnlru")}
    assert len(threads) == 23 and not any(t.crashed for t in threads[1:])
    assert threads[0].registers["rip"] == int(
        next(c["actual"] for c in report["crosschecks"] if c["what"] == "register rip"), 16
    ), "dumppcb holds the interrupted context"


@pytest.mark.vm
def test_repro_full_dump_passes(mock_kernel, tmp_path):
    """Full (ELF) dump, ddb entered by the ALT break sequence CR ~ Ctrl-B on the console."""
    _libvirt_or_skip()
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--minidump", "0", "--trigger", "alt-break")
    _check_passed(rc, report, stderr, "full", "elf")
    assert report["pages_compared"] > 30000, "a full dump holds all of the guest's RAM"
    assert "chunks)" in _msgbuf(report, mock_kernel)


@pytest.mark.vm
def test_repro_detects_a_corrupted_page(mock_kernel, tmp_path):
    """The mock writes a corrupted copy of its pattern page into the dump; repro must fail on that page."""
    _libvirt_or_skip()
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--minidump", "1", "--kenv", f"{CORRUPT_KNOB}=1")
    assert rc == 1, stderr[-4000:]
    assert report["passed"] is False
    import reader

    with reader.open_vmcore(report["dump"], kernel=mock_kernel) as vm:
        pattern_pa = int.from_bytes(vm.read(vm.symbol("mock_pattern_pa"), 8), "little")
    bad = [d for d in report["differences"] if not d["explained"]]
    assert [int(d["address"], 16) for d in bad] == [pattern_pa], bad
    assert bad[0]["first_differing_offset"] == 1024 and bad[0]["differing_bytes"] == 64
    assert bad[0]["reason"] == "page was stable during the dump, yet the dump differs"


def _symbol_pa(kernel: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile

    with open(kernel, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
    return sym["st_value"] - KERNBASE


@pytest.mark.vm
def test_repro_detects_a_kernel_page_missing_from_the_minidump(mock_kernel, tmp_path):
    """The mock leaves the .data page holding `version` out of its minidump bitmap: the completeness
    check (every mapped kernel-image page must be dumped) must fail the run."""
    _libvirt_or_skip()
    pa = _symbol_pa(mock_kernel, "version") & ~0xFFF
    rc, report, stderr = _repro(
        mock_kernel, tmp_path, "--minidump", "1", "--kenv", f"mock.drop_dump_page={pa:#x}"
    )
    assert rc == 1 and report["passed"] is False, stderr[-4000:]
    assert report["missing_pages"] == 1
    assert [int(m["pa"], 16) for m in report["missing"]] == [pa]
    assert report["missing"][0]["what"].startswith("kernel image .data")


@pytest.mark.vm
def test_repro_refuses_a_dump_whose_headers_fail_parity(mock_kernel, tmp_path):
    """Wrong kerneldumpheader parity on the dump disk: extraction stops (exit 2) naming the field."""
    _libvirt_or_skip()
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "repro",
        "--kernel",
        str(mock_kernel),
        "--memory",
        "128",
        "--accel",
        "tcg",
        "--artifacts",
        str(tmp_path / "artifacts"),
        "--boot-timeout",
        "120",
        "--kenv",
        "mock.bad_dump_header=parity",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "FAILED at extract" in proc.stderr and "parity" in proc.stderr, proc.stderr[-4000:]


@pytest.mark.vm
def test_repro_detects_a_corrupted_kernel_data_page(mock_kernel, tmp_path):
    """The same perturbation on a page of the mock's .bss that nothing writes (the unused tail of its
    dump bitmap `vm_page_dump`, beyond 128 MiB of RAM): the dump is wrong there, repro must fail."""
    _libvirt_or_skip()
    pa = (_symbol_pa(mock_kernel, "vm_page_dump") + 0x2000) & ~0xFFF
    rc, report, stderr = _repro(mock_kernel, tmp_path, "--minidump", "1", "--kenv", f"{CORRUPT_KNOB}={pa:#x}")
    bad = [d for d in report["differences"] if not d["explained"]]
    assert [int(d["address"], 16) for d in bad] == [pa], report["differences"]
    assert rc == 1 and report["passed"] is False

"""`fbsd-hil repro --kernel` end to end on the MockFreeBSDKernel (a stand-in, NOT FreeBSD).

No FreeBSD kernel exists on the test machines; the mock (see README.md) is booted by the real chain:
GRUB ISO (kfreebsd) -> libvirt + QEMU TCG -> console stages -> NMI -> ddb dialogue -> the guest writes
a kerneldumpheader-wrapped minidump / ELF full dump onto the raw dump disk -> host extraction with the
reader -> verification against the live memory image. The perturbation test proves the chain notices a
dump whose copy of one page is wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mock_freebsd_kernel import CORRUPT_KNOB, build_mock_freebsd_kernel

ROOT = Path(__file__).resolve().parents[2]
KERNBASE = 0xFFFF_FFFF_8000_0000


@pytest.fixture(scope="module")
def mock_kernel(tmp_path_factory) -> Path:
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    return build_mock_freebsd_kernel()


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
    ):
        assert syms.get(name, 0) >= KERNBASE, name


def test_build_is_cached_by_source_hash(mock_kernel, tmp_path):
    first = build_mock_freebsd_kernel(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_mock_freebsd_kernel(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert first.read_bytes() == mock_kernel.read_bytes(), "the build is reproducible"


def _libvirt_or_skip() -> None:
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")


def _repro(kernel: Path, tmp_path: Path, *args: str) -> tuple[int, dict, str]:
    """Run `fbsd-hil repro --kernel` as a user would; returns (exit status, JSON report, stderr)."""
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "repro",
        "--kernel",
        str(kernel),
        "--memory",
        "128",
        "--accel",
        "tcg",
        "--artifacts",
        str(tmp_path / "artifacts"),
        "--report",
        str(report),
        "--boot-timeout",
        "120",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert report.is_file(), f"no report; exit {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.returncode, json.loads(report.read_text()), proc.stderr


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
    assert [(t.tid, t.pid, t.crashed) for t in threads] == [(100002, 10, True), (100000, 0, False)]
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

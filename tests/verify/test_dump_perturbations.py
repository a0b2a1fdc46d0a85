"""Host-side perturbations of real dumps: verification must still catch a wrong dump.

The LLDB amd64 minidump (a real FreeBSD 14 vmcore) is copied and broken the ways a buggy dump writer
would break it; the live image is built from the unbroken dump, so every finding is the perturbation's.
Perturbations inside the dump device's own state (a byte of the I/O buffers the ring does not explain, a
status byte no request gives) are in test_dump_device_evidence.py, on the real 12.1 evidence.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from livebuild import write_live_from_minidump

import reader
from harness.verify import verify_dump
from harness.verify.live import PAGE_SIZE, LiveMemory
from tests.dumpwriter import containers as cw


@pytest.fixture(scope="module")
def live_of_the_good_dump(lldb_fixtures, tmp_path_factory):
    """Live image (path, PML4 PA) built from the unperturbed minidump."""
    tmp = tmp_path_factory.mktemp("perturb")
    with reader.open_vmcore(lldb_fixtures["mini"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        live, root = write_live_from_minidump(vm, lldb_fixtures["mini"], tmp / "live.raw")
        live.close()
    return tmp / "live.raw", root


def _copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    dst.chmod(0o644)
    return dst


def _file_offset(vm, pa: int) -> int:
    return vm._page_offset(pa) + (pa & 0xFFF)  # noqa: SLF001 - where the page lives in the file


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _verify(dump: Path, fixtures, live_path: Path, root: int):
    with (
        reader.open_vmcore(dump, kernel=fixtures["kernel"], zero_fill=True) as vm,
        LiveMemory.from_raw_file(live_path) as live,
    ):
        return verify_dump(vm, live, pml4_pa=root)


def test_the_unperturbed_copy_passes(lldb_fixtures, live_of_the_good_dump, tmp_path):
    dump = _copy(lldb_fixtures["mini"], tmp_path / "vmcore")
    assert _verify(dump, lldb_fixtures, *live_of_the_good_dump).passed


def test_a_byte_of_a_stable_data_variable_fails_naming_symbol_and_offset(
    lldb_fixtures, live_of_the_good_dump, tmp_path
):
    dump = _copy(lldb_fixtures["mini"], tmp_path / "vmcore")
    with reader.open_vmcore(dump, kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        pa = vm.translate(vm.symbol("hz") + 1)
        off = _file_offset(vm, pa)
    _patch(dump, off, b"\x5a")
    r = _verify(dump, lldb_fixtures, *live_of_the_good_dump)
    assert not r.passed and r.pages_differing_unexplained == 1
    (d,) = r.differences
    assert d.kind == "kernel-data" and [u["what"] for u in d.unexplained] == ["kernel-data: hz+0x1"]


def test_a_byte_of_a_heap_page_fails(lldb_fixtures, live_of_the_good_dump, tmp_path):
    from harness.verify.engine import _TableReader
    from harness.verify.pagetables import walk_kernel

    live_path, root = live_of_the_good_dump
    dump = _copy(lldb_fixtures["mini"], tmp_path / "vmcore")
    with LiveMemory.from_raw_file(live_path) as live:
        m = walk_kernel(_TableReader(live), root, 0xFFFFFE0000000000, 0xFFFFFFFFC0000000)
        mapped = set(m.pa.tolist()) | set(m.tables)
    with reader.open_vmcore(dump, kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        size = dump.stat().st_size
        pa = next(
            p for p in vm.phys_pages() if p not in mapped and p > 0x100000 and _file_offset(vm, p) < size
        )
        off = _file_offset(vm, pa + 0x40)
    _patch(dump, off, b"\xa5")
    r = _verify(dump, lldb_fixtures, live_path, root)
    assert not r.passed
    (d,) = r.differences
    assert d.address == pa and d.kind == "unattributed" and not d.explained


def test_a_page_dropped_from_the_bitmap_is_missing(lldb_fixtures, live_of_the_good_dump, tmp_path):
    """Clear the bit of the page holding `hz` and take its 4 KiB out: the kernel image page is missing."""
    dump = tmp_path / "vmcore"
    with reader.open_vmcore(lldb_fixtures["mini"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        pa = vm.translate(vm.symbol("hz")) & ~0xFFF
        data_off = _file_offset(vm, pa)
        bit = vm._phys._bit_of(pa >> 12)  # noqa: SLF001
        bitmap_off = vm.info["sections"]["bitmap"]
    raw = bytearray(Path(lldb_fixtures["mini"]).read_bytes())
    raw[bitmap_off + bit // 8] &= ~(1 << (bit % 8)) & 0xFF
    del raw[data_off : data_off + PAGE_SIZE]
    dump.write_bytes(bytes(raw))
    r = _verify(dump, lldb_fixtures, *live_of_the_good_dump)
    assert not r.passed and r.missing_pages == 1
    (m,) = [m for m in r.missing if m["counted"]]
    assert m["pa"] == f"{pa:#x}" and m["what"].startswith("kernel image")
    assert m["symbol"] and m["symbol"] in m["what"]  # the missing page's VA named from the symbol table
    assert f"(va {m['va']} [{m['symbol']}])" in r.summary()


def test_two_swapped_pages_fail(lldb_fixtures, live_of_the_good_dump, tmp_path):
    dump = _copy(lldb_fixtures["mini"], tmp_path / "vmcore")
    with reader.open_vmcore(dump, kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        a = vm.translate(vm.symbol("hz")) & ~0xFFF
        b = vm.translate(vm.symbol("allproc")) & ~0xFFF
        if a == b:
            b = a + PAGE_SIZE
        assert vm.read_phys(a, PAGE_SIZE) != vm.read_phys(b, PAGE_SIZE)
        oa, ob = _file_offset(vm, a), _file_offset(vm, b)
    with open(dump, "r+b") as f:
        f.seek(oa)
        pa_bytes = f.read(PAGE_SIZE)
        f.seek(ob)
        pb_bytes = f.read(PAGE_SIZE)
        f.seek(oa)
        f.write(pb_bytes)
        f.seek(ob)
        f.write(pa_bytes)
    r = _verify(dump, lldb_fixtures, *live_of_the_good_dump)
    assert not r.passed
    bad = {d.address for d in r.differences if not d.explained}
    assert {a, b} <= bad


def test_bad_header_parity_exits_2_with_one_line(lldb_fixtures, tmp_path, capsys):
    from reader.cli import main

    img = tmp_path / "dump.img"
    lay = cw.write_device_image(img, lldb_fixtures["mini"])
    _patch(img, lay.trailer + 100, b"X")  # a hostname byte; the stored parity no longer holds
    made = img.read_bytes()
    assert main(["extract", str(img), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "parity" in err and str(img) in err
    assert img.read_bytes() == made  # the user's image is left as it was

"""Formats no real fixture covers, from the test-only synthetic writer (tests/dumpwriter)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import reader
from tests.dumpwriter import (
    Mapping,
    ProcSpec,
    ThreadSpec,
    page_pattern,
    write_amd64_full_dump,
    write_amd64_minidump,
    write_arm64_minidump,
    write_i386_minidump,
    write_kernel_elf,
    write_threads_dump,
)

MB2, GB1 = 2 << 20, 1 << 30
K2 = 0xFFFFFE0000000000   # amd64 v2/v3 kernbase (VM_MIN_KERNEL_ADDRESS)
K1 = 0xFFFFFFFF80000000   # amd64 v1 kernbase (KERNBASE)


def _check_pages(vm, spec_translations, present):
    """Every 4 KiB translation the writer made is read back with the right bytes."""
    pages = dict(vm.kernel_pages())
    for va, pa in spec_translations.items():
        assert vm.translate(va) == pa
        assert vm.translate(va + 0x123) == pa + 0x123
        if pa in present:
            assert pages[va] == pa
            assert vm.read(va, 16) == vm.read_phys(pa, 16)
        else:
            assert va not in pages
            with pytest.raises(reader.AddressError) as exc:
                vm.read(va, 8)
            assert exc.value.address == va


@pytest.mark.parametrize("version", [1, 2, 3])
def test_amd64_minidump_versions_4k_and_2m(tmp_path, version):
    base = K1 if version == 1 else K2
    pages = {0x5000: b"five", 0x200000: None, 0x201000: b"b" * 4096, 0x600000: None, 0x601000: None}
    mappings = [Mapping(base, 0x5000), Mapping(base + 0x1000, 0x201000), Mapping(base + 0x3000, 0x7000),
                Mapping(base + MB2, 0x400000, MB2), Mapping(base + 2 * MB2, 0x600000, MB2)]
    spec = write_amd64_minidump(tmp_path / "vmcore", pages, mappings, version=version)
    with reader.open_vmcore(spec.path) as vm:
        assert vm.info["header"]["version"] == version
        assert vm.read(base, 4) == b"five"
        assert vm.read(base + 0x1000, 4096) == b"b" * 4096
        assert vm.read(base + 2 * MB2 + 8, 8) == struct.pack("<Q", 0x600008)
        present = set(vm.phys_pages())
        assert present == set(spec.present)
        _check_pages(vm, spec.translations, present)
        # 2 MiB mapping at base+MB2 maps PA 0x400000.. which is absent: no kernel page listed
        kp = dict(vm.kernel_pages())
        assert base + MB2 not in kp
        assert kp[base + 2 * MB2 + 0x1000] == 0x601000
        assert base + 2 * MB2 + 0x2000 not in kp          # 0x602000 is not in the dump
        # read across a page boundary inside a 2 MiB page
        expect = page_pattern(0x600000)[4088:] + page_pattern(0x601000)[:8]
        assert vm.read(base + 2 * MB2 + 4088, 16) == expect
        # the direct map
        assert vm.read(0xFFFFF80000000000 + 0x5000, 4) == b"five"


def test_amd64_minidump_1g_page_and_sparse_dump_avail(tmp_path):
    pages = {GB1: None, GB1 + 0x3FF000: b"end", 2 * GB1 - 4096: b"last", 0x3000: b"low"}
    holes = [(0, 0x10000), (GB1, 2 * GB1)]
    spec = write_amd64_minidump(tmp_path / "vmcore", pages, [Mapping(K2 + GB1, GB1, GB1),
                                                             Mapping(K2, 0x3000)],
                                version=3, dump_avail=holes, pt_pages_at=0x8000)
    with reader.open_vmcore(spec.path) as vm:
        assert vm.info["dump_avail"] == [list(r) for r in holes]
        assert vm.read(K2 + GB1 + 0x3FF000, 3) == b"end"
        assert vm.read(K2 + 2 * GB1 - 4096, 4) == b"last"
        assert vm.read(K2, 3) == b"low"
        assert vm.translate(K2 + GB1 + 0x12345) == GB1 + 0x12345
        kp = list(vm.kernel_pages())
        assert kp == [(K2, 0x3000), (K2 + GB1, GB1), (K2 + GB1 + 0x3FF000, GB1 + 0x3FF000),
                      (K2 + 2 * GB1 - 4096, 2 * GB1 - 4096)]
        with pytest.raises(reader.AddressError):
            vm.read_phys(0x20000, 8)          # in no dump_avail range
        with pytest.raises(reader.AddressError):
            vm.read(K2 + GB1 + 0x1000, 8)      # mapped, in dump_avail, bit clear


def test_big_sparse_bitmap_v2(tmp_path):
    """A v2 bitmap describing 64 GiB with a handful of pages: rank index and offsets stay exact."""
    pas = [0, 0x1000, 0x3F000, 0x40000, 7 << 30, (64 << 30) - 4096]
    spec = write_amd64_minidump(tmp_path / "vmcore", dict.fromkeys(pas), [Mapping(K2, 7 << 30)],
                                version=2, bitmap_bytes=(64 << 30) // 4096 // 8)
    with reader.open_vmcore(spec.path) as vm:
        assert list(vm.phys_pages()) == sorted(set(pas) | set(spec.extra_pages))
        for pa in pas:
            assert vm.read_phys(pa + 8, 8) == struct.pack("<Q", pa + 8)
        assert vm.read(K2 + 16, 8) == struct.pack("<Q", (7 << 30) + 16)


@pytest.mark.parametrize(("version", "pae"), [(1, True), (2, True), (1, False), (2, False)])
def test_i386_minidump(tmp_path, version, pae):
    kb = 0x800000
    pages = {0x1000: b"i386", 0x2000: None, 0x9000: None}
    mappings = [Mapping(kb, 0x1000), Mapping(kb + 0x5000, 0x2000), Mapping(kb + 0x6000, 0x8000)]
    spec = write_i386_minidump(tmp_path / "vmcore", pages, mappings, version=version, pae=pae)
    with reader.open_vmcore(spec.path) as vm:
        assert vm.arch.name == "i386" and vm.info["header"]["paemode"] == int(pae)
        assert vm.read(kb, 4) == b"i386"
        _check_pages(vm, spec.translations, set(vm.phys_pages()))
        assert [va for va, _ in vm.kernel_pages()] == [kb, kb + 0x5000]
        with pytest.raises(reader.AddressError):
            vm.translate(kb - 4096)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_arm64_minidump(tmp_path, version):
    kb = 0xFFFF000000000000
    pages = {0x40001000: b"arm", 0x40200000: None, 0x40201000: None}
    mappings = [Mapping(kb, 0x40001000), Mapping(kb + MB2, 0x40200000, MB2)]
    spec = write_arm64_minidump(tmp_path / "vmcore", pages, mappings, version=version,
                                dump_avail=[(0x40000000, 0x50000000)] if version >= 2 else None)
    with reader.open_vmcore(spec.path) as vm:
        assert vm.arch.name == "arm64"
        assert vm.read(kb, 3) == b"arm"
        assert vm.read(0xFFFFA00000000000 + 0x1000, 3) == b"arm"   # DMAP: dmapphys 0x40000000
        _check_pages(vm, spec.translations, set(vm.phys_pages()))
        assert [va for va, _ in vm.kernel_pages()] == [kb, kb + MB2, kb + MB2 + 0x1000]


@pytest.mark.parametrize("load_offset", [0, 0x2000000, 0x1A00000 + 0x600000])
def test_amd64_full_dump_kernel_loaded_anywhere(tmp_path, load_offset):
    """13.1+ EFI loaders leave the kernel at a 2 MiB-aligned address other than the default."""
    pages = {0x3000: b"data", 0x5000: None}
    spec = write_amd64_full_dump(tmp_path / "vmcore", pages,
                                 [Mapping(K2, 0x3000), Mapping(K2 + GB1, 0x200000, MB2),
                                  Mapping(0xFFFFFE8000000000, 0x5000)], load_offset=load_offset)
    kernel = write_kernel_elf(tmp_path / "kernel", spec.symbols)
    with reader.open_vmcore(spec.path, kernel) as vm:
        assert vm.read(K2, 4) == b"data"
        assert vm.load_offset == load_offset
        assert vm.info["kernel_load_offset"] == load_offset
        assert vm.read_int(vm.symbol("KPML4phys"), 8) == spec.root
        kp = dict(vm.kernel_pages())
        for va, pa in spec.translations.items():
            assert vm.translate(va) == pa
            if va >= 0xFFFFFE0000000000:
                assert kp[va] == pa
        assert len(kp) == 1 + 512 + 1 + 512   # 4K + 2M + 4K + the kernel image's 2 MiB
    with reader.open_vmcore(spec.path) as vm, pytest.raises(reader.SymbolError):
        vm.translate(K2)


def test_full_dump_with_foreign_kernel_is_rejected(tmp_path):
    spec = write_amd64_full_dump(tmp_path / "vmcore", {0x3000: None}, [Mapping(K2, 0x3000)])
    wrong = dict(spec.symbols, KPML4phys=(spec.symbols["KPML4phys"][0] + 0x1000, 8, False))
    kernel = write_kernel_elf(tmp_path / "kernel", wrong)
    with reader.open_vmcore(spec.path, kernel) as vm, pytest.raises(reader.FormatError) as exc:
        vm.translate(K2)
    assert "KPML4phys" in str(exc.value)


def _msgbuf_kernel(tmp_path, text_buf: bytes, wseq: int, size: int):
    """A minidump + kernel where msgbufp -> struct msgbuf -> a circular buffer."""
    kb = K2
    mb_struct = struct.pack("<QIIII", kb + 0x2000, 0x063062, size, wseq, 0)
    pages = {0x1000: struct.pack("<Q", kb + 0x1000 + 64) + bytes(56) + mb_struct,
             0x2000: text_buf.ljust(size, b"\0")}
    spec = write_amd64_minidump(tmp_path / "vmcore", pages, [Mapping(kb + 0x1000, 0x1000),
                                                             Mapping(kb + 0x2000, 0x2000)])
    kernel = write_kernel_elf(tmp_path / "kernel", {"kernbase": (0xFFFFFFFF80000000, 0, False),
                                                    "msgbufp": (kb + 0x1000, 8, False)})
    return spec.path, kernel


def test_msgbuf_wraps_around(tmp_path):
    size = 64
    buf = bytearray(b"X" * size)
    # write position 10: oldest text starts at 10
    old, new = b"oldest line\n" + b"x" * (size - 10 - 12), b"newest\n\0\0\0"
    buf[10:] = old
    buf[:10] = new
    path, kernel = _msgbuf_kernel(tmp_path, bytes(buf), wseq=3 * size + 10, size=size)
    with reader.open_vmcore(path, kernel) as vm:
        text = vm.msgbuf()
    assert text == (old + new).replace(b"\0", b"").decode()
    assert text.startswith("oldest line\n") and text.endswith("newest\n")


def test_msgbuf_not_wrapped(tmp_path):
    path, kernel = _msgbuf_kernel(tmp_path, b"hello\nworld\n", wseq=12, size=4096)
    with reader.open_vmcore(path, kernel) as vm:
        assert vm.msgbuf() == "hello\nworld\n"


def test_msgbuf_bad_magic(tmp_path):
    path, kernel = _msgbuf_kernel(tmp_path, b"", wseq=0, size=0)
    with reader.open_vmcore(path, kernel) as vm, pytest.raises(reader.FormatError):
        vm.msgbuf()


def test_kernel_page_map_offsets_point_at_page_data(tmp_path):
    pas = [0x1000 * i for i in range(1, 40)]
    spec = write_amd64_minidump(tmp_path / "vmcore", dict.fromkeys(pas),
                                [Mapping(K2 + 0x1000 * i, pa) for i, pa in enumerate(pas)])
    with reader.open_vmcore(spec.path) as vm:
        m = vm.kernel_page_map()
        assert len(m) == len(pas)
        for va, pa, off in zip(m.va.tolist(), m.pa.tolist(), m.offset.tolist(), strict=True):
            assert bytes(vm.page_data(off)) == page_pattern(pa) == vm.read(va, 4096)
        assert np.all(np.diff(m.va.astype(np.int64)) > 0)


def test_msgbuf_section_without_kernel(tmp_path, capsys):
    from reader.cli import main

    spec = write_amd64_minidump(tmp_path / "vmcore", {0x1000: None}, [Mapping(K2, 0x1000)],
                                msgbuf=b"boot\nlog\n\0\0")
    with reader.open_vmcore(spec.path) as vm:
        assert vm.msgbuf_section() == b"boot\nlog\n\0\0"
        with pytest.raises(reader.SymbolError):
            vm.msgbuf()
    assert main(["msgbuf", str(spec.path)]) == 0
    out, err = capsys.readouterr()
    assert out == "boot\nlog\n" and "buffer order" in err


def test_arm64_threads_freebsd14_pcb_layout(tmp_path):
    words = [0x1900 + i for i in range(10)] + [0xF0F0, 0x1111, 0x5500]   # x19..x28, fp, lr, sp
    procs = [ProcSpec(42, "worker", [ThreadSpec(100042, "worker", words)])]
    path, kernel = write_threads_dump(tmp_path, procs, arch="arm64", osreldate=1400084, hz=1000)
    with reader.open_vmcore(path, kernel) as vm:
        (t,) = vm.threads()
        assert vm.info["hz"] == 1000 and vm.info["osreldate"] == 1400084
    assert t.name == "(pid 42) worker" and t.tid == 100042 and not t.crashed
    assert t.registers["x19"] == 0x1900 and t.registers["x28"] == 0x1909
    assert (t.registers["fp"], t.registers["lr"], t.registers["sp"], t.registers["pc"]) == (
        0xF0F0, 0x1111, 0x5500, 0x1111)


def test_amd64_thread_on_cpu_reads_stoppcbs(tmp_path):
    words = [0x15, 0x14, 0x13, 0x12, 0xB0, 0x5B, 0xBB, 0x1B]   # r15 r14 r13 r12 rbp rsp rbx rip
    path, kernel = write_threads_dump(tmp_path, [ProcSpec(42, "worker", [ThreadSpec(100042, "worker", words,
                                                                                     oncpu=3)])])
    with reader.open_vmcore(path, kernel) as vm:
        (t,) = vm.threads()
        stoppcbs = vm.symbol("stoppcbs")
    assert t.name == "(pid 42) worker (on CPU 3)" and t.pcb == stoppcbs + 3 * 512
    assert t.registers == {"r15": 0x15, "r14": 0x14, "r13": 0x13, "r12": 0x12, "rbp": 0xB0, "rsp": 0x5B,
                           "rbx": 0xBB, "rip": 0x1B}


def test_phys_view_and_frames(tmp_path):
    pas = [0x1000, 0x2000, 0x3000, 0x5000]
    spec = write_amd64_minidump(tmp_path / "vmcore", dict.fromkeys(pas), [Mapping(K2, 0x1000)],
                                pt_pages_at=0x9000)
    with reader.open_vmcore(spec.path) as vm:
        assert vm.phys_page_frames().tolist() == [1, 2, 3, 5, 9]
        v = vm.phys_view(0x1000, 3 * 4096)
        assert v is not None and bytes(v) == b"".join(page_pattern(p) for p in pas[:3])
        assert bytes(vm.phys_view(0x2008, 8)) == struct.pack("<Q", 0x2008)
        assert vm.phys_view(0x3000, 2 * 4096) is None      # 0x4000 absent
        assert vm.phys_view(0x4000, 8) is None


def test_full_dump_1g_page_and_segments_with_holes(tmp_path):
    """A 1 GiB kernel mapping in a full dump whose physical memory has a hole (two PT_LOADs)."""
    spec = write_amd64_full_dump(tmp_path / "vmcore", {0x3000: b"low", GB1 + 0x5000: b"high"},
                                 [Mapping(K2 + GB1, GB1, GB1), Mapping(K2, 0x3000)],
                                 ranges=[(0, 0x2000000), (GB1, GB1 + 0x100000)], tables_at=0x1F00000)
    kernel = write_kernel_elf(tmp_path / "kernel", spec.symbols)
    with reader.open_vmcore(spec.path, kernel) as vm:
        assert [s["paddr"] for s in vm.info["header"]["segments"]] == [0, GB1]
        assert vm.read(K2 + GB1 + 0x5000, 4) == b"high"
        assert vm.read(K2, 3) == b"low"
        assert vm.translate(K2 + GB1 + 0x3FFFFFFF) == 2 * GB1 - 1
        with pytest.raises(reader.AddressError):
            vm.read(K2 + GB1 + 0x200000, 8)        # mapped by the 1 GiB page, not in any PT_LOAD
        kp = dict(vm.kernel_pages())
        assert kp[K2 + GB1] == GB1 and kp[K2 + GB1 + 0xFF000] == GB1 + 0xFF000
        assert K2 + GB1 + 0x100000 not in kp
        assert len([va for va in kp if K2 + GB1 <= va < K2 + 2 * GB1]) == 0x100000 // 4096


def test_include_dmap_lists_direct_map_aliases(tmp_path):
    spec = write_amd64_minidump(tmp_path / "vmcore", {0x1000: None, 0x7000: None}, [Mapping(K2, 0x7000)],
                                pt_pages_at=0x3000)
    dmap = 0xFFFFF80000000000
    with reader.open_vmcore(spec.path) as vm:
        assert list(vm.kernel_pages()) == [(K2, 0x7000)]
        assert list(vm.kernel_pages(include_dmap=True)) == [
            (dmap + 0x1000, 0x1000), (dmap + 0x3000, 0x3000), (dmap + 0x7000, 0x7000), (K2, 0x7000)]


def test_thread_list_order_names_and_crashed_first(tmp_path):
    procs = [ProcSpec(0, "kernel", [ThreadSpec(100000, "swapper", [1] * 8),
                                    ThreadSpec(100001, "kernel", [2] * 8)]),
             ProcSpec(12, "sysctl", [ThreadSpec(100100, "sysctl", [3] * 8, crashed=True)]),
             ProcSpec(11, "idle", [ThreadSpec(100003, "idle: cpu0", [4] * 8, oncpu=0)])]
    path, kernel = write_threads_dump(tmp_path, procs, msgbuf=(b"line one\nline two\n", 18))
    with reader.open_vmcore(path, kernel) as vm:
        threads = vm.threads()
        assert vm.msgbuf() == "line one\nline two\n"
    assert [t.name for t in threads] == ["(pid 12) sysctl (crashed)", "(pid 0) kernel/swapper",
                                         "(pid 0) kernel", "(pid 11) idle/idle: cpu0 (on CPU 0)"]
    assert [t.registers["rip"] for t in threads] == [3, 1, 2, 4]
    assert threads[0].to_json()["name"] == "(pid 12) sysctl (crashed)"

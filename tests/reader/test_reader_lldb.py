"""The reader against real FreeBSD dumps: LLDB's FreeBSDKernel test vmcores.

Expected values come from the header bytes (see tests/data/lldb-freebsd/README.md) and from
LLDB's own TestFreeBSDKernelVMCore.py (thread counts, names, registers, crashed thread).
"""

from __future__ import annotations

import pytest

import reader

HZ = {"amd64-minidump": 100, "amd64-full": 100, "i386-minidump": 100, "arm64-minidump": 1000}
NTHREADS = {"amd64-minidump": 16, "amd64-full": 13, "i386-minidump": 13, "arm64-minidump": 10}

# TestFreeBSDKernelVMCore.py: thread index -> (name, registers)
LLDB_THREADS = {
    "amd64-full": {
        0: ("(pid 806) sysctl (crashed)",
            {"rbx": 0x0, "rbp": 0xfffffe0085cb2760, "rsp": 0xfffffe0085cb2748, "r12": 0xfffffe0045a6c300,
             "r13": 0xfffff800033693a8, "r14": 0x0, "r15": 0xfffff80003369380, "rip": 0xffffffff80c09ade}),
        1: ("(pid 11) idle/idle: cpu0 (on CPU 0)",
            {"rbx": 0xffffffff81d43950, "rbp": 0xffffffff81d43820, "rsp": 0xffffffff81d43808,
             "r12": 0xfffff80003374000, "r13": 0x27be000, "r14": 0x0, "r15": 0xfffffe00009f7300,
             "rip": 0xffffffff81057988}),
        10: ("(pid 11) idle/idle: cpu9",
             {"rbx": 0x7fff29f4, "rbp": 0xfffffe00007a4ad0, "rsp": 0xfffffe00007a4a08,
              "r12": 0xfffffe00009fd300, "r13": 0x608, "r14": 0xfffffe00009250c0,
              "r15": 0xfffffe0045a6c300, "rip": 0xffffffff80c3c8c8}),
    },
    "amd64-minidump": {
        0: ("(pid 800) sysctl (crashed)",
            {"rbx": 0x0, "rbp": 0xfffffe00798c4760, "rsp": 0xfffffe00798c4748, "r12": 0xfffffe0045b11c00,
             "r13": 0xfffff800033693a8, "r14": 0x0, "r15": 0xfffff80003369380, "rip": 0xffffffff80c09ade}),
        1: ("(pid 28) pagedaemon/dom0 (on CPU 4)",
            {"rbx": 0xfffffe00008e2f30, "rbp": 0xfffffe00008e2e00, "rsp": 0xfffffe00008e2de8,
             "r12": 0xfffff80003845000, "r13": 0x27be000, "r14": 0x4, "r15": 0xfffffe00458c2700,
             "rip": 0xffffffff81057988}),
        2: ("(pid 28) pagedaemon/laundry: dom0",
            {"rbx": 0x7fff25f1, "rbp": 0xfffffe00527dd890, "rsp": 0xfffffe00527dd7c8,
             "r12": 0xfffffe0045b13100, "r13": 0x104, "r14": 0xfffffe00008d70c0,
             "r15": 0xfffffe00009f5e00, "rip": 0xffffffff80c3c8c8}),
    },
    "i386-minidump": {
        0: ("(pid 806) sysctl (crashed)",
            {"ebp": 0x151968e4, "esp": 0x151968d8, "esi": 0x0c77aa80, "edi": 0x03f0dc80, "eip": 0x010025c5}),
        1: ("(pid 11) idle/idle: cpu0 (on CPU 0)",
            {"ebp": 0x03d979bc, "esp": 0x03d979a0, "esi": 0x7f7, "edi": 0x0, "eip": 0x013a91f6}),
        12: ("(pid 11) idle/idle: cpu11",
             {"ebp": 0x03dc4af0, "esp": 0x03dc4aa4, "esi": 0x03f97e00, "edi": 0x3e8, "eip": 0x0103012c}),
    },
    "arm64-minidump": {
        0: ("(pid 939) sysctl (crashed)",
            {"x8": 0xffffa00001548700, "x10": 0xffffa00000e04580, "x12": 0x8950a, "x13": 0x89500,
             "x14": 0x39, "x16": 0xffffffd8, "x18": 0xffff000000e6d380, "x19": 0xffff000000af9000,
             "x20": 0xffff000000b82000, "x21": 0xffffa00000319da8, "x22": 0xffff000000b84000,
             "x23": 0xffff000000b84000, "x24": 0xffff000000b55000, "x25": 0x0, "x26": 0x40800,
             "x27": 0x0, "x28": 0x2019ca, "fp": 0xffff0000d58f23b0, "sp": 0xffff0000d58f23b0,
             "pc": 0xffff0000004b6e78, **{f"x{i}": 0 for i in range(8)}}),
        1: ("(pid 21) syncer (on CPU 6)",
            {"x8": 0x6, "x9": 0x560, "x10": 0xffff000000e8f640, "x11": 0x1, "x12": 0x56000000,
             "x13": 0x2af8, "x14": 0x2710, "x15": 0x2, "x16": 0xffffffff, "x17": 0x2,
             "x18": 0xffff000000e6db80, "x19": 0x6, "x20": 0xffff0000853a3670, "x21": 0xffff0000009279c1,
             "x22": 0x804, "x23": 0x4, "x24": 0xffff000082a93000, "x25": 0xffffa0000053f080,
             "x26": 0xffff000000e6391c, "x27": 0xffff000000e63000, "x28": 0x4, "fp": 0xffff0000853a35c0,
             "sp": 0xffff0000853a35c0, "pc": 0xffff000000811370}),
        4: ("(pid 11) idle/idle: cpu2",
            {"x8": 0xffffffff, "x9": 0x1, "x10": 0x2710, "x11": 0x7ff7e333, "x12": 0x7ff7ba9c,
             "x18": 0xffff000000e6d380, "x19": 0xffffa0000032e580, "x20": 0xffff000000b82000,
             "x21": 0xffff000040517100, "x22": 0xffffa00000e04580, "x24": 0x1, "x25": 0xffff000000dd1000,
             "x26": 0xffff000082783898, "x27": 0xffff000000e26000, "x28": 0xffff000000b82000,
             "fp": 0xffff0000827835f0, "sp": 0xffff000082783570, "pc": 0xffff0000004ee99c}),
    },
}


@pytest.fixture(params=sorted(HZ))
def fixture_name(request):
    return request.param


def test_hz_reads_as_lldb_says(lldb_paths, fixture_name):
    vmcore, kernel = lldb_paths[fixture_name]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        assert vm.read_int(vm.symbol("hz"), 4) == HZ[fixture_name]
        assert vm.info["hz"] == HZ[fixture_name]


def test_threads_match_lldb(lldb_paths, fixture_name):
    vmcore, kernel = lldb_paths[fixture_name]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        threads = vm.threads()
    assert len(threads) == NTHREADS[fixture_name]
    assert threads[0].crashed and sum(t.crashed for t in threads) == 1
    for index, (name, regs) in LLDB_THREADS[fixture_name].items():
        t = threads[index]
        assert t.name == name
        assert {k: t.registers[k] for k in regs} == regs, f"thread {index} {name}"


def test_amd64_minidump_header(lldb_paths):
    vmcore, _ = lldb_paths["amd64-minidump"]
    with reader.open_vmcore(vmcore) as vm:
        info = vm.info
    h = info["header"]
    assert (info["format"], info["kind"], info["arch"]) == ("minidump", "mini", "amd64")
    assert h["magic"] == "minidump FreeBSD/amd64" and h["version"] == 3
    assert (h["msgbufsize"], h["bitmapsize"], h["pmapsize"]) == (0x17FB8, 0x1000, 0x7FF000)
    assert (h["kernbase"], h["dmapbase"], h["dmapend"]) == (
        0xFFFFFE0000000000, 0xFFFFF80000000000, 0xFFFFFC0000000000)
    assert h["dumpavailsize"] == 0x1000
    assert info["sections"] == {"msgbuf": 0x1000, "dump_avail": 0x19000, "bitmap": 0x1A000,
                                "page_table": 0x1B000, "data": 0x81A000}
    assert info["dump_avail"] == [[0, 0x9F000], [0x104000, 0x7FDF000]]
    assert info["present_pages"] == 24144
    assert info["expected_size"] == 0x666A000 and info["file_size"] == 0x60F9800
    assert info["truncated"] is True


def test_i386_and_arm64_headers(lldb_paths):
    with reader.open_vmcore(lldb_paths["i386-minidump"][0]) as vm:
        h, info = vm.info["header"], vm.info
        assert (h["version"], h["ptesize"], h["kernbase"], h["paemode"]) == (2, 0xEC000, 0x800000, 1)
        assert info["sections"]["data"] == 0x107000 and info["present_pages"] == 18928
        assert info["dump_avail"] == [[0, 0x9F000], [0x100000, 0x7FDF000]]
    with reader.open_vmcore(lldb_paths["arm64-minidump"][0]) as vm:
        h, info = vm.info["header"], vm.info
        assert (h["version"], h["bitmapsize"], h["pmapsize"]) == (2, 0x2000, 0x6AE000)
        assert (h["dmapphys"], h["dmapbase"], h["dmapend"]) == (
            0x40000000, 0xFFFFA00000000000, 0xFFFFFF0000000000)
        assert info["sections"]["data"] == 0x6CA000 and info["present_pages"] == 19296
        assert len(info["dump_avail"]) == 7
        assert info["dump_avail"][0][0] == 0x40000000 and info["dump_avail"][-1][1] == 0x50000000


def test_amd64_full_dump_header_and_bootstrap(lldb_paths):
    vmcore, kernel = lldb_paths["amd64-full"]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        info = vm.info
        assert (info["format"], info["kind"], info["arch"]) == ("elf", "full", "amd64")
        assert info["header"]["ei_osabi"] == 255 and info["header"]["e_version"] == 0
        segs = [(s["paddr"], s["size"], s["offset"]) for s in info["header"]["segments"]]
        assert segs == [(0, 0x9F000, 0x1000), (0x104000, 0x7EDB000, 0xA0000)]
        assert info["expected_size"] == 0x7F7B000 and info["truncated"]
        assert info["kernel_load_offset"] == 0
        kpml4 = vm.symbol("KPML4phys")
        assert vm.read_int(kpml4, 8) == 0x27BE000
        assert vm.translate(kpml4) == 0x1D47EB8


def test_cut_short_dump_raises_without_zero_fill(lldb_paths):
    vmcore, kernel = lldb_paths["amd64-minidump"]
    with reader.open_vmcore(vmcore, kernel) as vm:
        last_pa = max(vm.phys_pages())
        with pytest.raises(reader.TruncatedError) as exc:
            vm.read_phys(last_pa, 8)
        assert f"{last_pa:#x}" in str(exc.value) and str(vmcore) in str(exc.value)
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        assert vm.read_phys(last_pa, 8) == bytes(8)


def test_absent_page_raises_address_error(lldb_paths):
    vmcore, _ = lldb_paths["amd64-minidump"]
    with reader.open_vmcore(vmcore, zero_fill=True) as vm:
        with pytest.raises(reader.AddressError) as exc:
            vm.read_phys(0x7FDF000 + 0x1000, 8)   # beyond dump_avail
        assert exc.value.address == 0x7FE0000
        with pytest.raises(reader.AddressError):
            vm.translate(0x1000)                   # user address: not in the kernel map


def test_kernel_pages_are_translations(lldb_paths, fixture_name):
    vmcore, kernel = lldb_paths[fixture_name]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        pages = list(vm.kernel_pages())
        assert pages, "every fixture maps some kernel pages"
        vas = [va for va, _ in pages]
        assert vas == sorted(vas) and len(set(vas)) == len(vas)
        step = max(1, len(pages) // 200)
        for va, pa in pages[::step]:
            assert vm.translate(va) == pa
        phys = set(vm.phys_pages())
        assert all(pa in phys for _, pa in pages[::step])


def test_phys_pages_count_and_order(lldb_paths, fixture_name):
    vmcore, _ = lldb_paths[fixture_name]
    with reader.open_vmcore(vmcore) as vm:
        pas = list(vm.phys_pages())
        assert len(pas) == vm.info["present_pages"]
        assert pas == sorted(pas) and all(pa % 4096 == 0 for pa in pas)


def test_threads_need_a_kernel(lldb_paths):
    with reader.open_vmcore(lldb_paths["amd64-minidump"][0]) as vm, pytest.raises(reader.SymbolError):
        vm.threads()

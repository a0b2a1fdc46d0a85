"""Backtraces: against LLDB's expected frames for the real FreeBSD 14 vmcores, and bad stacks.

LLDB_BT is copied from LLVM's lldb/test/API/functionalities/postmortem/FreeBSDKernel/
TestFreeBSDKernelVMCore.py (the test that ships these vmcores; `frame.addr` of each frame of
`process.GetThreadAtIndex(i)`): frame 0 is the saved pc, the others return addresses.
LLDB's kernels here are symbol tables without code symbols, so neither LLDB nor we can name the
functions; trap frames are recognised by name, so these walks are plain frame-pointer chains.

Where we differ from LLDB, on purpose: when a frame record's saved frame pointer is 0 (the bottom of
a kernel thread, `fork_exit` called from `fork_trampoline`), LLDB drops that last return address;
we keep it, as ddb shows `fork_trampoline() at fork_trampoline+0xe` as the last frame.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

import reader
from reader.errors import AddressError
from reader.kernel import Kernel
from reader.unwind import MAX_FRAMES, backtrace
from tests.reader.kernel_elf import write_elf

LLDB_BT = {
    "amd64-full": {
        0: [0xffffffff80c09ade, 0xffffffff80c09916, 0xffffffff80c09d90, 0xffffffff80c09b93,
            0xffffffff80c57d91, 0xffffffff80c19e71, 0xffffffff80c192bc, 0xffffffff80c19933,
            0xffffffff80c1977f, 0xffffffff8108ba8c, 0xffffffff810620ce],
        1: [0xffffffff81057988, 0xffffffff81057949, 0xffffffff8108a5ff, 0xffffffff81062537,
            0xffffffff80c1aa38, 0xffffffff80b9d587, 0xffffffff810575b1, 0xffffffff81063b33,
            0xffffffff804e3edb, 0xffffffff8104dc6e, 0xffffffff8104dd1f, 0xffffffff80c3f0b4,
            0xffffffff80bc7c5e],
        10: [0xffffffff80c3c8c8, 0xffffffff80c16521, 0xffffffff80c3f0b4, 0xffffffff80bc7c5e],
    },
    "amd64-minidump": {
        0: [0xffffffff80c09ade, 0xffffffff80c09916, 0xffffffff80c09d90, 0xffffffff80c09b93,
            0xffffffff80c57d91, 0xffffffff80c19e71, 0xffffffff80c192bc, 0xffffffff80c19933,
            0xffffffff80c1977f, 0xffffffff8108ba8c, 0xffffffff810620ce],
        1: [0xffffffff81057988, 0xffffffff81057949, 0xffffffff8108a5ff, 0xffffffff81062537,
            0xffffffff8107171e, 0xffffffff81075f9c, 0xffffffff80f4359e, 0xffffffff80f494b4,
            0xffffffff80f47430, 0xffffffff80f46eee, 0xffffffff80bc7c5e],
        2: [0xffffffff80c3c8c8, 0xffffffff80c16521, 0xffffffff80c15c3b, 0xffffffff80f48dfc,
            0xffffffff80bc7c5e],
    },
    "arm64-minidump": {   # LLDB: "TODO: fix unwinding" - the stack pages are not in this dump
        0: [0xffff0000004b6e78],
        1: [0xffff000000811370],
        4: [0xffff0000004ee99c],
    },
    "i386-minidump": {
        0: [0x010025c5, 0x01002410, 0x010027d5, 0x01002644, 0x01049a2f, 0x01011077, 0x01010780,
            0x01010c7a, 0x01010ab2, 0x013e9e2d, 0xffc033f9],
        1: [0x013a91f6, 0x013a91c0, 0x013e8ce4, 0xffc0319f, 0x00000028],
        12: [0x0103012c, 0x0100de0e, 0x0100b770, 0x010323be, 0x00fc50b6],
    },
}
FORK_TRAMPOLINE_RET = {"amd64": 0xffffffff8106282e, "i386": 0xffc0340e}


@pytest.mark.parametrize("fixture", sorted(LLDB_BT))
def test_backtraces_match_lldb(lldb_paths, fixture):
    vmcore, kernel = lldb_paths[fixture]
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        threads = vm.threads()
        for index, expected in LLDB_BT[fixture].items():
            bt = threads[index].backtrace()
            got = bt.pcs
            if bt.stop_reason.startswith("end of the frame chain (frame pointer 0)"):
                # the one deliberate difference (module docstring): the thread-start return address
                assert got == [*expected, FORK_TRAMPOLINE_RET[vm.arch.name]], (index, bt.stop_reason)
            else:
                assert got == expected, (index, [hex(x) for x in got], bt.stop_reason)
            assert bt.stop_reason


def test_every_thread_of_every_lldb_dump_unwinds_without_error(lldb_paths):
    for name, (vmcore, kernel) in lldb_paths.items():
        with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
            for t in vm.threads():
                bt = t.backtrace()
                assert 1 <= len(bt) < MAX_FRAMES and bt.pcs[0] == t.pc, name
                assert bt.stop_reason


# ---- synthetic stacks ----------------------------------------------------------------------------------
TEXT = 0xFFFFFFFF80200000
STACK = 0xFFFFFE0001000000


class FakeMemory:
    """KernelMemory over a dict of pages (absent page -> AddressError), with a real Kernel."""

    def __init__(self, arch: str, kernel: Kernel | None, pages: dict[int, bytearray]):
        self.arch = SimpleNamespace(name=arch, pointer_size=4 if arch == "i386" else 8)
        self.kernel = kernel
        self.pages = pages
        self.path = "fake"
        self.reads = 0

    def read_int(self, va: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.read(va, size), "little", signed=signed)

    def read(self, va: int, size: int) -> bytes:
        self.reads += 1
        out = b""
        while size:
            page = self.pages.get(va & ~0xFFF)
            if page is None:
                raise AddressError(f"virtual address {va:#x} is not in the dump", address=va)
            n = min(size, 0x1000 - (va & 0xFFF))
            out += bytes(page[va & 0xFFF : (va & 0xFFF) + n])
            va += n
            size -= n
        return out


def _kernel(tmp_path, funcs: list[tuple[str, int, int, str]]) -> Kernel:
    return Kernel(write_elf(tmp_path / "kernel", [(".text", TEXT, bytes(0x4000), True)], funcs))


FUNCS = [("sched_switch", TEXT + 0x100, 0x100, "func"), ("mi_switch", TEXT + 0x200, 0x100, "func"),
         ("trap", TEXT + 0x300, 0x100, "func"), ("calltrap", TEXT + 0x400, 0, "label"),
         ("interrupted_fn", TEXT + 0x500, 0x100, "func"), ("fork_exit", TEXT + 0x600, 0x100, "func"),
         ("fork_trampoline", TEXT + 0x700, 0, "label"), ("Xfast_syscall", TEXT + 0x800, 0, "label"),
         ("amd64_syscall", TEXT + 0x900, 0x100, "func")]


def _stack(records: dict[int, tuple[int, int]], extra: dict[int, int] | None = None) -> dict[int, bytearray]:
    pages: dict[int, bytearray] = {}
    for addr, (fp, ret) in records.items():
        page = pages.setdefault(addr & ~0xFFF, bytearray(0x1000))
        struct.pack_into("<QQ", page, addr & 0xFFF, fp, ret)
    for addr, value in (extra or {}).items():
        page = pages.setdefault(addr & ~0xFFF, bytearray(0x1000))
        struct.pack_into("<Q", page, addr & 0xFFF, value)
    return pages


def _trapframe(pages, at: int, *, rip: int, rbp: int, rsp: int, cs: int, trapno: int = 12) -> None:
    page = pages.setdefault(at & ~0xFFF, bytearray(0x1000))
    o = at & 0xFFF
    struct.pack_into("<Q", page, o + 64, rbp)
    struct.pack_into("<I", page, o + 120, trapno)
    struct.pack_into("<Q", page, o + 152, rip)
    struct.pack_into("<Q", page, o + 160, cs)
    struct.pack_into("<Q", page, o + 176, rsp)


def test_amd64_through_a_kernel_trap_frame_and_stop_at_fork_trampoline(tmp_path):
    s = STACK
    # sched_switch <- mi_switch <- trap <- calltrap [trapframe: interrupted_fn] <- fork_exit
    #   <- fork_trampoline
    pages = _stack({s + 0x100: (s + 0x200, TEXT + 0x210),      # frame of sched_switch -> mi_switch
                    s + 0x200: (s + 0x300, TEXT + 0x310),      # mi_switch -> trap
                    s + 0x300: (0x1234, TEXT + 0x408),         # trap -> calltrap (fp: interrupted junk)
                    s + 0x600: (s + 0x700, TEXT + 0x620),      # interrupted_fn -> fork_exit
                    s + 0x700: (0, TEXT + 0x70E)})             # fork_exit -> fork_trampoline
    _trapframe(pages, s + 0x310, rip=TEXT + 0x520, rbp=s + 0x600, rsp=s + 0x5F0, cs=0x20)
    _trapframe(pages, s + 0x710, rip=0, rbp=0, rsp=0, cs=0, trapno=0)
    vm = FakeMemory("amd64", _kernel(tmp_path, FUNCS), pages)
    bt = backtrace(vm, {"rip": TEXT + 0x120, "rbp": s + 0x100})
    assert [f.function for f in bt] == ["sched_switch+0x20", "mi_switch+0x10", "trap+0x10", "calltrap+0x8",
                                        "interrupted_fn+0x20", "fork_exit+0x20", "fork_trampoline+0xe"]
    trap = bt.frames[3].trap
    assert trap is not None and (trap.kind, trap.trapno, trap.pc, trap.fp, trap.user) == (
        "trap", 12, TEXT + 0x520, s + 0x600, False)
    assert bt.frames[-1].trap is not None and bt.frames[-1].trap.pc == 0
    assert bt.stop_reason == "thread start (empty trapframe)"
    text = "\n".join(bt.format("amd64"))
    assert "calltrap() at calltrap+0x8/frame" in text and "--- trap 0xc, rip = 0xffffffff80200520" in text


def test_amd64_syscall_from_user_mode_stops(tmp_path):
    s = STACK
    pages = _stack({s + 0x100: (s + 0x200, TEXT + 0x910), s + 0x200: (0x7FFFFFFFE000, TEXT + 0x810)})
    _trapframe(pages, s + 0x210, rip=0x400123, rbp=0x7FFFFFFFE000, rsp=0x7FFFFFFFDF00, cs=0x43, trapno=0)
    vm = FakeMemory("amd64", _kernel(tmp_path, FUNCS), pages)
    bt = backtrace(vm, {"rip": TEXT + 0x120, "rbp": s + 0x100})
    assert [f.function for f in bt] == ["sched_switch+0x20", "amd64_syscall+0x10", "Xfast_syscall+0x10"]
    assert bt.frames[-1].trap.user and bt.stop_reason == "syscall from user mode"


def test_a_frame_chain_loop_ends_the_walk(tmp_path):
    s = STACK
    pages = _stack({s + 0x100: (s + 0x200, TEXT + 0x210), s + 0x200: (s + 0x100, TEXT + 0x310)})
    vm = FakeMemory("amd64", _kernel(tmp_path, FUNCS), pages)
    bt = backtrace(vm, {"rip": TEXT + 0x120, "rbp": s + 0x100})
    assert len(bt) == 3 and "loops" in bt.stop_reason


def test_a_self_loop_and_endless_stack_switches_end(tmp_path):
    s = STACK
    vm = FakeMemory("amd64", None, _stack({s + 0x100: (s + 0x100, TEXT + 0x210)}))
    assert "loops" in backtrace(vm, {"rip": TEXT, "rbp": s + 0x100}).stop_reason
    # every caller below its callee: a corrupt stack, given up after MAX_STACK_SWITCHES jumps
    recs = {s + 0x10000 * (9 - i): (s + 0x10000 * (8 - i), TEXT + i) for i in range(8)}
    bt = backtrace(FakeMemory("amd64", None, _stack(recs)), {"rip": TEXT, "rbp": s + 0x90000})
    assert "switched stacks" in bt.stop_reason and len(bt) <= 5


def test_stack_not_in_the_dump_and_misaligned_fp(tmp_path):
    vm = FakeMemory("amd64", None, {})
    bt = backtrace(vm, {"rip": TEXT, "rbp": STACK + 0x100})
    assert bt.pcs == [TEXT] and "unreadable" in bt.stop_reason and "not in the dump" in bt.stop_reason
    bt = backtrace(vm, {"rip": TEXT, "rbp": STACK + 0x101})
    assert "misaligned" in bt.stop_reason
    assert backtrace(vm, {}).stop_reason == "no saved registers"


def test_a_very_long_chain_is_cut_at_max_frames():
    s = STACK
    recs = {s + 0x20 * i: (s + 0x20 * (i + 1), TEXT + i + 1) for i in range(MAX_FRAMES + 50)}
    vm = FakeMemory("amd64", None, _stack(recs))
    bt = backtrace(vm, {"rip": TEXT, "rbp": s})
    assert len(bt) == MAX_FRAMES and "stopped after" in bt.stop_reason
    assert vm.reads <= MAX_FRAMES + 1


def test_arm64_frame_records(tmp_path):
    base = 0xFFFF000080000000
    pages = _stack({base + 0x100: (base + 0x180, 0xFFFF000000400010), base + 0x180: (0, 0xFFFF000000400020)})
    vm = FakeMemory("arm64", None, pages)
    bt = backtrace(vm, {"pc": 0xFFFF000000400000, "fp": base + 0x100, "sp": base + 0xF0})
    assert bt.pcs == [0xFFFF000000400000, 0xFFFF000000400010, 0xFFFF000000400020]
    assert bt.stop_reason.startswith("end of the frame chain")


def test_i386_trap_frame_in_kernel_mode(tmp_path):
    """i386 12.0+: the entry code points %ebp at the trapframe, so trap()'s saved ebp is its address."""
    text = 0x01000000
    k = Kernel(write_elf(tmp_path / "k386", [(".text", text, bytes(0x1000), True)],
                         [("trap", text + 0x100, 0x100, "func"), ("calltrap", text + 0x200, 0, "label"),
                          ("victim", text + 0x300, 0x100, "func")], machine=3))
    s = 0x03D00000
    page = bytearray(0x1000)
    tf = 0x280
    struct.pack_into("<II", page, 0x100, s + 0x200, text + 0x110)      # frame 0 -> trap
    struct.pack_into("<II", page, 0x200, s + tf, text + 0x208)         # trap -> calltrap, ebp = &tf
    struct.pack_into("<I", page, tf + 20, s + 0x400)                    # tf_ebp
    struct.pack_into("<I", page, tf + 44, 12)                           # tf_trapno
    struct.pack_into("<I", page, tf + 52, text + 0x320)                 # tf_eip
    struct.pack_into("<I", page, tf + 56, 0x20)                         # tf_cs (kernel)
    struct.pack_into("<II", page, 0x400, 0, 0)
    vm = FakeMemory("i386", k, {s: page})
    bt = backtrace(vm, {"eip": text + 0x10, "ebp": s + 0x100})
    assert [f.function for f in bt][1:] == ["trap+0x10", "calltrap+0x8", "victim+0x20"]
    assert bt.frames[2].trap.sp == s + tf + 64 and not bt.frames[2].trap.user
    assert bt.frames[2].trap.address == s + tf


def test_i386_kernel_thread_start_and_trampoline_symbols(tmp_path):
    text, data = 0x01000000, 0x01800000
    disp = 0xFFC00000 - (text + 0x400)         # the trampoline copy of `Xint0x80_syscall` at 0xffc00000
    k = Kernel(write_elf(tmp_path / "k386", [(".text", text, bytes(0x1000), True),
                                              (".data", data, bytes(0x100), False)],
                         [("fork_exit", text + 0x100, 0x100, "func"),
                          ("fork_trampoline", text + 0x200, 0, "label"),
                          ("Xint0x80_syscall", text + 0x400, 0, "label"),
                          ("setidt_disp", data, 4, "object")], machine=3))
    s = 0x03D00000
    page = bytearray(0x1000)
    struct.pack_into("<II", page, 0x100, 0, text + 0x20E)     # fork_exit -> fork_trampoline, ebp 0
    dpage = bytearray(0x1000)
    struct.pack_into("<I", dpage, 0, disp)
    vm = FakeMemory("i386", k, {s: page, data: dpage})
    bt = backtrace(vm, {"eip": text + 0x110, "ebp": s + 0x100})
    assert [f.function for f in bt] == ["fork_exit+0x10", "fork_trampoline+0xe"]
    assert bt.stop_reason == "thread start (no trapframe)"
    from reader.unwind import _symbolize

    assert _symbolize(vm, 0xFFC00010) == "Xint0x80_syscall+0x10 (trampoline)"


def test_symbolize(tmp_path):
    k = _kernel(tmp_path, FUNCS)
    assert k.symbolize(TEXT + 0x100) == "sched_switch"
    assert k.symbolize(TEXT + 0x1FF) == "sched_switch+0xff"
    assert k.symbolize(TEXT + 0x450) == "calltrap+0x50"          # unsized label: up to the next symbol
    assert k.symbolize(TEXT + 0x50) is None                      # before every function
    assert k.symbolize(TEXT + 0x3F00) is None                    # after amd64_syscall's end
    assert k.has_code_symbols


# ---- DWARF CFI (a kernel.debug's call frame information) -------------------------------------------------
CFI_SOURCE = r"""
__attribute__((noinline)) void leaf(volatile char *p) { p[0] = 1; }
__attribute__((noinline)) void mid(void) { volatile char buf[40]; leaf(buf); leaf(buf + 1); }
__attribute__((noinline)) void top(void) { volatile char buf[200]; mid(); buf[0] = 2; }
void _start(void) { top(); for (;;) ; }
"""


def _last_row(cfi, kernel, name: str):
    """(pc, cfa offset from rsp) of the CFI row of function `name` with the deepest stack (its body)."""
    sym = kernel.lookup(name)
    rows = [cfi._row(pc) for pc in range(sym.address, sym.address + sym.size)]
    row = max((r for r in rows if r is not None), key=lambda r: r["cfa"].offset)
    assert row["cfa"].reg == 7, (name, row)
    return row["pc"], row["cfa"].offset


@pytest.mark.parametrize("section", [".eh_frame", ".debug_frame"])
def test_cfi_unwinds_code_without_frame_pointers(tmp_path, section):
    import shutil
    import subprocess

    from reader.cfi import CallFrameTable

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build code with CFI")
    src = tmp_path / "k.c"
    src.write_text(CFI_SOURCE)
    elf = tmp_path / "kernel.debug"
    # without unwind tables gcc -g writes the CFI to .debug_frame (indexed lazily by reader.cfi)
    flags = ["-fno-asynchronous-unwind-tables", "-fno-unwind-tables"] if section == ".debug_frame" else []
    subprocess.run(["gcc", "-g", "-O2", "-fomit-frame-pointer", *flags, "-nostdlib", "-static", "-no-pie",
                    "-fno-pie", "-mcmodel=kernel", "-Wl,-Ttext=0xffffffff80200000", "-o", str(elf), str(src)],
                   check=True)
    kernel = Kernel(elf)
    cfi = CallFrameTable(elf, "amd64")
    assert len(cfi) >= 3
    from elftools.dwarf.callframe import FDE
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        assert dwarf.has_CFI() == (section == ".debug_frame")
        if dwarf.has_CFI():     # the header-only index finds exactly pyelftools' FDEs
            hdrs = [e.header for e in dwarf.CFI_entries() if isinstance(e, FDE)]
            full = sorted((h["initial_location"], h["initial_location"] + h["address_range"]) for h in hdrs)
            assert [(s, e) for s, e, _ in cfi._entries] == full
    mid_pc, mid_off = _last_row(cfi, kernel, "mid")
    top_pc, top_off = _last_row(cfi, kernel, "top")
    start_pc, start_off = _last_row(cfi, kernel, "_start")
    assert mid_off > 8 and top_off > 8          # both keep locals on the stack, no frame pointer
    sp0 = STACK + 0x100
    sp1 = sp0 + mid_off                         # mid's CFA = top's sp after the call
    sp2 = sp1 + top_off
    page = bytearray(0x1000)
    struct.pack_into("<Q", page, (sp1 - 8) & 0xFFF, top_pc + 1)       # mid returns into top
    struct.pack_into("<Q", page, (sp2 - 8) & 0xFFF, start_pc + 1)     # top returns into _start
    struct.pack_into("<Q", page, (sp2 + start_off - 8) & 0xFFF, 0)    # _start: the end
    vm = FakeMemory("amd64", kernel, {STACK: page})
    regs = {"rip": mid_pc, "rsp": sp0, "rbp": 0}
    by_fp = backtrace(vm, regs)
    assert len(by_fp) == 1                      # frame pointers alone lose the caller
    bt = backtrace(vm, regs, cfi=cfi)
    assert [f.function.split("+")[0] for f in bt] == ["mid", "top", "_start"], bt.format("amd64")
    assert "return address 0" in bt.stop_reason
    cfi.close()


def test_describe_names_data_objects_too(tmp_path):
    data = 0xFFFFFFFF81000000
    k = Kernel(write_elf(tmp_path / "kernel", [(".text", TEXT, bytes(0x4000), True),
                                                (".data", data, bytes(0x1000), False)],
                         FUNCS + [("dump_state", data + 0x100, 0x40, "object")]))
    assert k.describe(data + 0x110) == "dump_state+0x10"
    assert k.describe(data + 0x100) == "dump_state"
    assert k.describe(data + 0x140) is None          # past its size
    assert k.describe(TEXT + 0x101) == "sched_switch+0x1"


def test_random_stacks_never_raise_loop_or_overrun(tmp_path):
    """Fuzz: any stack contents, any registers: a result with a stop reason, bounded reads."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    kernel = _kernel(tmp_path, FUNCS)
    words = st.one_of(st.integers(0, (1 << 64) - 1), st.sampled_from(
        [0, STACK + 0x100, STACK + 0x200, STACK + 0x800, STACK + 0x1000, TEXT + 0x408, TEXT + 0x70E,
         TEXT + 0x810, TEXT + 0x210]))

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(words, min_size=512, max_size=512), st.sampled_from([0, 0x100, 0x108, 0x7F8, 0xFF8]),
           st.sampled_from(["amd64", "i386", "arm64"]))
    def check(stack_words, fp_off, arch):
        page = bytearray(struct.pack("<512Q", *stack_words))
        vm = FakeMemory(arch, kernel if arch == "amd64" else None, {STACK: page})
        regs = {"amd64": {"rip": TEXT + 0x120, "rbp": STACK + fp_off, "rsp": STACK},
                "i386": {"eip": 0x1000, "ebp": (STACK + fp_off) & 0xFFFFFFFF},
                "arm64": {"pc": TEXT, "fp": STACK + fp_off, "sp": STACK}}[arch]
        bt = backtrace(vm, regs)
        assert bt.stop_reason and 1 <= len(bt) <= MAX_FRAMES
        assert vm.reads <= 3 * MAX_FRAMES

    check()

"""Kernel stack backtraces from a thread's saved registers, by the frame-pointer chain.

FreeBSD kernels keep frame pointers, and this is how LLDB's FreeBSD kernel plugin and ddb unwind:
amd64 / i386 frames are `[fp] = caller's fp, [fp + word] = return address`; arm64 frame records are
`[x29] = caller's x29, [x29 + 8] = lr`. Frame 0 is the saved pc itself.

Trap frames (amd64 / i386, when the kernel has code symbols): when a return address lands in a trap
entry (`calltrap`, `fork_trampoline`, `Xfast_syscall`, `Xtimerint`, ...), the frame whose return
address it is was called with the `struct trapframe` right above its own frame record (ddb's rule:
trapframe = fp + 2 words). The walk continues from the interrupted context's pc/fp when that was
kernel mode and stops when it was user mode or the trapframe is empty (a kernel thread's
`fork_trampoline`, where ddb prints `--- trap 0, rip = 0 ...`).

The walk never loops and never wanders: a caller frame normally lies above the current one (the
stack grows down) within `MAX_FRAME_SPAN`; a jump elsewhere is a stack switch (an NMI / IPI handler on
its own stack returning into the thread's kernel stack, as in LLDB's amd64 minidump), allowed
`MAX_STACK_SWITCHES` times; a frame pointer seen before is a loop and ends the walk. It reads only
through the dump (an absent or cut-short page ends the walk with the reason), and stops after
`MAX_FRAMES`.

With a kernel.debug's DWARF CFI (`reader.cfi`), x86 frames are unwound by the CFI rows where an FDE
covers the pc (optimised functions without frame pointers) and by frame pointers elsewhere; an
assembly leaf without CFI at frame 0 (an idle `hlt` loop) returns through the word at the stack top
when that lands in a known function (CFI or symbol table).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from typing import Any

from .cfi import CallFrameTable
from .errors import ReaderError
from .memory import KernelMemory

MAX_FRAMES = 256
#: the largest plausible distance between two frame records on one kernel stack
MAX_FRAME_SPAN = 1 << 20
#: jumps of the frame chain to another stack (interrupt / NMI stacks) before the walk gives up
MAX_STACK_SWITCHES = 2

# The entries ddb's db_nextframe() treats as trap frames (amd64 and i386 db_trace.c)
TRAP_ENTRIES = frozenset({"calltrap", "fork_trampoline", "mchk_calltrap", "nmi_calltrap", "Xdblfault"})
SYSCALL_ENTRIES = frozenset({"Xfast_syscall", "Xfast_syscall_pti", "fast_syscall_common",
                             "Xint0x80_syscall", "Xlcall_syscall"})
INTERRUPT_ENTRIES = frozenset({"Xxen_intr_upcall", "Xtimerint", "Xipi_intr_bitmap_handler", "Xcpustop",
                               "Xcpususpend", "Xrendezvous"})
INTERRUPT_PREFIXES = ("Xatpic_intr", "Xapic_isr")
#: i386 (12.0+): the exception entry code runs from a trampoline copied to the top 4 MiB of the
#: address space (PMAP_TRM_MIN_ADDRESS); its symbols are `setidt_disp` bytes lower
I386_TRAMPOLINE_MIN = 0xFFC00000


@dataclass(frozen=True)
class TrapFrame:
    """The interrupted context a trap entry saved: `kind` is trap, syscall or interrupt."""

    kind: str
    address: int
    trapno: int
    pc: int
    sp: int
    fp: int
    user: bool

    def describe(self, arch: str) -> str:
        ip, sp, fp = ("eip", "esp", "ebp") if arch == "i386" else ("rip", "rsp", "rbp")
        return (f"--- {self.kind} {self.trapno:#x}, {ip} = {self.pc:#x}, {sp} = {self.sp:#x}, "
                f"{fp} = {self.fp:#x} ---")


@dataclass(frozen=True)
class Frame:
    """One stack frame: `pc` (frame 0: the saved pc; above: the return address) and its frame pointer."""

    index: int
    pc: int
    fp: int
    function: str | None = None    # "name+0xoff" when the kernel has code symbols
    trap: TrapFrame | None = None  # set when this frame is a trap entry that saved a trapframe

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"index": self.index, "pc": f"{self.pc:#x}", "fp": f"{self.fp:#x}",
                             "function": self.function}
        if self.trap is not None:
            t = self.trap
            d["trap"] = {"kind": t.kind, "address": f"{t.address:#x}", "trapno": t.trapno,
                         "pc": f"{t.pc:#x}", "sp": f"{t.sp:#x}", "fp": f"{t.fp:#x}", "user": t.user}
        return d


@dataclass
class Backtrace:
    frames: list[Frame] = field(default_factory=list)
    #: why the walk ended ("end of the frame chain", "page not in the dump: ...", ...)
    stop_reason: str = ""

    def __iter__(self):
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def pcs(self) -> list[int]:
        return [f.pc for f in self.frames]

    def format(self, arch: str) -> list[str]:
        """ddb-style lines: `func() at func+0x2b/frame 0x...`, trap lines between."""
        lines = []
        for f in self.frames:
            where = f.function or f"{f.pc:#x}"
            name = where.split("+", 1)[0] if f.function else None
            head = f"{name}() at {where}" if name else f"{where}"
            lines.append(f"#{f.index:<3d}{head}/frame {f.fp:#x}")
            if f.trap is not None:
                lines.append(f"     {f.trap.describe(arch)}")
        lines.append(f"     ({self.stop_reason})")
        return lines


@dataclass(frozen=True)
class _X86:
    word: int
    pc_reg: str
    fp_reg: str
    sp_reg: str
    #: struct trapframe offsets: trapno, fp, pc, cs, sp, and its size up to sp
    tf_trapno: int
    tf_fp: int
    tf_pc: int
    tf_cs: int
    tf_sp: int
    #: lowest kernel address: a pc below it is user space (amd64) - None on i386 (4/4 split)
    kernel_min: int | None


# sys/amd64/include/frame.h: 15 GPRs (rbp is the 9th), trapno, fs/gs, addr, flags, es/ds, err, rip,
# cs, rflags, rsp, ss
AMD64 = _X86(word=8, pc_reg="rip", fp_reg="rbp", sp_reg="rsp", tf_trapno=120, tf_fp=64, tf_pc=152, tf_cs=160,
             tf_sp=176, kernel_min=0xFFFF800000000000)
# sys/i386/include/frame.h: fs, es, ds, edi, esi, ebp, isp, ebx, edx, ecx, eax, trapno, err, eip, cs,
# eflags, esp, ss
I386 = _X86(word=4, pc_reg="eip", fp_reg="ebp", sp_reg="esp", tf_trapno=44, tf_fp=20, tf_pc=52, tf_cs=56,
            tf_sp=64, kernel_min=None)


def backtrace(vm: KernelMemory, registers: dict[str, int], *, max_frames: int = MAX_FRAMES,
              cfi: CallFrameTable | None = None) -> Backtrace:
    """Unwind from saved `registers` (a `Thread.registers` dict) through the dump's memory.

    With `cfi` (the kernel.debug's call frame information), x86 frames are unwound by DWARF CFI
    wherever an FDE covers the pc, by the frame pointer elsewhere.
    """
    arch = vm.arch.name
    if arch in ("amd64", "i386"):
        a = AMD64 if arch == "amd64" else I386
        if cfi is not None and len(cfi):
            return _walk_x86_cfi(vm, registers, a, max_frames, cfi)
        return _walk_x86(vm, registers, a, max_frames)
    if arch == "arm64":
        return _walk_arm64(vm, registers, max_frames)
    return Backtrace([], f"no unwinder for {arch}")


def _symbolize(vm: KernelMemory, pc: int) -> str | None:
    k = vm.kernel
    if k is None:
        return None
    if vm.arch.name == "i386" and pc >= I386_TRAMPOLINE_MIN:
        disp = _setidt_disp(vm)
        if disp:
            name = k.symbolize((pc - disp) & 0xFFFFFFFF)     # 32-bit address arithmetic
            return f"{name} (trampoline)" if name else None
    return k.symbolize(pc)


def _setidt_disp(vm: KernelMemory) -> int:
    cache = getattr(vm, "_unwind_cache", None)
    if cache is None:
        cache = {}
        with contextlib.suppress(AttributeError):
            vm._unwind_cache = cache  # type: ignore[attr-defined]
    if "setidt_disp" not in cache:
        try:
            sym = vm.kernel.get("setidt_disp") if vm.kernel is not None else None
            cache["setidt_disp"] = vm.read_int(sym.address, 4) if sym is not None else 0
        except ReaderError:
            cache["setidt_disp"] = 0
    return cache["setidt_disp"]


def _entry_kind(vm: KernelMemory, pc: int, index: int) -> str | None:
    """trap / syscall / interrupt when `pc` is in a trap entry (frames above 0 look up pc - 1, as ddb)."""
    function = _symbolize(vm, pc - 1 if index > 0 else pc)
    if function is None:
        return None
    name = function.split("+", 1)[0].split(" ", 1)[0]
    if name in TRAP_ENTRIES:
        return "trap"
    if name in SYSCALL_ENTRIES:
        return "syscall"
    if name in INTERRUPT_ENTRIES or name.startswith(INTERRUPT_PREFIXES):
        return "interrupt"
    return None


def _trapframe_address(a: _X86, callee_fp: int, saved_fp: int) -> int:
    """Where the trapframe is: amd64 right above the callee's frame record (callee fp + 16); i386
    (12.0+) in the saved frame pointer, which the entry code pointed at the trapframe."""
    return callee_fp + 2 * a.word if a.word == 8 else saved_fp


def _read_words(vm: KernelMemory, addr: int, count: int, word: int) -> tuple[int, ...]:
    return struct.unpack(f"<{count}{'Q' if word == 8 else 'I'}", vm.read(addr, count * word))


def _walk_x86(vm: KernelMemory, regs: dict[str, int], a: _X86, max_frames: int) -> Backtrace:
    bt = Backtrace()
    if a.pc_reg not in regs or a.fp_reg not in regs:
        bt.stop_reason = "no saved registers"
        return bt
    pc, fp = regs[a.pc_reg], regs[a.fp_reg]
    after_trap = False
    seen: set[int] = set()
    switches = 0
    while True:
        if len(bt.frames) >= max_frames:
            bt.stop_reason = f"stopped after {max_frames} frames"
            return bt
        function = _symbolize(vm, pc)
        index = len(bt.frames)
        kind = _entry_kind(vm, pc, index)
        if kind is not None and index > 0:
            # the previous frame record holds the return address `pc`; `fp` is the value it saved
            tf_addr = _trapframe_address(a, bt.frames[-1].fp, fp)
            if tf_addr == 0:
                bt.frames.append(Frame(index, pc, fp, function))
                bt.stop_reason = "thread start (no trapframe)"
                return bt
            try:
                tf = _read_trapframe(vm, tf_addr, kind, a)
            except ReaderError as exc:
                bt.frames.append(Frame(index, pc, fp, function))
                bt.stop_reason = f"trapframe at {tf_addr:#x} unreadable: {exc.detail}"
                return bt
            bt.frames.append(Frame(index, pc, fp, function, tf))
            if tf.pc == 0:
                bt.stop_reason = "thread start (empty trapframe)" if function and function.startswith(
                    "fork_trampoline") else "empty trapframe"
                return bt
            if tf.user:
                bt.stop_reason = f"{kind} from user mode"
                return bt
            pc, fp, after_trap = tf.pc, tf.fp, True
            continue
        bt.frames.append(Frame(index, pc, fp, function))
        if fp == 0:
            bt.stop_reason = "end of the frame chain (frame pointer 0)"
            return bt
        if fp % a.word:
            bt.stop_reason = f"misaligned frame pointer {fp:#x}"
            return bt
        try:
            next_fp, ret = _read_words(vm, fp, 2, a.word)
        except ReaderError as exc:
            bt.stop_reason = f"frame record at {fp:#x} unreadable: {exc.detail}"
            return bt
        if ret == 0:
            bt.stop_reason = "end of the frame chain (return address 0)"
            return bt
        if _entry_kind(vm, ret, 1) is not None:
            pc, fp, after_trap = ret, next_fp, False   # decoded from the trapframe next round
            continue
        seen.add(fp)
        stop = _check_caller(fp, next_fp, seen, switches, after_trap, a.kernel_min)
        if stop is None and next_fp != 0 and not fp < next_fp <= fp + MAX_FRAME_SPAN and not after_trap:
            switches += 1
        if stop is not None:
            # the return address itself is valid (LLDB lists it too): keep it, then stop
            bt.frames.append(Frame(len(bt.frames), ret, next_fp, _symbolize(vm, ret)))
            bt.stop_reason = stop
            return bt
        after_trap = False
        pc, fp = ret, next_fp


def _walk_x86_cfi(vm: KernelMemory, regs: dict[str, int], a: _X86, max_frames: int,
                  cfi: CallFrameTable) -> Backtrace:
    """The x86 walk with DWARF CFI: CFI where an FDE covers the pc, frame pointers elsewhere."""
    bt = Backtrace()
    if a.pc_reg not in regs or a.sp_reg not in regs:
        bt.stop_reason = "no saved registers"
        return bt
    state = dict(regs)
    seen: set[tuple[int, int]] = set()
    switches = 0
    callee_cfa: int | None = None
    after_trap = False

    def word(addr: int) -> int:
        return _read_words(vm, addr, 1, a.word)[0]

    while True:
        if len(bt.frames) >= max_frames:
            bt.stop_reason = f"stopped after {max_frames} frames"
            return bt
        index = len(bt.frames)
        pc, sp, fp = state[a.pc_reg], state[a.sp_reg], state.get(a.fp_reg, 0)
        function = _symbolize(vm, pc)
        kind = _entry_kind(vm, pc, index)
        if kind is not None and index > 0 and callee_cfa is not None and not cfi.covers(pc - 1):
            # amd64: the callee's CFA (= its frame record + 16); i386: the frame pointer it restored
            tf_addr = callee_cfa if a.word == 8 else fp
            try:
                tf = _read_trapframe(vm, tf_addr, kind, a)
            except ReaderError as exc:
                bt.frames.append(Frame(index, pc, fp, function))
                bt.stop_reason = f"trapframe at {tf_addr:#x} unreadable: {exc.detail}"
                return bt
            bt.frames.append(Frame(index, pc, fp, function, tf))
            if tf.pc == 0 or tf.user:
                bt.stop_reason = "thread start (empty trapframe)" if tf.pc == 0 else f"{kind} from user mode"
                return bt
            state = {a.pc_reg: tf.pc, a.sp_reg: tf.sp, a.fp_reg: tf.fp}
            callee_cfa, after_trap = None, True
            continue
        bt.frames.append(Frame(index, pc, fp, function))
        try:
            new = cfi.step(state, pc, word, caller_frame=index > 0)
            how = "cfi"
            if new is None and index == 0:
                # an assembly leaf without CFI (an idle `hlt` loop): the return address is at the top
                # of the stack if it lands in a function the CFI or the symbol table knows
                ret = word(sp)
                known = vm.kernel is not None and vm.kernel.function_at(ret - 1) is not None
                if cfi.covers(ret - 1) or known:
                    new = {**state, a.pc_reg: ret, a.sp_reg: sp + a.word}
                    how = "leaf"
            if new is None:
                if fp == 0:
                    bt.stop_reason = "end of the frame chain (no CFI here and frame pointer 0)"
                    return bt
                next_fp, ret = _read_words(vm, fp, 2, a.word)
                new = {**state, a.pc_reg: ret, a.sp_reg: fp + 2 * a.word, a.fp_reg: next_fp}
                how = "fp"
        except ReaderError as exc:
            bt.stop_reason = f"stack unreadable: {exc.detail}"
            return bt
        ret, cfa = new[a.pc_reg], new[a.sp_reg]
        if ret == 0:
            bt.stop_reason = f"end of the call chain (return address 0, by {how})"
            return bt
        if (ret, cfa) in seen:
            bt.stop_reason = f"the unwind loops at pc {ret:#x} cfa {cfa:#x}"
            return bt
        seen.add((ret, cfa))
        if not sp < cfa <= sp + MAX_FRAME_SPAN and not after_trap:
            if a.kernel_min is not None and cfa < a.kernel_min:
                bt.frames.append(Frame(len(bt.frames), ret, new.get(a.fp_reg, 0), _symbolize(vm, ret)))
                bt.stop_reason = f"caller stack {cfa:#x} is a user address (entered from user mode)"
                return bt
            switches += 1
            if switches > MAX_STACK_SWITCHES:
                bt.stop_reason = f"caller stack {cfa:#x} is not above {sp:#x} (corrupt stack?)"
                return bt
        after_trap = False
        callee_cfa = cfa
        state = new


def _check_caller(fp: int, next_fp: int, seen: set[int], switches: int, after_trap: bool,
                  kernel_min: int | None) -> str | None:
    """Why the caller frame `next_fp` must not be followed, or None to follow it."""
    if next_fp == 0:
        return None
    if next_fp in seen:
        return f"frame chain loops back to {next_fp:#x}"
    if kernel_min is not None and next_fp < kernel_min:
        return f"caller frame pointer {next_fp:#x} is a user address (entered from user mode)"
    if fp < next_fp <= fp + MAX_FRAME_SPAN or after_trap:
        return None
    if switches >= MAX_STACK_SWITCHES:
        return (f"caller frame pointer {next_fp:#x} is not above {fp:#x} and the chain already switched "
                f"stacks {switches} times (corrupt stack?)")
    return None


def _read_trapframe(vm: KernelMemory, addr: int, kind: str, a: _X86) -> TrapFrame:
    span = a.tf_sp + a.word
    raw = vm.read(addr, span)
    fmt = "<Q" if a.word == 8 else "<I"

    def word(off: int) -> int:
        return struct.unpack_from(fmt, raw, off)[0]

    trapno = struct.unpack_from("<I", raw, a.tf_trapno)[0]
    pc, cs, fp = word(a.tf_pc), word(a.tf_cs), word(a.tf_fp)
    user = bool(cs & 3) or (a.kernel_min is not None and pc != 0 and pc < a.kernel_min)
    # i386 pushes esp/ss only on a privilege change: a kernel-mode trap's stack is the frame's end
    sp = word(a.tf_sp) if (user or a.word == 8) else addr + a.tf_sp
    return TrapFrame(kind, addr, trapno, pc, sp, fp, user)


def _walk_arm64(vm: KernelMemory, regs: dict[str, int], max_frames: int) -> Backtrace:
    bt = Backtrace()
    if "pc" not in regs or "fp" not in regs:
        bt.stop_reason = "no saved registers"
        return bt
    pc, fp = regs["pc"], regs["fp"]
    seen: set[int] = set()
    switches = 0
    while True:
        if len(bt.frames) >= max_frames:
            bt.stop_reason = f"stopped after {max_frames} frames"
            return bt
        bt.frames.append(Frame(len(bt.frames), pc, fp, _symbolize(vm, pc)))
        if fp == 0:
            bt.stop_reason = "end of the frame chain (x29 0)"
            return bt
        if fp % 8:
            bt.stop_reason = f"misaligned frame record {fp:#x}"
            return bt
        try:
            next_fp, lr = _read_words(vm, fp, 2, 8)
        except ReaderError as exc:
            bt.stop_reason = f"frame record at {fp:#x} unreadable: {exc.detail}"
            return bt
        if lr == 0:
            bt.stop_reason = "end of the frame chain (lr 0)"
            return bt
        seen.add(fp)
        stop = _check_caller(fp, next_fp, seen, switches, False, None)
        if stop is not None:
            bt.frames.append(Frame(len(bt.frames), lr, next_fp, _symbolize(vm, lr)))
            bt.stop_reason = stop
            return bt
        if next_fp != 0 and not fp < next_fp <= fp + MAX_FRAME_SPAN:
            switches += 1
        pc, fp = lr, next_fp

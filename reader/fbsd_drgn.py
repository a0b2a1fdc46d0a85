"""drgn on FreeBSD kernel dumps: a `drgn.Program` whose memory is our reader, types from kernel.debug.

drgn understands Linux kernels and ELF cores, not FreeBSD vmcores; but a `drgn.Program` can be built
by hand: one virtual memory segment over the kernel's half of the address space backed by
`Vmcore.read` (and a physical one backed by `Vmcore.read_phys`), and `kernel.debug` loaded as the main
module for DWARF types and variables. drgn's C expression objects then work on the dump
(`prog["hz"]`, `Object(prog, "struct proc *", value=...)`, member access, `.format_()`).

FreeBSD helpers live here because drgn ships Linux ones only: `for_each_proc`, `for_each_thread`,
`msgbuf`, `bt`. They find processes through the offset symbols every FreeBSD kernel exports (the
same walk `Vmcore.threads()` does), so they work for any `struct proc` layout the DWARF describes.

drgn is optional (`pip install 'fbsd-hil[drgn]'`): without it this module raises one clear
`ReaderError` line. Without kernel.debug there are no types: the program still reads memory and
the helpers still yield addresses (`int`s) instead of typed objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from .cfi import CallFrameTable
from .errors import AddressError, KernelMismatchError, ReaderError
from .kernel import Kernel
from .kernelcheck import check_kernel
from .memory import KernelMemory
from .threads import MAX_ENTRIES, list_threads

#: where kernel virtual memory starts, per architecture (the memory segment drgn reads through us)
KVA_START = {"amd64": 0xFFFF800000000000, "arm64": 0xFFFF000000000000, "i386": 0}
ADDRESS_TOP = {"amd64": 1 << 64, "arm64": 1 << 64, "i386": 1 << 32}
INSTALL_HINT = "pip install 'fbsd-hil[drgn]' (or: pip install drgn)"


def _import_drgn():
    try:
        import drgn
    except ImportError:
        raise ReaderError(f"drgn is not installed: {INSTALL_HINT}", field="drgn",
                          expected="the drgn package (an optional extra)") from None
    return drgn


def _platform(drgn, arch: str):
    flags = drgn.PlatformFlags.IS_LITTLE_ENDIAN
    if arch in ("amd64", "arm64"):
        flags |= drgn.PlatformFlags.IS_64_BIT
    machine = {"amd64": drgn.Architecture.X86_64, "i386": drgn.Architecture.I386,
               "arm64": drgn.Architecture.AARCH64}[arch]
    return drgn.Platform(machine, flags)


def check_debug_file(vm: KernelMemory, debug: str | os.PathLike) -> Kernel:
    """Refuse a kernel.debug from another build: build-id, section layout, `version` in the dump."""
    debug_kernel = Kernel(debug)
    kern = vm.kernel
    if kern is not None:
        if kern.build_id and debug_kernel.build_id and kern.build_id != debug_kernel.build_id:
            raise KernelMismatchError(
                f"{debug} (build-id {debug_kernel.build_id}) is not the debug file of {kern.path} "
                f"(build-id {kern.build_id})", path=debug, field="build-id", expected=kern.build_id)
        diff = _section_difference(kern.path, Path(debug))
        if diff:
            raise KernelMismatchError(f"{debug} is not the debug file of {kern.path}: {diff}", path=debug,
                                      field="section headers", expected=f"the sections of {kern.path}")

    class _WithDebug:
        """The dump seen with the debug file's symbols, for `check_kernel`."""

        def __init__(self, inner: KernelMemory):
            self._inner = inner
            self.kernel = debug_kernel

        def read(self, va: int, size: int) -> bytes:
            return self._inner.read(va, size)

    match = check_kernel(_WithDebug(vm))  # type: ignore[arg-type]
    if match.mismatch:
        raise KernelMismatchError(f"{debug} does not belong to the dump {vm.path}: {match.evidence}",
                                  path=debug, field="version", expected="this dump's kernel.debug")
    return debug_kernel


def _alloc_sections(path: Path) -> dict[str, tuple[int, int]]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return {s.name: (s["sh_addr"], s["sh_size"]) for s in elf.iter_sections()
                if s["sh_flags"] & 0x2 and s.name}


def _section_difference(kernel: Path, debug: Path) -> str | None:
    try:
        a, b = _alloc_sections(kernel), _alloc_sections(debug)
    except Exception:  # noqa: BLE001 - unreadable headers are reported by Kernel() already
        return None
    for name in sorted(set(a) & set(b)):
        if a[name] != b[name]:
            return (f"section {name} is at {b[name][0]:#x} size {b[name][1]:#x} in the debug file, "
                    f"{a[name][0]:#x} size {a[name][1]:#x} in the kernel")
    return None


def _load_range(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [(s["p_vaddr"], s["p_vaddr"] + s["p_memsz"]) for s in elf.iter_segments()
                 if s["p_type"] == "PT_LOAD" and s["p_memsz"]]
    if not loads:
        return None
    return min(lo for lo, _ in loads), max(hi for _, hi in loads)


def drgn_program(vm: KernelMemory, debug: str | os.PathLike | None = None) -> Any:
    """A `drgn.Program` over the open dump `vm`, with types from `debug` (kernel.debug) if given."""
    drgn = _import_drgn()
    arch = vm.arch.name
    prog = drgn.Program(_platform(drgn, arch))

    def read_virtual(address: int, count: int, offset: int, physical: bool) -> bytes:
        try:
            return vm.read(address, count)
        except ReaderError as exc:
            raise drgn.FaultError(exc.detail, address) from None

    def read_physical(address: int, count: int, offset: int, physical: bool) -> bytes:
        try:
            return vm.read_phys(address, count)
        except ReaderError as exc:
            raise drgn.FaultError(exc.detail, address) from None

    start, top = KVA_START[arch], ADDRESS_TOP[arch]
    prog.add_memory_segment(start, top - start, read_virtual)
    prog.add_memory_segment(0, 1 << 52 if top > 1 << 32 else 1 << 36, read_physical, True)
    if debug is not None:
        debug_path = Path(debug)
        check_debug_file(vm, debug_path)
        _load_debug_file(prog, debug_path)
    prog.cache["fbsd_vmcore"] = vm
    prog.cache["fbsd_debug"] = None if debug is None else Path(debug)
    return prog


def _load_debug_file(prog: Any, path: Path) -> None:
    """kernel.debug as drgn's main module; as an extra module (bias 0) if drgn cannot place it.

    drgn places a main module by the loadable segment that holds the ELF program headers; FreeBSD's
    kernels have one, a kernel linked without headers in a segment (the mock kernel) does not, and
    an extra module at bias 0 gives the same types and variables for a kernel linked where it runs.
    """
    def have(module: Any) -> bool:
        return str(module.debug_file_status).rsplit(".", 1)[-1] == "HAVE"

    try:
        module = prog.main_module("kernel", create=True)
        rng = _load_range(path)
        if rng is not None:
            module.address_range = rng
        module.try_file(str(path), force=True)
        if not have(module):
            module = prog.extra_module(str(path), 0, create=True)
            module.try_file(str(path), force=True)
    except Exception as exc:  # noqa: BLE001 - drgn raises several types for unusable files
        raise ReaderError(f"drgn cannot load the debug info: {exc}", path=path,
                          field="DWARF", expected="a kernel.debug with DWARF") from None
    if not have(module):
        raise ReaderError("drgn found no usable DWARF in it", path=path, field="DWARF",
                          expected="a kernel.debug with .debug_info")


def _vm_of(prog: Any) -> KernelMemory:
    return prog.cache["fbsd_vmcore"]


def _typed(prog: Any, type_name: str, address: int) -> Any:
    drgn = _import_drgn()
    try:
        return drgn.Object(prog, type_name, value=address)
    except LookupError:
        return address


def proc_addresses(vm: KernelMemory) -> list[int]:
    """Every `struct proc *` on `allproc`, through the exported offset symbols (no DWARF)."""
    kern = vm._need_kernel("the process list")
    p_list = vm.read_int(kern.lookup("proc_off_p_list").address, 4, signed=True)
    out: list[int] = []
    seen: set[int] = set()
    p = vm.read_pointer(vm.symbol("allproc"))
    while p and p not in seen and len(out) < MAX_ENTRIES:
        seen.add(p)
        out.append(p)
        p = vm.read_pointer(p + p_list)
    return out


def for_each_proc(prog: Any) -> Iterator[Any]:
    """Every process, newest first: `struct proc *` objects (plain addresses without DWARF)."""
    for p in proc_addresses(_vm_of(prog)):
        yield _typed(prog, "struct proc *", p)


def for_each_thread(prog: Any, proc: Any = None) -> Iterator[Any]:
    """Every thread (of `proc` if given): `struct thread *` objects (plain addresses without DWARF)."""
    vm = _vm_of(prog)
    want = None if proc is None else int(proc.value_() if hasattr(proc, "value_") else proc)
    for t in list_threads(vm):
        if want is None or t.proc == want:
            yield _typed(prog, "struct thread *", t.address)


def msgbuf(prog: Any) -> str:
    """The kernel message buffer, oldest line first."""
    return _vm_of(prog).msgbuf()


def bt(prog: Any, tid: int | None = None) -> None:
    """Print the backtrace of thread `tid` (default: the crashed thread); CFI from kernel.debug if loaded."""
    vm = _vm_of(prog)
    threads = list_threads(vm)
    t = next((t for t in threads if (t.tid == tid if tid is not None else t.crashed)), None)
    if t is None:
        raise AddressError(f"no thread with tid {tid}" if tid is not None else "no crashed thread",
                           address=tid or 0, path=vm.path)
    cfi = prog.cache.get("fbsd_cfi")
    if cfi is None and prog.cache.get("fbsd_debug") is not None:
        cfi = prog.cache["fbsd_cfi"] = CallFrameTable(prog.cache["fbsd_debug"], vm.arch.name)
    print("\n".join([f"thread {t.tid} {t.name}", *t.backtrace(cfi=cfi).format(vm.arch.name)]))


def shell_globals(prog: Any) -> dict[str, Any]:
    """What the interactive session offers besides drgn's own names."""
    return {"vm": _vm_of(prog), "for_each_proc": lambda: for_each_proc(prog),
            "for_each_thread": lambda proc=None: for_each_thread(prog, proc),
            "msgbuf": lambda: msgbuf(prog), "bt": lambda tid=None: bt(prog, tid)}


def run_shell(prog: Any) -> None:
    """drgn's interactive mode on the dump, with the FreeBSD helpers as globals."""
    import drgn.cli

    vm = _vm_of(prog)

    def banner(default: str) -> str:
        return (f"drgn on FreeBSD dump {vm.path} ({vm.arch.name} {vm.format})\n"
                "FreeBSD helpers: for_each_proc(), for_each_thread(proc=None), msgbuf(), bt(tid=None); "
                "vm is the reader's Vmcore\n" + default)

    def globals_func(g: dict[str, Any]) -> dict[str, Any]:
        g.update(shell_globals(prog))
        return g

    drgn.cli.run_interactive(prog, banner_func=banner, globals_func=globals_func)

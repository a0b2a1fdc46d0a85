"""fbsd-hil's FreeBSD kernel crash dump reader: minidumps and full dumps, on any host.

    with reader.open_vmcore("vmcore.0", kernel="kernel") as vm:
        hz = int.from_bytes(vm.read(vm.symbol("hz"), 4), "little")
        crashed = next(t for t in vm.threads() if t.crashed)
        for frame in crashed.backtrace():
            print(hex(frame.pc), frame.function)
        prog = reader.drgn_program(vm, debug="kernel.debug")   # needs the drgn extra
"""

from . import fbsd_drgn
from .errors import (
    AddressError,
    DecryptionError,
    FormatError,
    KernelMismatchError,
    ReaderError,
    SymbolError,
    TruncatedError,
)
from .fbsd_drgn import drgn_program
from .kernelcheck import KernelMatch
from .threads import Thread
from .unwind import Backtrace, Frame, TrapFrame
from .vmcore import PageMap, Vmcore, open_vmcore

__all__ = [
    "AddressError",
    "Backtrace",
    "DecryptionError",
    "FormatError",
    "Frame",
    "KernelMatch",
    "KernelMismatchError",
    "PageMap",
    "ReaderError",
    "SymbolError",
    "Thread",
    "TrapFrame",
    "TruncatedError",
    "Vmcore",
    "drgn_program",
    "fbsd_drgn",
    "open_vmcore",
]

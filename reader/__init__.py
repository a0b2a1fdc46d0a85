"""fbsd-hil's FreeBSD kernel crash dump reader: minidumps and full dumps, on any host.

    with reader.open_vmcore("vmcore.0", kernel="kernel.debug") as vm:
        hz = int.from_bytes(vm.read(vm.symbol("hz"), 4), "little")
"""

from .errors import (
    AddressError,
    DecryptionError,
    FormatError,
    ReaderError,
    SymbolError,
    TruncatedError,
)
from .threads import Thread
from .vmcore import PageMap, Vmcore, open_vmcore

__all__ = [
    "AddressError",
    "DecryptionError",
    "FormatError",
    "PageMap",
    "ReaderError",
    "SymbolError",
    "Thread",
    "TruncatedError",
    "Vmcore",
    "open_vmcore",
]

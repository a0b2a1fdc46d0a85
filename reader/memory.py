"""What the analysis modules (threads, unwind, ps, crashinfo, info, msgbuf) need from a dump.

They take any object with this shape rather than importing `Vmcore`, so `reader.vmcore` sits above
them and the import graph of reader/ stays acyclic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from .kernel import Kernel


class KernelMemory(Protocol):
    path: Path
    arch: Any
    kernel: Kernel | None
    format: str

    def read(self, va: int, size: int) -> bytes: ...

    def read_int(self, va: int, size: int, signed: bool = False) -> int: ...

    def read_pointer(self, va: int) -> int: ...

    def read_cstring(self, va: int, limit: int = 4096) -> str: ...

    def symbol(self, name: str) -> int: ...

    def read_phys(self, pa: int, size: int) -> bytes: ...

    def msgbuf(self) -> str: ...

    def msgbuf_section(self) -> bytes: ...

    def threads(self) -> list[Any]: ...

    def _need_kernel(self, what: str) -> Kernel: ...

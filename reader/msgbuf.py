"""The kernel message buffer, in write order (wrap-around undone).

`struct msgbuf` (`sys/sys/msgbuf.h`): `char *msg_ptr; u_int msg_magic, msg_size, msg_wseq,
msg_rseq, ...`. The next write position is `msg_wseq % msg_size`, so the oldest text starts
there: text = buf[pos:] + buf[:pos], NULs (never-written space) dropped.
"""

from __future__ import annotations

import struct

from .errors import FormatError
from .memory import KernelMemory

MSG_MAGIC = 0x063062
#: a message buffer larger than this is corruption (the default is 96 KiB, tunable to a few MiB)
MAX_MSGBUF = 64 << 20


def unwrap(buf: bytes, wseq: int) -> str:
    pos = wseq % len(buf) if buf else 0
    return (buf[pos:] + buf[:pos]).replace(b"\0", b"").decode("utf-8", "replace")


def read_msgbuf(vm: KernelMemory) -> str:
    ptr_size = vm.arch.pointer_size
    mbp = vm.read_pointer(vm.symbol("msgbufp"))
    raw = vm.read(mbp, ptr_size + 16)
    msg_ptr = int.from_bytes(raw[:ptr_size], "little")
    magic, size, wseq, _rseq = struct.unpack_from("<4I", raw, ptr_size)
    if magic != MSG_MAGIC:
        raise FormatError(f"struct msgbuf at {mbp:#x} has magic {magic:#x}", path=vm.path,
                          field="msg_magic", expected=f"{MSG_MAGIC:#x}")
    if not 0 < size <= MAX_MSGBUF:
        raise FormatError(f"struct msgbuf at {mbp:#x} has size {size}", path=vm.path, field="msg_size",
                          expected=f"1..{MAX_MSGBUF}")
    return unwrap(vm.read(msg_ptr, size), wseq)

"""Write guest physical memory through QEMU's gdbstub (``Qqemu.PhyMemMode:1`` + ``M`` packets).

Why: neither QMP nor HMP can write guest memory, and writing from inside the guest changes many pages
(page cache, stacks). The gdb remote protocol writes exactly the bytes asked for, at a physical
address, while the guest stays stopped. Test helper only.
"""

from __future__ import annotations

import socket
import time


class GdbStubError(RuntimeError):
    pass


def _packet(body: str) -> bytes:
    return f"${body}#{sum(body.encode()) % 256:02x}".encode()


class GdbStub:
    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""

    def _read_reply(self) -> str:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                body = self.buf[start + 1 : end].decode()
                self.buf = self.buf[end + 3 :]
                self.sock.sendall(b"+")
                return body
            data = self.sock.recv(4096)
            if not data:
                raise GdbStubError("gdbstub closed the connection")
            self.buf += data

    def command(self, body: str) -> str:
        self.sock.sendall(_packet(body))
        return self._read_reply()

    def write_phys(self, pa: int, data: bytes) -> None:
        if self.command("Qqemu.PhyMemMode:1") != "OK":
            raise GdbStubError("QEMU gdbstub refused physical memory mode")
        reply = self.command(f"M{pa:x},{len(data):x}:{data.hex()}")
        if reply != "OK":
            raise GdbStubError(f"memory write at {pa:#x} answered {reply!r}")

    def read_phys(self, pa: int, size: int) -> bytes:
        self.command("Qqemu.PhyMemMode:1")
        return bytes.fromhex(self.command(f"m{pa:x},{size:x}"))

    def close(self) -> None:
        self.sock.close()

"""Replay a recorded FreeBSD console transcript: a test double standing in for a real guest's serial port.

`RecordedTranscript.load(directory, name)` reads ``NAME.serial.log`` (every byte the guest printed) and
``NAME.driver.log`` (the same bytes with ``[qdrv T s] ...`` / ``[monitor] ...`` markers of what the
recording script did and when). Removing the markers from the driver log gives back the serial log byte
for byte (checked on load), which tells us *where* in the byte stream each action happened.

`ReplayConsoleSpawn(transcript)` is a pexpect spawn double (wrap it in the real `harness.vm.console.Console`)
that replays those bytes and answers what is sent the way the recording shows:

* output flows freely (instantly, or at the recorded pace with ``pace=1.0``) up to a *gate*;
* a ``db> `` / ``mountroot> `` prompt followed by an echoed line is a gate that opens when the client
  sends exactly that line (anything else raises `ReplayMismatch` from `send`, with both texts);
* a ``[monitor] (qemu) nmi`` marker is a gate that opens on `inject_nmi()`; ``sending ALT break`` opens
  when the client has sent CR ``~`` Ctrl-B (``sending ALT panic``: CR ``~`` Ctrl-P; ``sending key``: a
  CR, both only in the edited transcripts); ``sending BREAK`` opens on `send_break()`;
* at the end of the recording the double stays silent, like an idle guest (waits time out).

So `Ddb.dump()`, ddb entry routes and the stage recogniser run unmodified against it. It is a replay,
not a guest: it cannot answer a command that was not recorded.
"""

from __future__ import annotations

import bisect
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pexpect
from pexpect.spawnbase import SpawnBase

# A qdrv marker line, or a monitor command with its response lines (see module docstring).
_MARKER = re.compile(
    rb"\n\[qdrv +([\d.]+)s\] ([^\n]*)\n"
    rb"|\n\[monitor\] ([^\n]*)\n(?:[^\n\[][^\n]*\n)*(?:(?=\n\[)|\n)"
)
_PROMPT = re.compile(rb"db> |mountroot> ")
# What a ddb command echo looks like when ddb is left by it
_LEAVES_DDB = {b"c", b"cont", b"continue", b"reset", b"reboot", b"halt", b"call cpu_reset"}

ALT_BREAK = b"\r~\x02"
ALT_PANIC = b"\r~\x10"  # CR ~ Ctrl-P: the panic sequence (edited transcripts of kernels without ddb)


class ReplayMismatch(AssertionError):
    """The client sent something the recording does not show at this point."""


@dataclass(frozen=True)
class Gate:
    """Output stops at serial `offset` until the client does `kind` (line / bytes / nmi / break)."""

    offset: int
    kind: str
    expect: bytes = b""
    note: str = ""


@dataclass
class RecordedTranscript:
    """The serial bytes of one recorded run plus where the recording script acted (gates) and when."""

    name: str
    serial: bytes
    gates: list[Gate]
    timeline: list[tuple[int, float]] = field(default_factory=list)  # (serial offset, seconds)
    markers: list[tuple[int, str]] = field(default_factory=list)  # (serial offset, marker text)

    @classmethod
    def load(cls, directory: str | Path, name: str) -> RecordedTranscript:
        directory = Path(directory)
        serial = (directory / f"{name}.serial.log").read_bytes()
        driver_path = directory / f"{name}.driver.log"
        driver = driver_path.read_bytes()
        if driver.startswith(b"[qdrv] "):  # the command line of the recorded QEMU
            driver = driver[driver.index(b"\n") + 1 :]
        rebuilt = bytearray()
        pos = 0
        timeline: list[tuple[int, float]] = []
        markers: list[tuple[int, str]] = []
        for m in _MARKER.finditer(driver):
            rebuilt += driver[pos : m.start()]
            pos = m.end()
            if m.group(1) is not None:
                timeline.append((len(rebuilt), float(m.group(1))))
                markers.append((len(rebuilt), m.group(2).decode("utf-8", "replace")))
            else:
                markers.append((len(rebuilt), "monitor: " + m.group(3).decode("utf-8", "replace")))
        rebuilt += driver[pos:]
        if bytes(rebuilt) != serial:
            n = min(len(rebuilt), len(serial))
            i = next((i for i in range(n) if rebuilt[i] != serial[i]), n)
            raise ValueError(
                f"{driver_path}: without its markers it differs from {name}.serial.log at byte {i}: "
                f"{bytes(rebuilt[i - 20 : i + 20])!r} vs {serial[i - 20 : i + 20]!r}"
            )
        return cls(name, serial, _derive_gates(serial, markers), timeline, markers)

    def recorded_time(self, offset: int) -> float:
        """Seconds since the recording started at which byte `offset` was printed (interpolated)."""
        tl = self.timeline
        if not tl:
            return 0.0
        i = bisect.bisect_right([o for o, _ in tl], offset)
        if i == 0:
            o1, t1 = 0, 0.0
        else:
            o1, t1 = tl[i - 1]
        if i >= len(tl):
            return t1
        o2, t2 = tl[i]
        return t1 if o2 == o1 else t1 + (t2 - t1) * (offset - o1) / (o2 - o1)

    def text(self) -> str:
        return self.serial.decode("utf-8", "replace")


def _derive_gates(serial: bytes, markers: list[tuple[int, str]]) -> list[Gate]:
    gates: list[Gate] = []
    for offset, text in markers:
        if text == "monitor: (qemu) nmi":
            gates.append(Gate(offset, "nmi", note=text))
        elif text.startswith("sending ALT break"):
            gates.append(Gate(offset, "bytes", ALT_BREAK, note=text))
        elif text.startswith("sending ALT panic"):
            gates.append(Gate(offset, "bytes", ALT_PANIC, note=text))
        elif text.startswith("sending key"):
            gates.append(Gate(offset, "bytes", b"\r", note=text))
        elif text.startswith("sending BREAK"):
            gates.append(Gate(offset, "break", note=text))
    trigger_offsets = {g.offset for g in gates}
    in_ddb = False
    for m in _PROMPT.finditer(serial):
        end = m.end()
        is_ddb = m.group(0) == b"db> "
        if is_ddb:
            in_ddb = True
        elif in_ddb:
            continue  # "mountroot> " inside ddb output (e.g. show msgbuf) is not a prompt
        eol = serial.find(b"\r\n", end)
        if eol < 0 or end in trigger_offsets or end + 2 in trigger_offsets:
            continue  # the recording ends at this prompt, or an NMI/BREAK answered it
        line = serial[end:eol]
        gates.append(Gate(end, "line", line, note=m.group(0).decode().strip()))
        if is_ddb and line.strip() in _LEAVES_DDB:
            in_ddb = False
    gates.sort(key=lambda g: g.offset)
    return gates


class ReplaySpawnBase(SpawnBase):
    """What every replaying pexpect spawn double shares: the client's bytes are recorded (``sent``) and
    handed to the subclass (`_on_typed`, under the lock), and the spawn can be closed. Subclasses decide
    what the recording answers (`read_nonblocking`)."""

    def __init__(self) -> None:
        super().__init__(timeout=30, encoding=None)
        self.child_fd = -1
        self.closed = False
        self.terminated = False
        self._cond = threading.Condition()
        self._typed = bytearray()
        self.sent = bytearray()  # everything the client sent, in order
        self.error: ReplayMismatch | None = None

    def _on_typed(self) -> None:
        """React to what was typed so far (``self._typed``); called with the lock held."""

    def send(self, s: bytes | str) -> int:
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        with self._cond:
            if self.closed:
                raise OSError("replay console closed")
            self.sent += data
            self._typed += data
            try:
                self._on_typed()
            finally:
                self._cond.notify_all()
        return len(data)

    def sendline(self, s: bytes | str = "") -> int:
        return self.send((s.encode() if isinstance(s, str) else s) + b"\r")

    def write(self, s: bytes | str) -> None:
        self.send(s)

    def isalive(self) -> bool:
        return not self.closed

    def close(self, force: bool = True) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def fileno(self) -> int:
        return -1


class ReplayConsoleSpawn(ReplaySpawnBase):
    """pexpect spawn double replaying a `RecordedTranscript` (see module docstring).

    Also offers the guest controls the recording used (`inject_nmi`, `send_break`, `send_keys`), so it
    can stand in for a `Guest` where the FreeBSD layer needs one. Thread-safe: `Console` reads from its
    drain thread while the test sends from the main thread.
    """

    def __init__(
        self, transcript: RecordedTranscript, *, pace: float = 0.0, chunk: int = 4096, lose_nmis: int = 0
    ) -> None:
        super().__init__()
        self.transcript = transcript
        self.pace = pace
        self.chunk = chunk
        self._cursor = 0
        self._gate_index = 0
        self.nmis = 0
        self.breaks = 0
        # The first `lose_nmis` NMIs vanish, as observed at the mountroot> prompt (3 of 6 reached ddb).
        self.lose_nmis = lose_nmis
        self.nmis_injected = 0
        self._base_wall = time.monotonic()
        self._base_rec = 0.0

    # ------------------------------------------------------------ state
    @property
    def position(self) -> int:
        return self._cursor

    @property
    def next_gate(self) -> Gate | None:
        gates = self.transcript.gates
        return gates[self._gate_index] if self._gate_index < len(gates) else None

    @property
    def finished(self) -> bool:
        """All recorded output was delivered."""
        return self._cursor >= len(self.transcript.serial)

    def _limit(self) -> int:
        gate = self.next_gate
        return gate.offset if gate is not None else len(self.transcript.serial)

    def _open_gate(self) -> None:
        """Caller holds the lock and has satisfied the next gate."""
        self._gate_index += 1
        self._base_wall = time.monotonic()
        self._base_rec = self.transcript.recorded_time(self._cursor)
        self._cond.notify_all()

    def _check_gates(self) -> None:
        while True:
            gate = self.next_gate
            if gate is None or self._cursor < gate.offset:
                return
            if gate.kind == "line":
                ends = (self._typed.find(b"\r"), self._typed.find(b"\n"))
                cut = min((i for i in ends if i >= 0), default=-1)
                if cut < 0:
                    return
                line = bytes(self._typed[:cut])
                rest = self._typed[cut + 1 :]
                if self._typed[cut : cut + 2] == b"\r\n":
                    rest = self._typed[cut + 2 :]
                self._typed = bytearray(rest)
                if line.strip() != gate.expect.strip():
                    self.error = ReplayMismatch(
                        f"replay {self.transcript.name}: at byte {gate.offset} (after {gate.note!r}) the "
                        f"recording typed {gate.expect!r}, the client sent {line!r}"
                    )
                    raise self.error
            elif gate.kind == "bytes":
                i = self._typed.find(gate.expect)
                if i < 0:
                    return
                del self._typed[: i + len(gate.expect)]
            elif gate.kind == "nmi":
                if self.nmis == 0:
                    return
                self.nmis -= 1
            elif gate.kind == "break":
                if self.breaks == 0:
                    return
                self.breaks -= 1
            self._open_gate()

    # ------------------------------------------------------------ pexpect interface
    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> bytes:
        if timeout == -1:
            timeout = self.timeout
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self.closed:
                    raise pexpect.EOF("replay console closed")
                try:
                    self._check_gates()
                except ReplayMismatch as exc:  # Console's drain thread reports EOF with this reason
                    self.closed = True
                    raise pexpect.EOF(str(exc)) from exc
                limit = self._limit()
                if self._cursor < limit:
                    if self.pace > 0:
                        allowed_rec = self._base_rec + (time.monotonic() - self._base_wall) / self.pace
                        upto = self._cursor
                        while upto < limit and self.transcript.recorded_time(upto) <= allowed_rec:
                            upto = min(limit, upto + 64)
                        limit = upto
                    if self._cursor < limit:
                        n = min(size, self.chunk, limit - self._cursor)
                        data = self.transcript.serial[self._cursor : self._cursor + n]
                        self._cursor += n
                        return data
                    wait = 0.01
                else:
                    wait = None
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise pexpect.TIMEOUT("replay: nothing to deliver (waiting for the client or idle)")
                self._cond.wait(wait if remaining is None else min(remaining, wait or remaining))

    def _on_typed(self) -> None:
        self._check_gates()

    # ------------------------------------------------------------ guest controls
    def inject_nmi(self) -> None:
        with self._cond:
            self.nmis_injected += 1
            if self.lose_nmis > 0:
                self.lose_nmis -= 1
                return
            self.nmis += 1
            self._check_gates()
            self._cond.notify_all()

    def send_break(self) -> None:
        with self._cond:
            self.breaks += 1
            self._check_gates()
            self._cond.notify_all()

    def send_keys(self, keys) -> None:
        raise NotImplementedError("the replay double has no keyboard; the recordings used the serial line")

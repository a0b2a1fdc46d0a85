"""A serial console driven with pexpect: every byte kept, one deadline per phase, failures always armed.

Why it is built this way:

- A background thread drains the console continuously. A console nobody reads can stall a guest in the
  middle of a dump (QEMU stops taking bytes from a full UART), and bytes that arrive while nobody waits
  must still reach the transcript.
- Every byte goes to the transcript file from the first one on (flushed per chunk, so it survives a
  SIGKILL of the test process); a bounded tail is kept in memory for error messages.
- `expect` searches for the caller's patterns *and* every armed failure pattern (kernel panic, fatal
  trap...). Whichever appears first in the console wins, so a panic printed while waiting for a login
  prompt ends the wait at once with `ConsoleFailure` and the evidence, instead of a timeout minutes later.
- `run` wraps a shell command in unique markers whose echoed form differs from their output
  (``"__FBH""B_x__"``), so the terminal's echo of the command line can never match.
- The kernel writes to the same serial line whenever it likes, between any two bytes of a command's
  output, even inside a marker. The markers therefore tolerate a whole line cut into them, and a console
  that knows its kernel's log lines (`kernel_lines`, e.g. Linux's ``[   14.114297] ...``) has them cut out
  of what `run` matches and returns: unasked-for console output never breaks or pollutes a command.

Works over any pexpect spawn object: `pexpect.fdpexpect.fdspawn` on a QEMU pty (`Console.open_pty`),
`pexpect.spawn` of a local shell (the unit tests), or a replay double that implements `read_nonblocking`.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import os
import re
import secrets
import threading
import time
import tty
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pexpect
from pexpect import fdpexpect

from harness.util.deadline import Deadline, as_deadline

Regex = str | re.Pattern[str]

#: characters of console output kept in memory for `tail()` and error messages
TAIL_KEEP = 256 * 1024
#: characters shown in an error message
ERROR_TAIL = 3000
#: unconsumed output kept for matching; older text is dropped (it is still in the transcript)
PENDING_KEEP = 4 * 1024 * 1024

_counter = itertools.count(1)


class ConsoleError(Exception):
    """Base of console errors: says which phase, what was expected, and what the console showed."""

    def __init__(
        self,
        message: str,
        *,
        phase: str,
        expectation: str,
        tail: str,
        transcript: Path | None = None,
    ) -> None:
        self.message = message
        self.phase = phase
        self.expectation = expectation
        self.tail = tail
        self.transcript = transcript
        shown = tail[-ERROR_TAIL:]
        lines = [
            message,
            f"  phase: {phase}",
            f"  expecting: {expectation}",
        ]
        if transcript is not None:
            lines.append(f"  full transcript: {transcript}")
        lines.append(f"  console tail (last {len(shown)} chars):")
        lines.extend("    | " + line for line in shown.splitlines() or [""])
        super().__init__("\n".join(lines))


class ConsoleTimeout(ConsoleError):
    """The phase deadline passed before any expected pattern appeared."""

    def __init__(self, message: str, *, deadline: Deadline, **kw: Any) -> None:
        self.deadline = deadline
        super().__init__(message, **kw)


class ConsoleFailure(ConsoleError):
    """An armed failure pattern (e.g. ``panic:``) appeared while waiting for something else."""

    def __init__(self, message: str, *, name: str, pattern: str, matched: str, before: str, **kw: Any):
        self.name = name
        self.pattern = pattern
        self.matched = matched
        self.before = before
        super().__init__(message, **kw)


class ConsoleClosed(ConsoleError):
    """The console reached end of file (guest gone, pty closed) before the expectation was met."""


class CommandFailed(Exception):
    """A shell command run with `Console.run(..., check=True)` exited non-zero."""

    def __init__(self, result: CommandResult, tail: str) -> None:
        self.result = result
        self.tail = tail
        said = [ln.strip() for ln in result.output.splitlines() if ln.strip()]
        super().__init__(
            # the last line the command printed on the first line too: one-line errors show it
            f"command {result.command!r} exited with status {result.status}"
            + (f" ({said[-1][:200]})" if said else " (no output)")
            + "\n  output:\n" + "\n".join("    | " + ln for ln in result.output.splitlines() or [""])
        )


@dataclass(frozen=True)
class ConsoleMatch:
    """One successful wait: which pattern (`name`), its `match`, the text `before` it, and all the
    `text` consumed by the wait (``before`` + the matched text)."""

    name: str
    match: re.Match[str]
    before: str
    text: str


@dataclass(frozen=True)
class CommandResult:
    """Output (with ``\\r\\n`` normalised to ``\\n``) and exit status of one shell command."""

    command: str
    output: str
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0


def _compile(pattern: Regex) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise TypeError(f"console patterns are text regexes, got a bytes pattern {pattern.pattern!r}")
        return pattern
    if isinstance(pattern, str):
        return re.compile(pattern)
    raise TypeError(f"console pattern must be str or re.Pattern, got {type(pattern).__name__}")


class _WithoutInterjections:
    """`raw` with every match of `ignore` cut out (`text`), and the way back from a position in `text`
    to the same character in `raw`, so a wait can consume exactly what it matched."""

    def __init__(self, raw: str, ignore: re.Pattern[str] | None) -> None:
        self.raw = raw
        self._text_starts: list[int] = [0]
        self._raw_starts: list[int] = [0]
        if ignore is None:
            self.text = raw
            return
        pieces: list[str] = []
        self._text_starts, self._raw_starts = [], []
        pos = length = 0
        for m in ignore.finditer(raw):
            if m.start() > pos:
                self._text_starts.append(length)
                self._raw_starts.append(pos)
                pieces.append(raw[pos : m.start()])
                length += m.start() - pos
            pos = max(pos, m.end())
        self._text_starts.append(length)
        self._raw_starts.append(pos)
        pieces.append(raw[pos:])
        self.text = "".join(pieces)

    def raw_start(self, i: int) -> int:
        """Index in `raw` of the character at `text[i]` (or of the end)."""
        k = bisect.bisect_right(self._text_starts, i) - 1
        return self._raw_starts[k] + (i - self._text_starts[k])

    def raw_end(self, i: int) -> int:
        """Index in `raw` just after the character `text[i - 1]` (0 for 0)."""
        if i <= 0:
            return 0
        return self.raw_start(i - 1) + 1


#: a line cut into a marker: anything up to a newline, not starting with a double quote (so the echo of
#: the typed command, where the marker is split by ``""``, never matches even if the terminal wrapped it)
_CUT = r"(?:(?:[^\r\n\"][^\r\n]*)?\r*\n)??"


def _line_tolerant(literal: str) -> str:
    """A regex for `literal` that still matches when whole lines (anything ending in a newline, e.g. a
    kernel message) were cut into it between any two characters. The cuts are lazy: where the literal
    itself is there, it is what matches."""
    return _CUT.join(re.escape(ch) for ch in literal)


def _describe(patterns: Mapping[str, re.Pattern[str]]) -> str:
    return ", ".join(f"{name}={rx.pattern!r}" for name, rx in patterns.items()) or "(nothing)"


class Console:
    """pexpect over one console (see module docstring).

    `spawn` is any pexpect spawn object; bytes or text mode both work (bytes are decoded as UTF-8 with
    replacement for matching, and written unchanged to the transcript). `transcript` is a path (opened
    for appending: never truncates an existing file) or a binary file object. `newline` is what
    `sendline` appends: a carriage return, which is what a terminal sends on Enter.
    """

    def __init__(
        self,
        spawn: pexpect.spawnbase.SpawnBase,
        *,
        transcript: str | os.PathLike[str] | IO[bytes] | None = None,
        newline: str = "\r",
        name: str = "console",
        settle: float = 0.05,
        kernel_lines: Regex | None = None,
    ) -> None:
        self.spawn = spawn
        #: lines the kernel prints on this console unasked, at any moment (e.g. Linux's
        #: ``[   14.114297] hrtimer: ...``): cut out of what `run` matches and returns. None: unknown.
        self.kernel_lines: re.Pattern[str] | None = None if kernel_lines is None else _compile(kernel_lines)
        self.newline = newline
        self.settle = settle
        self.name = name
        self._own_transcript = False
        self._transcript: IO[bytes] | None
        self.transcript_path: Path | None = None
        if transcript is None:
            self._transcript = None
        elif isinstance(transcript, str | os.PathLike):
            self.transcript_path = Path(transcript)
            self._transcript = open(self.transcript_path, "ab")  # noqa: SIM115 - closed in close()
            self._own_transcript = True
        else:
            self._transcript = transcript
            tname = getattr(transcript, "name", None)
            self.transcript_path = Path(tname) if isinstance(tname, str) else None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cond = threading.Condition()
        self._pending = ""
        self._tail = ""
        self._failures: dict[str, re.Pattern[str]] = {}
        self._closed_reason: str | None = None
        self._stop = threading.Event()
        self.bytes_seen = 0
        self.first_byte_at: float | None = None
        self.last_byte_at: float | None = None
        self.dropped_chars = 0
        self._reader = threading.Thread(
            target=self._drain, args=(spawn, self._stop), name=f"{name}-drain", daemon=True
        )
        self._reader.start()

    # ---------------------------------------------------------------- construction helpers
    @classmethod
    def open_pty(
        cls,
        path: str | os.PathLike[str],
        transcript: str | os.PathLike[str] | IO[bytes] | None,
        **kwargs: Any,
    ) -> Console:
        """Open a pty (e.g. QEMU's serial ``/dev/pts/N``) in raw mode and drive it.

        Raw mode matters: with the default line discipline the host side would echo the guest's own
        output back into the guest and translate line endings.
        """
        spawn = cls.pty_spawn(path)
        kwargs.setdefault("name", f"console:{os.fspath(path)}")
        return cls(spawn, transcript=transcript, **kwargs)

    # ---------------------------------------------------------------- background drain
    def _drain(self, spawn: pexpect.spawnbase.SpawnBase, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data = spawn.read_nonblocking(65536, timeout=0.1)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                if not stop.is_set():
                    self._mark_closed("end of file on the console")
                return
            except (OSError, ValueError) as exc:
                if not stop.is_set():
                    self._mark_closed(f"console read failed: {exc}")
                return
            if data:  # bytes already read are kept even while stopping: the transcript has them all
                self._feed(data)

    def _feed(self, data: bytes | str) -> None:
        if isinstance(data, bytes):
            raw = data
            text = self._decoder.decode(data)
        else:
            text = data
            raw = data.encode("utf-8", errors="replace")
        now = time.monotonic()
        if self._transcript is not None:
            try:
                self._transcript.write(raw)
                self._transcript.flush()
            except (OSError, ValueError):
                pass  # a full disk must not stop the drain; the in-memory tail still has the bytes
        with self._cond:
            if self.first_byte_at is None:
                self.first_byte_at = now
            self.last_byte_at = now
            self.bytes_seen += len(raw)
            self._pending += text
            if len(self._pending) > PENDING_KEEP:
                cut = len(self._pending) - PENDING_KEEP
                self._pending = self._pending[cut:]
                self.dropped_chars += cut
            self._tail += text
            if len(self._tail) > 2 * TAIL_KEEP:
                self._tail = self._tail[-TAIL_KEEP:]
            self._cond.notify_all()

    def _mark_closed(self, reason: str) -> None:
        with self._cond:
            if self._closed_reason is None:
                self._closed_reason = reason
            self._cond.notify_all()

    # ---------------------------------------------------------------- state
    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    def tail(self, n: int = ERROR_TAIL) -> str:
        """The last `n` characters the console printed (bounded; the transcript has everything)."""
        with self._cond:
            return self._tail[-n:] if n > 0 else ""

    def pending(self) -> str:
        """Text received but not yet consumed by a wait."""
        with self._cond:
            return self._pending

    def discard_pending(self) -> str:
        """Forget unconsumed text (it stays in the transcript and tail); returns what was dropped."""
        with self._cond:
            text, self._pending = self._pending, ""
            return text

    # ---------------------------------------------------------------- failure patterns
    def arm_failure(self, name: str, regex: Regex) -> None:
        """From now on, `regex` appearing on the console ends any wait with `ConsoleFailure`."""
        with self._cond:
            self._failures[name] = _compile(regex)

    def disarm(self, name: str) -> None:
        with self._cond:
            self._failures.pop(name, None)

    @property
    def armed(self) -> dict[str, str]:
        with self._cond:
            return {n: rx.pattern for n, rx in self._failures.items()}

    @contextmanager
    def suspended(self, *names: str) -> Iterator[None]:
        """Disarm failure patterns for a block (e.g. while deliberately panicking), then re-arm them."""
        with self._cond:
            saved = {n: self._failures.pop(n) for n in names if n in self._failures}
        try:
            yield
        finally:
            with self._cond:
                self._failures.update(saved)

    # ---------------------------------------------------------------- waiting
    def expect(
        self, patterns: Mapping[str, Regex], deadline: Deadline | float, *, ignore: Regex | None = None
    ) -> ConsoleMatch:
        """Wait until one of `patterns` (name -> regex) appears, or fail with evidence.

        The earliest match in the unconsumed text wins; on a tie the caller's pattern beats an armed
        failure pattern. A failure raises `ConsoleFailure` (the text up to and including the failure
        is consumed, so the caller may go on waiting, e.g. for the debugger prompt after a panic).
        Text matching `ignore` (unasked-for kernel lines) is invisible to `patterns` and left out of
        the match's `before` and `text`; failure patterns still see everything.
        """
        wanted = {name: _compile(rx) for name, rx in patterns.items()}
        ignore_rx = None if ignore is None else _compile(ignore)
        dl = as_deadline(deadline, "expect")
        with self._cond:
            while True:
                failures = dict(self._failures)
                view = _WithoutInterjections(self._pending, ignore_rx)
                # (raw start, rank, name, match, raw end)
                best: tuple[int, int, str, re.Match[str], int] | None = None
                for rank, group in ((0, wanted), (1, failures)):
                    for name, rx in group.items():
                        if rank == 0:
                            m = rx.search(view.text)
                            if m is None:
                                continue
                            start, end = view.raw_start(m.start()), view.raw_end(m.end())
                            end = max(end, start)
                        else:
                            m = rx.search(self._pending)
                            if m is None:
                                continue
                            start, end = m.start(), m.end()
                        if best is None or (start, rank) < best[:2]:
                            best = (start, rank, name, m, end)
                settle_until = self._settle_until(best[4], dl) if best is not None else None
                if settle_until is not None:
                    best = None  # the match touches the end of what arrived so far: let it settle
                if best is not None:
                    _, rank, name, m, raw_end = best
                    source = view.text if rank == 0 else self._pending
                    before = source[: m.start()]
                    text = source[: m.end()]
                    self._pending = self._pending[raw_end:]
                    if rank == 0:
                        return ConsoleMatch(name=name, match=m, before=before, text=text)
                    raise ConsoleFailure(
                        f"{self.name}: failure pattern {name!r} appeared: {m.group(0)!r}",
                        name=name,
                        pattern=failures[name].pattern,
                        matched=m.group(0),
                        before=before,
                        **self._evidence(dl, wanted),
                    )
                if self._closed_reason is not None:
                    raise ConsoleClosed(
                        f"{self.name}: {self._closed_reason} before the expected output",
                        **self._evidence(dl, wanted),
                    )
                remaining = dl.remaining()
                if remaining <= 0 and settle_until is None:
                    raise ConsoleTimeout(
                        f"{self.name}: deadline of {dl.seconds:g} s for phase {dl.phase!r} passed",
                        deadline=dl,
                        **self._evidence(dl, wanted),
                    )
                if settle_until is not None:
                    self._cond.wait(max(0.001, settle_until - time.monotonic()))
                else:
                    self._cond.wait(min(remaining, 1.0))

    def _settle_until(self, match_end: int, dl: Deadline) -> float | None:
        """When to look again, while a match ends exactly at the end of the received text and bytes
        arrived less than `settle` seconds ago: a greedy pattern such as ``panic: [^\\r\\n]*`` must
        see the whole line, not the piece of it that arrived first. Prompts (nothing follows) match
        after `settle` seconds of quiet. None: the match stands."""
        if match_end < len(self._pending) or self._closed_reason is not None or self.last_byte_at is None:
            return None
        until = self.last_byte_at + self.settle
        if time.monotonic() >= until or dl.expired():
            return None
        return until

    def _evidence(self, dl: Deadline, wanted: Mapping[str, re.Pattern[str]]) -> dict[str, Any]:
        return {
            "phase": dl.phase,
            "expectation": _describe(wanted),
            "tail": self._tail[-TAIL_KEEP:],
            "transcript": self.transcript_path,
        }

    def expect_one(self, regex: Regex, deadline: Deadline | float, name: str = "expected") -> ConsoleMatch:
        return self.expect({name: regex}, deadline)

    def wait_closed(self, deadline: Deadline | float) -> str:
        """Wait for end of file (the guest powered off / was destroyed); failure patterns still apply.

        Returns the text that arrived before the end.
        """
        dl = as_deadline(deadline, "wait for console close")
        try:
            self.expect({}, dl)
        except ConsoleClosed:
            return self.discard_pending()
        raise AssertionError("unreachable: expect({}) returned")  # pragma: no cover

    # ---------------------------------------------------------------- sending
    def send(self, data: str | bytes, *, char_delay: float = 0.0) -> None:
        """Send raw data. `char_delay` paces single characters for consoles that drop fast input."""
        if self.closed:
            raise ConsoleClosed(
                f"{self.name}: cannot send, {self._closed_reason}",
                phase="send",
                expectation=f"send {data!r}",
                tail=self.tail(TAIL_KEEP),
                transcript=self.transcript_path,
            )
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        text_mode = getattr(self.spawn, "encoding", None) is not None
        chunks = [raw[i : i + 1] for i in range(len(raw))] if char_delay > 0 else [raw]
        for chunk in chunks:
            try:
                self.spawn.send(chunk.decode("utf-8", errors="replace") if text_mode else chunk)
            except (OSError, ValueError) as exc:
                self._mark_closed(f"console write failed: {exc}")
                raise ConsoleClosed(
                    f"{self.name}: write failed: {exc}",
                    phase="send",
                    expectation=f"send {data!r}",
                    tail=self.tail(TAIL_KEEP),
                    transcript=self.transcript_path,
                ) from exc
            if char_delay > 0:
                time.sleep(char_delay)

    def sendline(self, line: str = "") -> None:
        self.send(line + self.newline)

    # ---------------------------------------------------------------- shell commands
    def run(
        self,
        command: str,
        *,
        prompt: Regex | None,
        deadline: Deadline | float,
        check: bool = False,
    ) -> CommandResult:
        """Run one single-line shell command (sh or csh) and return its output and exit status.

        The command line becomes ``echo "__FBH""B_<id>__"; CMD; printf "\\n__FBH""E_<id>_%s__\\n" $?``:
        the echo of what we typed never contains the joined markers, the output always does. After the
        end marker the shell `prompt` (if given) is awaited so the console is ready for the next command.

        Kernel messages may land anywhere in between: a line cut into a marker is skipped, and lines
        matching `kernel_lines` are cut out of the output (and of the prompt wait).
        """
        if "\n" in command or "\r" in command:
            raise ValueError(f"run() takes a single-line command, got {command!r}")
        dl = as_deadline(deadline, f"run {command!r}")
        token = f"{os.getpid():x}x{next(_counter)}x{secrets.token_hex(3)}"
        # Anything between a marker and its newline can only be a kernel message (the shell writes
        # the marker and its newline in one go), so it is consumed with the marker.
        begin = re.compile(_line_tolerant(f"__FBHB_{token}__") + r"[^\r\n]*\r*\n")
        end = re.compile(
            r"\r*\n"
            + _line_tolerant(f"__FBHE_{token}_")
            + r"(\d+)"
            + _CUT
            + _line_tolerant("__")
            + r"[^\r\n]*\r*\n"
        )
        ignore = self.kernel_lines
        if command.rstrip().endswith("&") and not command.rstrip().endswith("&&"):
            # A background command runs in a subshell: csh would otherwise put the begin marker's echo
            # into the background job too (printed after the end marker), and the job-control notice
            # ("[1] 1234") stays out of the output. ("cmd &;" would be a syntax error anyway.)
            typed = f"( {command.rstrip()} )"
        else:
            typed = command
        self.sendline(f'echo "__FBH""B_{token}__"; {typed}; printf "\\n__FBH""E_{token}_%s__\\n" $?')
        self.expect({"begin": begin}, dl, ignore=ignore)
        m = self.expect({"end": end}, dl, ignore=ignore)
        output = m.before.replace("\r\n", "\n")
        result = CommandResult(command=command, output=output, status=int(m.match.group(1)))
        if prompt is not None:
            self.expect({"prompt": prompt}, dl, ignore=ignore)
        if check and not result.ok:
            raise CommandFailed(result, self.tail())
        return result

    # ---------------------------------------------------------------- lifetime
    def reattach(self, spawn: pexpect.spawnbase.SpawnBase) -> None:
        """Continue on a new spawn (e.g. the new pty after a guest was restored from saved state).

        Transcript, tail, unconsumed text and armed failure patterns carry over, so holders of this
        Console keep using the same object.
        """
        self._stop.set()
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)
        with suppress(Exception):
            self.spawn.close()
        with self._cond:
            self.spawn = spawn
            self._closed_reason = None
            self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            self._stop = threading.Event()
            self._reader = threading.Thread(
                target=self._drain, args=(spawn, self._stop), name=f"{self.name}-drain", daemon=True
            )
            self._reader.start()

    @classmethod
    def open_virsh(
        cls,
        uri: str,
        domain: str,
        transcript: str | os.PathLike[str] | IO[bytes] | None,
        *,
        connect_timeout: float = 60.0,
        **kwargs: Any,
    ) -> Console:
        """Drive the console through ``virsh console`` (a libvirt stream): works for remote URIs such
        as ``qemu+ssh://host/system`` where the guest's pty is on another machine.

        virsh's own banner ("Connected to domain ...") is consumed before the transcript starts, so
        the transcript still holds exactly the guest's bytes.
        """
        spawn = cls.virsh_spawn(uri, domain, connect_timeout)
        kwargs.setdefault("name", f"console:virsh:{domain}")
        return cls(spawn, transcript=transcript, **kwargs)

    @staticmethod
    def virsh_spawn(uri: str, domain: str, connect_timeout: float = 60.0) -> pexpect.spawn:
        spawn = pexpect.spawn(
            "virsh", ["-c", uri, "console", "--force", domain], env={**os.environ, "LC_ALL": "C"}
        )
        try:
            spawn.expect(rb"Escape character is [^\r\n]*\r?\n", timeout=connect_timeout)
        except (pexpect.EOF, pexpect.TIMEOUT) as exc:
            before = spawn.before.decode(errors="replace") if isinstance(spawn.before, bytes) else ""
            spawn.close(force=True)
            raise ConsoleClosed(
                f"virsh console to {domain} on {uri} did not connect: {type(exc).__name__}",
                phase="attach console",
                expectation="virsh banner 'Escape character is ...'",
                tail=before,
            ) from exc
        if spawn.buffer:  # guest bytes that came with the banner must not be lost
            raise ConsoleClosed(
                "guest output arrived before the console was attached (start the domain paused)",
                phase="attach console",
                expectation="no guest output before attach",
                tail=spawn.buffer.decode(errors="replace"),
            )
        return spawn

    @staticmethod
    def pty_spawn(path: str | os.PathLike[str]) -> fdpexpect.fdspawn:
        """A raw-mode fdspawn on a pty path (what `open_pty` and `reattach` callers use)."""
        fd = os.open(os.fspath(path), os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            tty.setraw(fd)
            return fdpexpect.fdspawn(fd, use_poll=True)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Stop draining and close the spawn and (our own) transcript file. Idempotent."""
        self._stop.set()
        if self._reader.is_alive() and self._reader is not threading.current_thread():
            self._reader.join(timeout=2.0)
        with suppress(Exception):  # closing a dead spawn must not mask the real error
            self.spawn.close()
        self._mark_closed("console closed by the harness")
        if self._own_transcript and self._transcript is not None:
            with suppress(OSError):
                self._transcript.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

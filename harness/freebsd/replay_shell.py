"""Replay a recorded single-user shell session (kernel + root image) as a console test double.

The real 12.1 boot test (``tests/data/transcripts/freebsd-12.1-mfsroot/boot-test.console.log``) is the
serial console of two boots: the kernel up to init(8)'s "Enter full pathname of shell or RETURN for
/bin/sh: ", RETURN, ``# ``, ``PS1='fbsd-su# '``, then commands at ``fbsd-su# `` (one of them,
``sysctl debug.kdb.enter=1``, ends in ddb, where ``dump`` and ``reset`` were typed).

`parse_single_user_log(data)` cuts it into `RecordedBoot`s: the boot text up to init's prompt, and each
command with the bytes the guest printed for it. `ReplayShellSpawn(boot)` is a pexpect spawn double (wrap
it in the real `harness.vm.console.Console`) that prints the boot, answers RETURN with ``# ``, takes any
``PS1=...`` line as the new prompt, and answers a command with what the recording printed for the very
same command text. A command wrapped by `Console.run` (``echo "__FBH""B_<id>__"; CMD; printf ...``) gets
the recorded output of ``CMD`` between the markers and exit status 0 (every recorded command succeeded,
the driver checked). A command typed bare (`ConsoleShell.start`) gets its recorded bytes as they came,
and when they end in ddb each ``db> `` line must be what the recording typed. A command the recording
does not have raises `ReplayMismatch` naming it (unless the test supplies an answer in `unrecorded` /
`unrecorded_ddb`, which the test must say is not a recording).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pexpect

from harness.freebsd.replay import ReplayMismatch, ReplaySpawnBase

INIT_PROMPT = b"Enter full pathname of shell or RETURN for /bin/sh: "
EOL = b"\r\r\n"  # the recording's line end (the tty's CR LF, logged with an extra CR)
_WRAPPED = re.compile(r'^echo "__FBH""B_(\w+)__"; (.*); printf "\\n__FBH""E_\1_%s__\\n" \$\?$')
_DDB_LINE = re.compile(rb"(?:^|\n)db> ([^\r\n]*)\r")


@dataclass
class RecordedCommand:
    command: str
    output: bytes  # everything printed after the command's echo, up to the next prompt (or the end)
    #: when it entered ddb: [(output before the db> line, the typed ddb line), ...] and what follows the last
    ddb_steps: list[tuple[bytes, str]] = field(default_factory=list)
    ddb_tail: bytes = b""


@dataclass
class RecordedBoot:
    boot: bytes  # up to and including init's prompt
    sh_prompt: bytes  # what RETURN at init's prompt printed (EOL + "# ")
    prompt: bytes  # the recording's PS1
    commands: list[RecordedCommand]

    def command(self, text: str) -> RecordedCommand | None:
        return next((c for c in self.commands if c.command == text), None)


def parse_single_user_log(data: bytes) -> list[RecordedBoot]:
    """Every boot of the recording that reached init's single-user prompt."""
    boots = []
    for part in re.split(rb"\n######## boot \d+: [^\n]*\n", data)[1:]:
        at = part.find(INIT_PROMPT)
        if at < 0:
            continue
        boot, rest = part[: at + len(INIT_PROMPT)], part[at + len(INIT_PROMPT) :]
        m = re.match(rb"(\r*\n# )PS1='([^']*)'\r*\n", rest)
        if not m:
            raise ValueError(f"boot test log: no `# PS1='...'` after init's prompt: {rest[:80]!r}")
        prompt = m.group(2)
        chunks = rest[m.end() :].split(prompt)
        commands = []
        for chunk in chunks[1:]:
            line, _, output = chunk.partition(EOL)
            commands.append(_with_ddb(RecordedCommand(line.decode(), output)))
        boots.append(RecordedBoot(boot, m.group(1), prompt, commands))
    return boots


def _with_ddb(cmd: RecordedCommand) -> RecordedCommand:
    pos = 0
    for m in _DDB_LINE.finditer(cmd.output):
        start = m.start() + (1 if cmd.output[m.start() : m.start() + 1] == b"\n" else 0)
        cmd.ddb_steps.append((cmd.output[pos : start + len(b"db> ")], m.group(1).decode()))
        pos = m.end(1) + len(EOL)
    if cmd.ddb_steps:
        cmd.ddb_tail = cmd.output[pos:]
    return cmd


class ReplayShellSpawn(ReplaySpawnBase):
    """pexpect spawn double answering a single-user shell from a `RecordedBoot` (module docstring)."""

    def __init__(
        self,
        boot: RecordedBoot,
        *,
        unrecorded: dict[str, str] | None = None,
        unrecorded_ddb: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.recording = boot
        self.unrecorded = dict(unrecorded or {})
        self.unrecorded_ddb = dict(unrecorded_ddb or {})
        self._out = bytearray(boot.boot)
        self._state = "init"
        self._prompt = b""
        self._ddb: list[tuple[bytes, str]] = []
        self._ddb_tail = b""
        self.commands: list[str] = []  # every shell command answered, in order

    # ------------------------------------------------------------ the shell's answers
    def _answer(self, line: str) -> None:
        echo = line.encode() + EOL
        if self._state == "init":
            if line.strip():
                self._fail(f"at init's prompt the recording pressed RETURN, the client sent {line!r}")
            self._out += self.recording.sh_prompt
            self._state = "sh"
            self._prompt = b"# "
        elif self._state == "ddb" and line.strip() in self.unrecorded_ddb:
            text = self.unrecorded_ddb[line.strip()]
            self._out += echo + (text.replace("\n", "\r\r\n").encode() if text else b"") + b"db> "
        elif self._state == "ddb":
            before, expected = self._ddb.pop(0)
            if line.strip() != expected.strip():
                self._fail(f"at db> the recording typed {expected!r}, the client sent {line!r}")
            self._out += echo
            if self._ddb:
                self._out += self._ddb[0][0]
            else:
                self._out += self._ddb_tail
                self._state = "gone"
        elif line.startswith("PS1="):
            self._out += echo
            value = re.match(r"PS1=((?:'[^']*')+)", line)
            if not value:
                self._fail(f"cannot read the prompt from {line!r}")
            self._prompt = "".join(re.findall(r"'([^']*)'", value.group(1))).encode()
            self._out += self._prompt
        elif m := _WRAPPED.match(line):
            token, command = m.group(1), m.group(2)
            output = self._recorded_output(command)
            self.commands.append(command)
            self._out += echo + f"__FBHB_{token}__".encode() + EOL + output
            self._out += EOL + f"__FBHE_{token}_0__".encode() + EOL + self._prompt
        else:
            self.commands.append(line)
            rec = self.recording.command(line)
            if rec is None:
                self._fail(f"the recording has no command {line!r}")
            self._out += echo
            if rec.ddb_steps:
                self._ddb = list(rec.ddb_steps)
                self._ddb_tail = rec.ddb_tail
                self._out += self._ddb[0][0]
                self._state = "ddb"
            else:
                self._out += rec.output + self._prompt

    def _recorded_output(self, command: str) -> bytes:
        if command in self.unrecorded:
            text = self.unrecorded[command]
            return text.replace("\n", "\r\r\n").encode() + (EOL if text and not text.endswith("\n") else b"")
        rec = self.recording.command(command)
        if rec is None or rec.ddb_steps:
            known = ", ".join(repr(c.command) for c in self.recording.commands)
            self._fail(f"the recording has no shell command {command!r} (recorded: {known})")
        return rec.output

    def _fail(self, message: str) -> None:
        self.error = ReplayMismatch(f"replay single-user shell: {message}")
        raise self.error

    def _consume(self) -> None:
        while True:
            ends = [i for i in (self._typed.find(b"\r"), self._typed.find(b"\n")) if i >= 0]
            if not ends:
                return
            cut = min(ends)
            line = bytes(self._typed[:cut]).decode("utf-8", "replace")
            skip = 2 if self._typed[cut : cut + 2] == b"\r\n" else 1
            del self._typed[: cut + skip]
            if self._state == "gone":
                return
            self._answer(line)
            self._cond.notify_all()

    # ------------------------------------------------------------ pexpect interface
    def read_nonblocking(self, size: int = 1, timeout: float | None = -1) -> bytes:
        if timeout == -1:
            timeout = self.timeout
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._out:
                    data = bytes(self._out[:size])
                    del self._out[:size]
                    return data
                if self.closed or self._state == "gone" or self.error is not None:
                    raise pexpect.EOF(str(self.error) if self.error else "replay: the recorded boot ended")
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise pexpect.TIMEOUT("replay: nothing to deliver (waiting for the client)")
                self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))

    def _on_typed(self) -> None:
        self._consume()

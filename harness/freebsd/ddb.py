"""Drive FreeBSD's kernel debugger ddb(4) over a `Console` and parse what it prints.

`Ddb(console)` assumes the kernel already sits at ``db> `` (see `harness.freebsd.enter` for getting
there). The first command turns the pager off (``set $lines 0``) so long output (``ps``, ``show
msgbuf``) never stops at ``--More--``. Each command waits for its own echo, then for the next ``db> ``
prompt at the end of the output; the output in between is returned with CR LF normalised.

While ddb runs, the console's armed failure patterns (``panic:`` ...) are suspended: ddb's own output
(``bt`` of a panicked thread, ``show msgbuf``) legitimately contains them.

Dump console texts (`parse_dump_output`) follow ``sys/kern/kern_dump.c``,
``sys/amd64/amd64/minidump_machdep.c``, ``sys/ddb/db_command.c`` and ``kern_shutdown.c``, as quoted in
``/work/shared/reference/freebsd-dump-formats.md`` §7.4-7.5, and the real 12.1 transcripts.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from harness.freebsd.stages import STAGE_PATTERNS, FreeBSDStageError, Stage
from harness.util.deadline import Deadline, as_deadline

PROMPT = r"(?:^|\n)db> $"
DEFAULT_COMMAND_SECONDS = 60.0


class DdbError(FreeBSDStageError):
    """ddb did not answer as expected; carries the command and the console tail."""


class DumpFailed(DdbError):
    """ddb's ``dump`` reported a failure (or never finished); `result` has everything parsed."""

    def __init__(self, message: str, result: DumpResult, *, tail: str = "") -> None:
        super().__init__(message, tail=tail)
        self.result = result


def dump_deadline_seconds(memory_mib: int | None) -> float:
    """A generous but bounded deadline for ``dump``.

    Measured under TCG here: a full dump of a 512 MiB guest took 1.2-2.6 s (~200-400 MiB/s), a minidump
    0.5 s. We allow two minutes plus a quarter second per MiB of guest memory (512 MiB -> 248 s; 4 GiB
    -> 1144 s, about 50x the ~20 s a 4 GiB full dump needs at the measured rate; 8 GiB -> 2168 s).
    Unknown memory size counts as 4 GiB. A dump that stops printing is caught much earlier by
    `DUMP_STALL_SECONDS`.
    """
    return 120.0 + 0.25 * (memory_mib if memory_mib else 4096)


#: A dump prints at least every 16 MiB (the full dump's per-chunk countdown, kern_dump.c) or every tenth
#: (minidump percentages); under TCG that is well under a second apart. This long without a byte ends the
#: wait early, naming the last progress seen, instead of sitting out the whole size-based deadline.
DUMP_STALL_SECONDS = 180.0


#: A dump that neither prints nor writes its dump disk for this long has hung (or the guest stopped): a
#: dump in progress writes one request of at most 64 KiB at a time, milliseconds apart even under TCG.
#: Needs a witness of the disk writes (`dump_disk_witness`); without one only `DUMP_STALL_SECONDS` applies.
DUMP_HANG_SECONDS = 10.0

Witness = Callable[[], object]


class NoProgress(Exception):
    """Neither the console nor the witness (the dump disk) changed for `seconds`: the guest hung."""

    def __init__(self, seconds: float, *, what: str, tail: str) -> None:
        super().__init__(f"no console output and no write to the dump disk for {seconds:g} s")
        self.what = what
        self.seconds = seconds
        self.tail = tail


def dump_disk_witness(path: Path | str | None) -> Witness | None:
    """What changes while a guest writes its dump disk: the host file's size, blocks and mtime."""
    if path is None:
        return None

    def witness() -> object:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_size, st.st_blocks, st.st_mtime_ns

    return witness


def expect_while_printing(
    console,
    patterns,
    deadline: Deadline,
    stall_seconds: float,
    what: str,
    *,
    witness: Witness | None = None,
    hang_seconds: float = DUMP_HANG_SECONDS,
):
    """`console.expect(patterns, deadline)`, but give up with ConsoleTimeout once the console has been
    silent for `stall_seconds` (the thing we wait for has stopped making progress). With `witness`
    (`dump_disk_witness`), a console silent for `hang_seconds` while the witness stays the same raises
    `NoProgress` much sooner: a guest that neither prints nor writes has hung."""
    from harness.vm.console import ConsoleTimeout

    started = changed_at = time.monotonic()
    seen = witness() if witness is not None else None
    poll = min(stall_seconds, 30.0, hang_seconds / 4 if witness is not None else 30.0)
    while True:
        step = deadline.sub(poll, what)
        try:
            return console.expect(patterns, step)
        except ConsoleTimeout as exc:
            if deadline.expired():
                raise
            now = time.monotonic()
            last = getattr(console, "last_byte_at", None)
            quiet = now - max(last, started) if last is not None else now - started
            if witness is not None:
                if (now_seen := witness()) != seen:
                    seen, changed_at = now_seen, now
                if quiet >= hang_seconds and now - changed_at >= hang_seconds:
                    raise NoProgress(hang_seconds, what=what, tail=exc.tail) from exc
            if quiet >= stall_seconds:
                raise


# ----------------------------------------------------------------------------- parsed results
@dataclass(frozen=True)
class Frame:
    function: str
    location: str  # e.g. "acpi_cpu_c1+0x6"
    frame: int | None


@dataclass(frozen=True)
class Backtrace:
    pid: int | None
    tid: int | None
    td: int | None
    frames: list[Frame]
    text: str


@dataclass(frozen=True)
class PsThread:
    tid: int
    state: str
    wmesg: str | None
    wchan: int | None
    cpu: int | None
    name: str


@dataclass
class PsProcess:
    """One process of ddb's ``ps``.

    `cmd` is the bracketed (kernel) or bare (user) name of the process row. ddb prints ``(threaded)`` and
    one row per thread only for a process that has had several threads (12.1: P_HADTHREADS); for any
    other process the single row shows its thread's state, wait channel or ``CPU n`` and the *thread's*
    name: with one CPU the idle process is ``11 ... RL CPU 0 [idle: cpu0]`` (its p_comm "idle" is
    printed nowhere), with two it is ``(threaded) [idle]`` plus a row per idle thread. `cpu` is the
    ``CPU n`` of such a single row; `running_cpus` gathers it from either form."""

    pid: int
    ppid: int
    pgrp: int
    uid: int
    state: str
    wmesg: str | None
    wchan: int | None
    cmd: str
    threaded: bool
    threads: list[PsThread] = field(default_factory=list)
    cpu: int | None = None

    @property
    def names(self) -> list[str]:
        """The process row's name and its thread rows' names (where a process's name may appear)."""
        return [self.cmd, *(t.name for t in self.threads)]

    @property
    def running_cpus(self) -> list[int]:
        """CPUs this process runs on, from its own row (single-threaded) or its thread rows."""
        cpus = [] if self.cpu is None else [self.cpu]
        return cpus + [t.cpu for t in self.threads if t.cpu is not None]


@dataclass(frozen=True)
class ShownThread:
    """One thread of ddb's ``show threads``: tid, struct thread address, kernel stack, top frame(s)."""

    tid: int
    td: int
    stack: int
    frames: list[Frame]


@dataclass(frozen=True)
class DumpChunk:
    index: int
    mb: int
    pages: int
    countdown: list[int]
    ok: bool | None  # None: the chunk line never finished


@dataclass
class DumpResult:
    """What ddb's ``dump`` printed, parsed. `ok` is True only with "Dump complete" and no failure."""

    kind: str | None  # "mini" (Dumping N out of M MB), "full" (Dumping N MB (K chunks)), None if neither
    dump_mb: int | None
    physical_mb: int | None  # the "out of M" of a minidump
    chunk_count: int | None
    chunks: list[DumpChunk]
    progress: list[int]  # minidump percentages
    complete: bool
    error: str | None  # the failure text as printed
    error_code: int | None  # errno of "** DUMP FAILED (ERROR n) **", or "(error=n)"
    retries: int  # "Dump map grown while dumping. Retrying..."
    seconds: float
    text: str
    # How the dump was made: "ddb" (ddb's `dump`, kernel still in ddb afterwards) or "panic" (the kernel
    # dumped by itself on its way from a panic to the reboot; see harness.freebsd.panicdump).
    flow: str = "ddb"
    panic: str | None = None  # the panic message (panic flow)
    uptime: str | None = None  # "Uptime: 5s" printed by kern_reboot() before the automatic dump
    held: bool = False  # panic flow: the kernel waits for a key ("--> Press a key ..."), other CPUs stopped
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.complete and self.error is None


# Every failure text a dump can print, most specific first: (regex, errno group or None)
DUMP_FAILURES: list[tuple[str, str]] = [
    (
        "no_device",
        r"Cannot dump: no dump device specified\."
        r"|Cannot dump\. Device not defined or unavailable\.",
    ),
    ("busy", r"Cannot dump: debugger got invoked while dumping\."),
    ("unknown", r"Cannot dump: unknown error \(error=(\d+)\)\."),
    # before the generic errno line the kernel prints after it
    ("compressed_overflow", r"Compressed dump failed to fit in device boundaries\."),
    ("too_small", r"Dump failed\. Partition too small(?: \(about (\d+)MB were needed this time\))?\."),
    ("failed_errno", r"\*\* DUMP FAILED \(ERROR (\d+)\) \*\*"),
    ("aborted", r"Dump aborted"),
    ("map_grown", r"Dump map grown while dumping\. Dump failed\."),
    ("textdump_pending", r"textdump_pending set\."),
    (
        "bounds",
        r"Attempt to write (?:outside dump device boundaries|partial block of length \d+|at unaligned "
        r"offset -?\d+)\.",
    ),
    ("chunk_failed", r"chunk \d+: \d+MB \(\d+ pages\)[^\r\n]*\.\.\. fail"),
]

_MINI = re.compile(r"Dumping (\d+) out of (\d+) MB:((?:\.\.\d+%)*)")
_FULL = re.compile(r"Dumping (\d+) MB \((\d+) chunks\)")
_CHUNK = re.compile(r"chunk (\d+): (\d+)MB \((\d+) pages\)((?: \d+)*)(?: \.\.\. (ok|fail))?")
_PCT = re.compile(r"\.\.(\d+)%")


def parse_dump_output(text: str, seconds: float = 0.0) -> DumpResult:
    """Parse everything ``dump`` printed (between its echo and the next ``db> ``)."""
    text = text.replace("\r\n", "\n").replace("\r", "")
    kind = dump_mb = physical_mb = chunk_count = None
    progress: list[int] = []
    chunks: list[DumpChunk] = []
    if m := _MINI.search(text):
        kind, dump_mb, physical_mb = "mini", int(m.group(1)), int(m.group(2))
        progress = [int(p) for p in _PCT.findall(text[m.end(0) - len(m.group(3)) :])]
    elif m := _FULL.search(text):
        kind, dump_mb, chunk_count = "full", int(m.group(1)), int(m.group(2))
        for c in _CHUNK.finditer(text):
            countdown = [int(x) for x in c.group(4).split()]
            ok = None if c.group(5) is None else c.group(5) == "ok"
            chunks.append(DumpChunk(int(c.group(1)), int(c.group(2)), int(c.group(3)), countdown, ok))
    error = error_code = None
    for name, rx in DUMP_FAILURES:
        if fm := re.search(rx, text):
            error = fm.group(0)
            if name in ("unknown", "failed_errno") and fm.group(1):
                error_code = int(fm.group(1))
            break
    retries = len(re.findall(r"Dump map grown while dumping\. Retrying\.\.\.", text))
    complete = re.search(r"(?:^|\n)Dump complete\b", text) is not None
    return DumpResult(
        kind,
        dump_mb,
        physical_mb,
        chunk_count,
        chunks,
        progress,
        complete,
        error,
        error_code,
        retries,
        seconds,
        text,
    )


def describe_progress(result: DumpResult) -> str:
    """Where a dump got to, for error messages: "minidump 42 MB, 38%..76%" / "full dump, chunk 1 ..."."""
    if result.kind == "mini":
        pct = "..".join(f"{p}%" for p in result.progress) or "no percentage yet"
        return f"minidump of {result.dump_mb} MB, {pct}"
    if result.kind == "full":
        if not result.chunks:
            return f"full dump of {result.dump_mb} MB, no chunk line yet"
        c = result.chunks[-1]
        left = f", {c.countdown[-1]} MB left" if c.countdown else ""
        return f"full dump of {result.dump_mb} MB, chunk {c.index} of {result.chunk_count}{left}"
    return "no 'Dumping ...' line yet"


_REG = re.compile(r"^(\w+)\s+(0x[0-9a-fA-F]+|-?\d+)(?:\s+(\S+))?\s*$")


def parse_registers(text: str) -> dict[str, int]:
    """``show registers``: ``rip  0xffffffff80504666  acpi_cpu_c1+0x6`` -> {"rip": 0xffff...}."""
    regs: dict[str, int] = {}
    for line in text.splitlines():
        if m := _REG.match(line.strip()):
            regs[m.group(1)] = int(m.group(2), 0)
    return regs


_TRACING = re.compile(r"Tracing pid (\d+) tid (\d+) td (0x[0-9a-fA-F]+)")
_FRAME = re.compile(r"^(\S+)\(\) at (\S+?)(?:/frame (0x[0-9a-fA-F]+))?\s*$")


def parse_backtrace(text: str) -> Backtrace:
    pid = tid = td = None
    if m := _TRACING.search(text):
        pid, tid, td = int(m.group(1)), int(m.group(2)), int(m.group(3), 16)
    frames = [
        Frame(m.group(1), m.group(2), int(m.group(3), 16) if m.group(3) else None)
        for line in text.splitlines()
        if (m := _FRAME.match(line.strip()))
    ]
    return Backtrace(pid, tid, td, frames, text)


_PS_PROC = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s*(.*)$")
_PS_THREAD = re.compile(r"^\s*(\d+)\s+(\S+)\s*(.*)$")
# After the state: "(threaded)" | "CPU n" | "wmesg 0xwchan" | nothing; then the name: "[name]" for
# kernel processes and threads, the bare name for user processes.
_PS_REST = re.compile(
    r"^(?:(?P<threaded>\(threaded\))|CPU (?P<cpu>\d+)|(?P<wmesg>\S+)\s+(?P<wchan>0x[0-9a-fA-F]+)|)"
    r"\s*(?:\[(?P<kname>.*)\]|(?P<uname>.*?))\s*$"
)


def _ps_rest(rest: str, line: str, text: str) -> tuple[re.Match[str], str, int | None]:
    m = _PS_REST.match(rest.strip())
    name = (m.group("kname") or m.group("uname")) if m else None
    if m is None or not name:
        raise DdbError(f"ps: cannot parse line {line!r}", tail=text)
    return m, name, int(m.group("wchan"), 16) if m.group("wchan") else None


def parse_ps(text: str) -> list[PsProcess]:
    """ddb ``ps``: process rows (pid ppid pgrp uid state ...) with their thread rows (tid state ...)."""
    procs: list[PsProcess] = []
    for line in text.splitlines():
        if not line.strip() or line.split()[0] == "pid":
            continue
        if m := _PS_PROC.match(line):
            r, name, wchan = _ps_rest(m.group(6), line, text)
            pid, ppid, pgrp, uid = (int(m.group(i)) for i in range(1, 5))
            threaded = r.group("threaded") is not None
            cpu = int(r.group("cpu")) if r.group("cpu") else None
            procs.append(
                PsProcess(pid, ppid, pgrp, uid, m.group(5), r.group("wmesg"), wchan, name, threaded, cpu=cpu)
            )
        elif (m := _PS_THREAD.match(line)) and procs:
            r, name, wchan = _ps_rest(m.group(3), line, text)
            cpu = int(r.group("cpu")) if r.group("cpu") else None
            procs[-1].threads.append(
                PsThread(int(m.group(1)), m.group(2), r.group("wmesg"), wchan, cpu, name)
            )
        else:
            raise DdbError(f"ps: cannot parse line {line!r}", tail=text)
    return procs


_SHOW_THREAD = re.compile(r"^\s*(\d+) \((0x[0-9a-fA-F]+)\) \(stack (0x[0-9a-fA-F]+)\)\s+(.*)$")


def parse_show_threads(text: str) -> list[ShownThread]:
    """ddb ``show threads``: ``  100003 (0xfffff80003123000) (stack 0xfffffe0000402000)  acpi_cpu_c1()
    at acpi_cpu_c1+0x6/frame 0x...``; the lines a thread's trace continues on (``nmi_calltrap() at ...``,
    ``--- trap 0x13, ...``) add frames to it."""
    threads: list[ShownThread] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if m := _SHOW_THREAD.match(line):
            f = _FRAME.match(m.group(4).strip())
            frames = [Frame(f.group(1), f.group(2), int(f.group(3), 16) if f.group(3) else None)] if f else []
            threads.append(ShownThread(int(m.group(1)), int(m.group(2), 16), int(m.group(3), 16), frames))
        elif threads and (f := _FRAME.match(line.strip())):
            frame = int(f.group(3), 16) if f.group(3) else None
            threads[-1].frames.append(Frame(f.group(1), f.group(2), frame))
        elif threads and line.startswith("--- "):
            continue  # "--- trap 0x13, rip = ..., rsp = ..." between two frames of one trace
        else:
            raise DdbError(f"show threads: cannot parse line {line!r}", tail=text)
    return threads


_XLINE = re.compile(r"^([^\s:]+):\s+((?:[0-9a-fA-F]+\s*)+)$")


def parse_examine(text: str) -> list[int]:
    """``x/gx sym[,n]``: ``dumper: ffffffff803265f0`` -> [0xffffffff803265f0]."""
    values: list[int] = []
    for line in text.splitlines():
        if m := _XLINE.match(line.strip()):
            values.extend(int(v, 16) for v in m.group(2).split())
    return values


# ----------------------------------------------------------------------------- the driver
class Ddb:
    """One ddb session on `console` (the kernel must already be at ``db> ``)."""

    def __init__(
        self, console, *, memory_mib: int | None = None, command_seconds: float = DEFAULT_COMMAND_SECONDS
    ) -> None:
        self.console = console
        self.memory_mib = memory_mib
        self.command_seconds = command_seconds
        self._pager_off = False
        self.active = True
        #: the raw console text of the last command: its echo, its output and the next ``db> ``
        self.last_console = ""

    @contextmanager
    def _quiet_failures(self):
        suspended = getattr(self.console, "suspended", None)
        armed = list(getattr(self.console, "armed", {}) or {})
        with suspended(*armed) if suspended and armed else nullcontext():
            yield

    def wait_prompt(self, deadline: Deadline | float = 30.0) -> str:
        """Wait for ``db> `` (right after entering ddb); returns the text before it."""
        with self._quiet_failures():
            return self.console.expect({"db": PROMPT}, as_deadline(deadline, "ddb prompt")).before

    def _raw(
        self,
        cmd: str,
        deadline: Deadline,
        stall_seconds: float | None = None,
        witness: Witness | None = None,
        hang_seconds: float = DUMP_HANG_SECONDS,
    ) -> str:
        if not self.active:
            raise DdbError(f"ddb {cmd!r}: the session was left (continue/reset)", tail=self.console.tail())
        self.console.sendline(cmd)
        echo = self.console.expect({"echo": re.escape(cmd) + r"[ \t]*\r*\n"}, deadline)
        if stall_seconds is None:
            m = self.console.expect({"db": PROMPT}, deadline)
        else:
            m = expect_while_printing(
                self.console, {"db": PROMPT}, deadline, stall_seconds, f"ddb {cmd}", witness=witness,
                hang_seconds=hang_seconds,
            )
        # the console exactly as printed, from the echo to the next prompt (textdumps compare ddb.txt to it)
        self.last_console = echo.text + m.text
        return m.before.replace("\r\n", "\n").replace("\r", "")

    def command(
        self,
        cmd: str,
        deadline: Deadline | float | None = None,
        *,
        stall_seconds: float | None = None,
        witness: Witness | None = None,
        hang_seconds: float = DUMP_HANG_SECONDS,
    ) -> str:
        """Run one ddb command, return its output (echo and prompt stripped). With `stall_seconds`, a
        console silent that long ends the wait early (for long commands that print progress); with a
        `witness` too, `DUMP_HANG_SECONDS` without output or witness change (`expect_while_printing`)."""
        if "\n" in cmd or "\r" in cmd:
            raise ValueError(f"ddb command must be one line, got {cmd!r}")
        dl = as_deadline(self.command_seconds if deadline is None else deadline, f"ddb {cmd}")
        with self._quiet_failures():
            if not self._pager_off:
                self._raw("set $lines 0", dl)
                self._pager_off = True
            out = self._raw(cmd, dl, stall_seconds, witness, hang_seconds)
        return out.rstrip("\n")

    # ------------------------------------------------------------ typed helpers
    def x(self, symbol: str, fmt: str = "gx", count: int = 1) -> list[int]:
        cmd = f"x/{fmt} {symbol}" + (f",{count}" if count != 1 else "")
        out = self.command(cmd)
        values = parse_examine(out)
        if len(values) < count:
            raise DdbError(
                f"ddb {cmd!r}: expected {count} value(s) as 'symbol: value', got {out!r}",
                tail=self.console.tail(),
            )
        return values[:count]

    def x_gx(self, symbol: str) -> int:
        """The 64-bit value at `symbol` (``x/gx``)."""
        return self.x(symbol, "gx")[0]

    def show_registers(self) -> dict[str, int]:
        out = self.command("show registers")
        regs = parse_registers(out)
        if "rip" not in regs and "pc" not in regs:
            raise DdbError(f"show registers: no rip/pc in {out!r}", tail=self.console.tail())
        return regs

    def bt(self) -> Backtrace:
        return parse_backtrace(self.command("bt"))

    def ps(self) -> list[PsProcess]:
        return parse_ps(self.command("ps"))

    def show_threads(self) -> list[ShownThread]:
        return parse_show_threads(self.command("show threads"))

    def show_msgbuf(self) -> str:
        """The kernel message buffer, without ddb's ``msgbufp = ...`` / ``magic = ...`` header."""
        out = self.command("show msgbuf")
        lines = out.split("\n")
        while lines and re.match(r"(msgbufp|magic) = ", lines[0]):
            lines.pop(0)
        return "\n".join(lines)

    def set_minidump(self, on: bool) -> int:
        """``write/l do_minidump 0|1``; returns the previous value (ddb prints old and new)."""
        want = 1 if on else 0
        out = self.command(f"write/l do_minidump {want}")
        m = re.search(r"do_minidump\s+(0x[0-9a-fA-F]+|\d+)\s+=\s+(0x[0-9a-fA-F]+|\d+)", out)
        if not m or int(m.group(2), 0) != want:
            raise DdbError(f"write/l do_minidump {want}: unexpected answer {out!r}", tail=self.console.tail())
        return int(m.group(1), 0)

    def dump(
        self,
        deadline: Deadline | float | None = None,
        *,
        check: bool = True,
        stall_seconds: float = DUMP_STALL_SECONDS,
        witness: Witness | None = None,
        hang_seconds: float = DUMP_HANG_SECONDS,
    ) -> DumpResult:
        """Run ``dump`` and parse the result; with `check`, anything but "Dump complete" raises DumpFailed.

        Bounded three ways: `deadline` (default `dump_deadline_seconds` of the guest's memory),
        `stall_seconds` without any console output and, with a `witness` of the dump disk's writes
        (`dump_disk_witness`), `hang_seconds` with neither output nor writes (a hung guest). A
        guest that resets or dies mid-dump closes the console: that ends the wait at once."""
        from harness.vm.console import ConsoleClosed, ConsoleTimeout

        seconds = dump_deadline_seconds(self.memory_mib) if deadline is None else deadline
        dl = as_deadline(seconds, "ddb dump")
        started = time.monotonic()
        try:
            out = self.command(
                "dump", dl, stall_seconds=stall_seconds, witness=witness, hang_seconds=hang_seconds
            )
        except (ConsoleTimeout, ConsoleClosed, NoProgress) as exc:
            partial = self.console.pending() if hasattr(self.console, "pending") else ""
            result = parse_dump_output(partial, time.monotonic() - started)
            waited = time.monotonic() - started
            if isinstance(exc, NoProgress):
                why = f": the guest hung ({exc})"
            elif isinstance(exc, ConsoleClosed):
                why = ": the console closed (the guest reset, crashed or was destroyed mid-dump)"
            elif not dl.expired():
                why = f": no console output for {stall_seconds:g} s"
            else:
                why = f" within {dl.seconds:g} s"
            raise DumpFailed(
                f"ddb dump did not return to db>{why} (waited {waited:.0f} s); "
                f"last progress: {describe_progress(result)}",
                result,
                tail=exc.tail,
            ) from exc
        result = parse_dump_output(out, time.monotonic() - started)
        if check and not result.ok:
            why = result.error or 'no "Dump complete" before the prompt'
            raise DumpFailed(f"ddb dump failed: {why}", result, tail=self.console.tail())
        return result

    def continue_(self) -> None:
        """``c``: leave ddb (the kernel resumes; after a panic it goes on to dump and reboot)."""
        self._leave("c")

    def continue_after_panic(self, deadline: Deadline | float | None = None) -> DumpResult:
        """``c`` after a panic: the kernel writes its own dump (kern_reboot with RB_DUMP) and reboots.

        Waits for "Automatic reboot in N seconds" / "Rebooting..." (or the firmware banner of the next
        boot) and parses the dump text printed on the way. Raises `DumpFailed` unless it completed.
        """
        from harness.vm.console import ConsoleClosed, ConsoleTimeout

        seconds = dump_deadline_seconds(self.memory_mib) if deadline is None else deadline
        dl = as_deadline(seconds, "automatic dump after panic")
        started = time.monotonic()
        self.continue_()
        done = {
            "reboot": STAGE_PATTERNS[Stage.REBOOT],
            "held": STAGE_PATTERNS[Stage.REBOOT_WAIT],  # kern.panic_reboot_wait_time=-1: no countdown
            "firmware": STAGE_PATTERNS[Stage.FIRMWARE],
        }
        try:
            with self._quiet_failures():
                m = self.console.expect(done, dl)
        except (ConsoleTimeout, ConsoleClosed) as exc:
            partial = self.console.pending() if hasattr(self.console, "pending") else ""
            result = parse_dump_output(partial, time.monotonic() - started)
            raise DumpFailed(
                f"no automatic reboot within {dl.seconds:g} s after continuing from the panic "
                f"({type(exc).__name__}); parsed so far: kind={result.kind}",
                result,
                tail=exc.tail,
            ) from exc
        result = parse_dump_output(m.before, time.monotonic() - started)
        if not result.ok:
            why = result.error or "no dump was written before the reboot (is a dump device configured?)"
            raise DumpFailed(f"automatic dump after panic failed: {why}", result, tail=self.console.tail())
        return result

    def reset(self) -> None:
        """``reset``: reboot at once, no dump, no sync."""
        self._leave("reset")

    def _leave(self, cmd: str) -> None:
        dl = as_deadline(self.command_seconds, f"ddb {cmd}")
        with self._quiet_failures():
            if not self._pager_off:
                self._raw("set $lines 0", dl)
                self._pager_off = True
            self.console.sendline(cmd)
            self.console.expect({"echo": re.escape(cmd) + r"\r*\n"}, dl)
        self.active = False

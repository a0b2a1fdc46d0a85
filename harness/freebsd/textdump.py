"""Make a textdump from ddb and keep what the console printed while ddb's capture was on.

FreeBSD 12.1 (``sys/ddb/db_capture.c``, ``db_textdump.c``, ``db_command.c``; reference §6, §7.4):
``capture on`` records ddb's own output - the ``db> `` prompt, each command line as typed (not its
echo) and what the command prints - into a buffer that a textdump writes as ``ddb.txt``; ``textdump
set`` schedules a textdump, ``textdump dump`` makes one now ("Textdump complete."). ddb's plain
``dump`` refuses while one is pending, so ``textdump dump`` is the command. A textdump needs only ddb,
no shell: it runs on a bare kernel.

`make_textdump` runs, in order: ``show msgbuf`` and ``show panic`` (not captured: what msgbuf.txt and
panic.txt are checked against), ``textdump set``/``status``, ``capture reset``/``on``, the captured
commands, ``textdump dump``. `TextdumpSession.console_captured` is the console text that ddb.txt must
equal: from the prompt after ``capture on`` to the ``textdump dump`` line.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from harness.freebsd.ddb import (
    DUMP_HANG_SECONDS,
    DUMP_STALL_SECONDS,
    Ddb,
    DdbError,
    DumpFailed,
    DumpResult,
    Witness,
)

#: what ddb runs while its capture is on (the textdump's ddb.txt); all print on a bare kernel
CAPTURED_COMMANDS = ("show panic", "show registers", "bt", "ps")
TEXTDUMP_COMPLETE = "Textdump complete."
#: every failure `textdump dump` can print (db_textdump.c), most specific first
TEXTDUMP_FAILURES = (
    r"Insufficient space on dump partition for minimal textdump\.",
    r"Textdump: Insufficient space on dump partition",
    r"Textdump: Error \d+ writing dump",
    r"Dump partition block size \(\d+\) not textdump block size \(\d+\)",
)
PROMPT_TEXT = "db> "
#: generous: a textdump writes a few hundred 512-byte blocks
TEXTDUMP_SECONDS = 300.0


@dataclass
class TextdumpSession:
    """What the harness saw while it made a textdump (the evidence its members are checked against)."""

    commands: list[str]
    console_captured: str  # the console from the prompt after `capture on` to the `textdump dump` line
    show_msgbuf: str  # `show msgbuf` right before capturing (its header lines removed)
    show_panic: str  # `show panic`: "panicstr not set" or "panic: <message>"
    result: DumpResult
    notes: list[str] = field(default_factory=list)

    @property
    def panicstr(self) -> str | None:
        """The panic message ddb showed, None when the kernel was not panicking."""
        m = re.match(r"panic: (.*)", self.show_panic.strip(), re.S)
        return m.group(1) if m else None


def exchange_text(ddb: Ddb) -> str:
    """The console of ddb's last command as ddb printed it: prompt, command line, output (CR LF kept)."""
    raw = ddb.last_console
    if raw.endswith(PROMPT_TEXT):
        raw = raw[: -len(PROMPT_TEXT)]
    return PROMPT_TEXT + raw


def make_textdump(
    ddb: Ddb,
    commands: tuple[str, ...] | list[str] = CAPTURED_COMMANDS,
    *,
    witness: Witness | None = None,
    seconds: float = TEXTDUMP_SECONDS,
) -> TextdumpSession:
    """Capture `commands` and write a textdump (see module docstring); `DumpFailed` unless it completed."""
    show_msgbuf = ddb.show_msgbuf()
    show_panic = ddb.command("show panic")
    ddb.command("textdump set")
    status = ddb.command("textdump status")
    if "textdump is set" not in status:
        raise DdbError(f"textdump set: `textdump status` answered {status!r}", tail=ddb.console.tail())
    ddb.command("capture reset")
    out = ddb.command("capture on")
    if out.strip():
        raise DdbError(f"capture on: unexpected answer {out!r}", tail=ddb.console.tail())
    captured: list[str] = []
    for cmd in commands:
        ddb.command(cmd)
        captured.append(exchange_text(ddb))
    started = time.monotonic()
    try:
        text = ddb.command(
            "textdump dump", seconds, stall_seconds=DUMP_STALL_SECONDS, witness=witness,
            hang_seconds=DUMP_HANG_SECONDS,
        )
    except Exception as exc:  # ConsoleTimeout / ConsoleClosed / NoProgress: nothing whole was written
        partial = ddb.console.pending() if hasattr(ddb.console, "pending") else ""
        result = textdump_result(partial, time.monotonic() - started)
        raise DumpFailed(
            f"ddb textdump dump did not return to db> ({type(exc).__name__}: {str(exc).splitlines()[0]})",
            result,
            tail=getattr(exc, "tail", ""),
        ) from exc
    result = textdump_result(text, time.monotonic() - started)
    if not result.ok:
        why = result.error or (
            f'no "{TEXTDUMP_COMPLETE}" before the prompt; ddb printed {result.text.strip()!r} (a kernel '
            "without a dump device prints nothing: doadump returns ENXIO and `textdump dump` ignores it)"
        )
        raise DumpFailed(f"ddb textdump dump failed: {why}", result, tail=ddb.console.tail())
    echo = ddb.last_console.replace("\r\n", "\n").replace("\r", "").split("\n", 1)[0]
    captured.append(f"{PROMPT_TEXT}{echo}\n")
    return TextdumpSession(list(commands), "".join(captured), show_msgbuf, show_panic, result)


def textdump_result(text: str, seconds: float) -> DumpResult:
    """What ``textdump dump`` printed, as a `DumpResult` of kind "text"."""
    text = text.replace("\r\n", "\n").replace("\r", "")
    error = None
    for rx in TEXTDUMP_FAILURES:
        if m := re.search(rx, text):
            error = m.group(0)
            break
    code = re.search(r"Error (\d+) writing", error or "")
    return DumpResult(
        kind="text",
        dump_mb=None,
        physical_mb=None,
        chunk_count=None,
        chunks=[],
        progress=[],
        complete=TEXTDUMP_COMPLETE in text,
        error=error,
        error_code=int(code.group(1)) if code else None,
        retries=0,
        seconds=seconds,
        text=text,
    )

"""Build the EDITED (synthetic) transcripts in ``freebsd-edited/`` from copies of the real 12.1 ones.

Why: we have no FreeBSD kernel without ddb here, only real 12.1 recordings of a kernel with ddb. The
panic-dump flow for kernels without ddb (`harness.freebsd.panicdump`) is tested against minimal edits of
those recordings; every edit is listed below and in ``PROVENANCE.md``, and each inserted line is a
format string from freebsd-src (cited) or a line copied from another real recording. Run
``python tests/data/transcripts/make_edited.py`` to regenerate; the output is deterministic and committed.
The serial log is always derived from the edited driver log by removing the markers, so the pair stays
consistent the way `RecordedTranscript.load` checks it.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
REAL = HERE / "freebsd-12.1-amd64"
OUT = HERE / "freebsd-edited"

# Same marker grammar as harness.freebsd.replay._MARKER.
_MARKER = re.compile(
    rb"\n\[qdrv +([\d.]+)s\] ([^\n]*)\n"
    rb"|\n\[monitor\] ([^\n]*)\n(?:[^\n\[][^\n]*\n)*(?:(?=\n\[)|\n)"
)

# A kernel without a debugger backend prints no "KDB: debugger backends" lines (subr_kdb.c kdb_init)
# and, without options GDB, no "GDB: ..." line.
BANNER_KDB = b"GDB: no debug ports present\r\nKDB: debugger backends: ddb\r\nKDB: current backend: ddb\r\n"

# The dump text, copied byte for byte from mini.serial.log (the same 512 MiB guest, minidump on).
MINIDUMP = b"Dumping 42 out of 500 MB:..38%..76%\r\nDump complete\r\n"

# kern_shutdown.c: vpanic() "panic: %s" / "cpuid = %d" / "time = %jd", kdb_backtrace() without a
# backend "KDB: stack backtrace:" + stack_print_ddb() "#%d %p at %s+%#lx" lines (addresses made up),
# kern_reboot() print_uptime() "Uptime: %lds", then the dump, then shutdown_panic().
PANIC_NO_DDB = (
    b"KDB: panic\r\n"
    b"panic: Panic sequence on console\r\n"
    b"cpuid = 0\r\n"
    b"time = 5\r\n"
    b"KDB: stack backtrace:\r\n"
    b"#0 0xffffffff804a6c35 at kdb_backtrace+0x65\r\n"
    b"#1 0xffffffff8045d8ee at vpanic+0x17e\r\n"
    b"#2 0xffffffff8045d763 at panic+0x43\r\n"
    b"#3 0xffffffff804a6aa1 at kdb_alt_break_internal+0x151\r\n"
    b"#4 0xffffffff8036c2b5 at uart_intr+0x105\r\n"
    b"#5 0xffffffff80427b9f at intr_event_handle+0xbf\r\n"
    b"Uptime: 5s\r\n"
)
COUNTDOWN = b"Automatic reboot in 15 seconds - press a key on the console to abort\r\n"
HELD = b"--> Press a key on the console to reboot,\r\n--> or switch off the system now.\r\n"


def strip_markers(driver: bytes) -> bytes:
    body = driver[driver.index(b"\n") + 1 :] if driver.startswith(b"[qdrv] ") else driver
    out = bytearray()
    pos = 0
    for m in _MARKER.finditer(body):
        out += body[pos : m.start()]
        pos = m.end()
    out += body[pos:]
    return bytes(out)


def replace_once(data: bytes, old: bytes, new: bytes, what: str) -> bytes:
    if data.count(old) != 1:
        raise SystemExit(f"{what}: expected exactly one {old[:60]!r}, found {data.count(old)}")
    return data.replace(old, new)


def cut_after(data: bytes, marker: bytes, new_tail: bytes, what: str) -> bytes:
    i = data.find(marker)
    if i < 0:
        raise SystemExit(f"{what}: {marker!r} not found")
    return data[:i] + new_tail


def noddb_altpanic() -> bytes:
    """trial-altbreak-1 as a kernel without ddb: no KDB banner lines; CR ~ Ctrl-P instead of Ctrl-B;
    the panic, automatic dump, countdown, our key, and the held state."""
    d = (REAL / "trial-altbreak-1.driver.log").read_bytes()
    d = replace_once(d, BANNER_KDB, b"", "altpanic banner")
    tail = (
        b"\n[qdrv    5.21s] sending ALT panic CR ~ ^P\n"
        + PANIC_NO_DDB
        + MINIDUMP
        + COUNTDOWN
        + b"\n[qdrv    6.02s] sending key CR\n"
        + HELD
        + b"\n[qdrv    6.03s] held at Press a key\n"
    )
    return cut_after(d, b"\n[qdrv    5.21s] sending ALT break CR ~ ^B\n", tail, "altpanic tail")


def noddb_nmi() -> bytes:
    """trial-waitnmi-1 as a kernel without ddb: the NMI prints its two lines and the kernel goes on
    waiting (kdb_trap() returns without a backend); then the ALT panic fallback as above."""
    d = (REAL / "trial-waitnmi-1.driver.log").read_bytes()
    d = replace_once(d, BANNER_KDB, b"", "nmi banner")
    tail = (
        b"NMI/cpu0 ... going to debugger\r\n"
        + b"\n[qdrv   15.40s] sending ALT panic CR ~ ^P\n"
        + PANIC_NO_DDB.replace(b"time = 5", b"time = 15").replace(b"Uptime: 5s", b"Uptime: 15s")
        + MINIDUMP
        + COUNTDOWN
        + b"\n[qdrv   16.21s] sending key CR\n"
        + HELD
        + b"\n[qdrv   16.22s] held at Press a key\n"
    )
    return cut_after(d, b"NMI/cpu0 ... going to debugger\r\n", tail, "nmi tail")


def ddb_panic_continue() -> bytes:
    """trial-panic-1 (kernel WITH ddb): after the panic stops in ddb, `c` instead of `set $lines 0`;
    the kernel then dumps by itself (kern_reboot) and counts down; our key; held."""
    d = (REAL / "trial-panic-1.driver.log").read_bytes()
    tail = (
        b"\n[qdrv    4.22s] in ddb via panic (empty mountroot> input)\n"
        b"c\r\n"
        b"Uptime: 4s\r\n"
        + MINIDUMP
        + COUNTDOWN
        + b"\n[qdrv    5.10s] sending key CR\n"
        + HELD
        + b"\n[qdrv    5.11s] held at Press a key\n"
    )
    return cut_after(d, b"\n[qdrv    4.22s] in ddb via panic (empty mountroot> input)\n", tail, "continue")


def noddb_altpanic_nowait() -> bytes:
    """As edited-noddb-altpanic, booted with kern.panic_reboot_wait_time=-1: shutdown_panic() skips the
    countdown and prints the "Press a key" lines at once (no key needed to hold it)."""
    d = noddb_altpanic()
    d = replace_once(d, COUNTDOWN + b"\n[qdrv    6.02s] sending key CR\n", b"", "nowait countdown")
    return d


EDITS = {
    "edited-noddb-altpanic": noddb_altpanic,
    "edited-noddb-altpanic-nowait": noddb_altpanic_nowait,
    "edited-noddb-nmi": noddb_nmi,
    "edited-ddb-panic-continue": ddb_panic_continue,
}


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, make in EDITS.items():
        driver = make()
        (OUT / f"{name}.driver.log").write_bytes(driver)
        (OUT / f"{name}.serial.log").write_bytes(strip_markers(driver))
        print(f"wrote {OUT / name}.{{driver,serial}}.log")


if __name__ == "__main__":
    main()

"""savecore(8) in a single-user guest onto a UFS2 crash disk, for the host to read without SSH.

The guest (a root image booted single-user, no network) has a second disk for crash dumps: before the
dump `prepare_crash_disk` runs ``newfs`` on it; after the dump and a reboot, `save_onto_crash_disk`
mounts it on ``/var/crash``, runs ``savecore -v /var/crash DUMPDEV`` and unmounts it again, so the host
can read ``vmcore.N`` from the disk image with `harness.freebsd.ufs` (no mount, no root). The commands
are the ones of the real 12.1 boot test (``tests/data/transcripts/freebsd-12.1-mfsroot/``), which is
replayed to test them. Failures say plainly what savecore said: no dump on the device, a dump already
cleared, a dump that does not fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.freebsd.stages import FreeBSDStageError

#: savecore -v's own words for the cases it writes nothing (sbin/savecore/savecore.c)
NO_DUMP_WORDS = re.compile(
    r"no dumps? found|dump header .*cleared|Cleared Kernel Dump|not enough space", re.IGNORECASE
)


class SavecoreFailed(FreeBSDStageError):
    """savecore ran but saved no dump: the message quotes its last lines."""


@dataclass(frozen=True)
class SavecoreRun:
    output: str
    number: int  # N of vmcore.N / textdump.tar.N ("writing core to /var/crash/vmcore.N")
    status: str | None  # "Dump Status:" from the header savecore printed (good / bad)
    compression: str | None  # "Compression:" line (none / gzip / zstd)


def prepare_crash_disk(shell, crash_dev: str, deadline: float = 600.0) -> str:
    """``newfs`` the crash disk (a fresh, empty disk the harness made) before the dump."""
    return shell.run(f"newfs {crash_dev}", deadline, check=True).output


def parse_savecore_output(text: str) -> SavecoreRun:
    """What ``savecore -v`` did; `SavecoreFailed` (one line) when it saved nothing."""
    m = re.search(r"writing (?:compressed )?core to \S*/(?:vmcore|textdump\.tar)\.(\d+)", text)
    if not m or "dump saved" not in text:
        said = [ln.strip() for ln in text.splitlines() if ln.strip()]
        why = next((ln for ln in said if NO_DUMP_WORDS.search(ln)), None)
        tail = "; ".join(said[-3:]) or "(no output)"
        plain = f"savecore found no dump to save ({why})" if why else "savecore saved no dump"
        raise SavecoreFailed(f"{plain}: {tail}")
    status = re.search(r"Dump Status:\s*(\S+)", text)
    compression = re.search(r"Compression:\s*(\S+)", text)
    return SavecoreRun(
        text,
        int(m.group(1)),
        status.group(1) if status else None,
        compression.group(1) if compression else None,
    )


def save_onto_crash_disk(
    shell, dump_dev: str, crash_dev: str, *, directory: str = "/var/crash", deadline: float = 1800.0
) -> SavecoreRun:
    """Root read-write, the crash disk on `directory`, savecore, unmount (the host reads the disk next)."""
    shell.run(f"mount -u -o rw / && mount {crash_dev} {directory} && df -k {directory}", 120.0, check=True)
    r = shell.run(f"savecore -v {directory} {dump_dev}", deadline)
    try:
        run = parse_savecore_output(r.output)
    finally:
        shell.run(f"umount {directory} && echo umount-ok", 120.0, check=True)
    if r.status != 0:
        raise SavecoreFailed(f"savecore -v exited {r.status}: {r.output.strip().splitlines()[-1:]}")
    return run

"""What every savecore retrieval does: leave the crashed kernel so the guest reboots, and check that
savecore's copy holds the same dump as the host's own extraction from the dump disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

from harness.freebsd.stages import Stage, wait_for_stage
from harness.run.boot import Booted
from harness.run.config import ReproError
from harness.run.context import RunContext
from harness.run.dump import Crash
from reader.errors import ReaderError
from reader.source import open_payload


def reboot_after_dump(ctx: RunContext, booted: Booted, crash: Crash, until: Stage, why: str) -> None:
    """Resume the guest (paused for the host extraction), leave ddb with `reset` (panic flow: the key
    `cngetc()` waits for) and wait for `until` in the next boot."""
    guest = booted.guest
    guest.resume()
    if crash.ddb is not None and crash.ddb.active:
        ctx.progress(f"leaving ddb with `reset`: the guest reboots {why}")
        crash.ddb.reset()
    else:
        ctx.progress(f"pressing a key: the held kernel reboots {why}")
        guest.console.send("\r")
    wait_for_stage(guest.console, [until], ctx.cfg.boot_seconds, guest=guest)


def compare_with_host(ctx: RunContext, savecore_copy: Path, host_copy: Path, *, step: str) -> str:
    """A note for the report when savecore's copy holds the host's payload (or could not be compared);
    a `ReproError` when they differ: one of the two retrievals is wrong."""
    same, detail = same_payload(savecore_copy, host_copy)
    if same is None:
        return f"savecore copy not compared with the host's extraction: {detail}"
    if same:
        return f"savecore copy and the host's extraction from the dump disk hold the same payload ({detail})"
    raise ReproError(
        f"savecore's {savecore_copy} differs from the host's extraction {host_copy}: {detail}",
        step=step,
        evidence=ctx.dir,
    )


def same_payload(a: Path, b: Path) -> tuple[bool | None, str]:
    """Whether two vmcore files hold the same dump payload (decompressed; the savecore copy may be
    .gz/.zst). (None, why) when either cannot be opened."""
    digests = []
    for path in (a, b):
        try:
            with open_payload(path) as payload:
                buf = payload.buffer
                digests.append((len(buf), hashlib.sha256(buf).hexdigest()))
        except (ReaderError, OSError) as exc:
            return None, f"{path}: {exc}"
    (na, da), (nb, db) = digests
    if (na, da) == (nb, db):
        return True, f"{na} bytes, sha256 {da[:16]}"
    return False, f"{na} bytes sha256 {da[:16]} vs {nb} bytes sha256 {db[:16]}"

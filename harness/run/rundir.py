"""The run directory and the files a run makes in it: private to the caller, never reused.

QEMU runs as the caller for local guests (a static DAC seclabel, docs/guest-layer.md), so nothing a run
writes needs to be readable by anyone else: directories are 0700 and files 0600. A directory the user
made (``--artifacts DIR``) keeps its mode; only what the run creates is set.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

from harness.run.config import ReproError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def new_run_dir(root: Path, label: str) -> Path:
    """A fresh private directory under ``root`` (never re-using one: nothing a user made is overwritten).

    ``root`` is created 0700 when missing; an existing ``root`` is left exactly as the user made it."""
    if not root.is_dir():
        root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=PRIVATE_DIR)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)[:60]
    for n in range(1000):
        d = root / (f"{stamp}-{label}" + ("" if n == 0 else f"-{n}"))
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode is masked by the umask; ours, so set it exactly
        return d
    raise ReproError(f"no free run directory under {root}", step="setup")


def make_dump_disk(path: Path, memory_mib: int, size_mib: int | None = None) -> Path:
    """A sparse private raw disk big enough for a full dump: RAM + 64 KiB reserve + headers, rounded up
    (`size_mib`: exactly that size instead, e.g. a disk too small to see how a run reports it)."""
    size = (size_mib if size_mib is not None else max(memory_mib, 128) + 128) << 20
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    return path


def save_text(path: Path, text: str | None) -> None:
    """Write evidence text (best effort: evidence must never hide the failure it documents)."""
    if text:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with open(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(text)


def make_private(run_dir: Path) -> None:
    """0700/0600 for everything under the run directory (tools below us, QEMU's pmemsave, the reader's
    extraction, SFTP, use their own modes; the run directory itself was private from the start)."""
    for path in [run_dir, *run_dir.rglob("*")]:
        with contextlib.suppress(OSError):
            if path.is_symlink():
                continue
            os.chmod(path, PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)


def disk_usage(run_dir: Path) -> dict[str, int]:
    """Bytes on disk (sparse files count what they hold) of every file under `run_dir`, by relative name."""
    out: dict[str, int] = {}
    for path in sorted(run_dir.rglob("*")):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(run_dir))] = path.stat().st_blocks * 512
    return out


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"

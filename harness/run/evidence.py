"""Evidence: what a run leaves behind, and nothing more.

A passing run keeps the report, the console transcript, the vmcore (+ info) and the kernel file; the
live images and the dump disk (each as big as the guest's RAM) only on failure or with
``keep_images``. A failing run keeps everything, plus the domain XML, QEMU's log tail and the console
tail. Everything is private to the caller (`rundir.make_private`).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.run.config import ReproOutcome
from harness.run.context import RunContext
from harness.run.dump import Crash
from harness.run.retrieve import Retrieved, retrieval
from harness.run.rundir import disk_usage, make_private, save_text
from harness.run.verify import LiveAfter
from harness.verify.report import VerificationReport

#: the run directory's files that hold a whole guest RAM each; kept on failure or with keep_images
BULK_FILES = ("live-before.raw", "live-after.raw", "live-before-2.raw", "live-after-2.raw", "dump-disk.raw")


@dataclass
class Judged:
    """One dump and its verdict: what `conclude` writes and cleans up."""

    report: VerificationReport
    crash: Crash
    live: LiveAfter
    got: Retrieved
    report_name: str = "report.json"


def conclude(ctx: RunContext, guest: Any, judged: list[Judged]) -> ReproOutcome:
    """Decide and write every report, drop the bulk of a passing run, hand back the outcome."""
    cfg = ctx.cfg
    ctx.enter("evidence")
    for j in judged:
        j.report.decide()
        j.report.write(ctx.dir / j.report_name)
    for j in judged:
        for image in (j.crash.before, j.live.image):
            with contextlib.suppress(Exception):
                image.close()
    removed: dict[str, int] = {}
    if all(j.report.passed for j in judged) and not cfg.keep_images:
        # a kept guest (--keep) still writes its dump disk: that one stays
        names = [n for n in BULK_FILES if not (cfg.keep and n == "dump-disk.raw")]
        removed = remove_bulk(ctx.dir, names)
    make_private(ctx.dir)
    kept = False
    if cfg.keep:
        if not retrieval(cfg.retrieve).REBOOTS:  # a rebooting retrieval resumed and rebooted it already
            guest.resume()  # paused for extraction; it goes on sitting in ddb / at "Press a key"
        kept = True
    evidence: dict[str, str] = {}
    for n, j in enumerate(judged, 1):
        suffix = "" if n == 1 else f"_{n}"
        evidence |= {f"{k}{suffix}": v for k, v in j.got.evidence.items()}
        evidence[f"report{suffix}"] = str(ctx.dir / j.report_name)
    return ReproOutcome(
        judged[0].report,
        ctx.dir,
        guest.name,
        kept,
        cfg.uri,
        evidence,
        flow=judged[0].crash.choice.flow.value,
        kept_files=disk_usage(ctx.dir),
        removed_files=removed,
        reports=[j.report for j in judged],
    )


def remove_bulk(run_dir: Path, names: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Delete the named run files (ours: the run made them); returns what each held on disk."""
    removed: dict[str, int] = {}
    for name in names:
        path = run_dir / name
        with contextlib.suppress(OSError):
            size = path.stat().st_blocks * 512
            path.unlink()
            removed[name] = size
    return removed


def keep_boot_iso(spec: Any, run_dir: Path) -> None:
    """A failed run keeps a copy of the GRUB ISO it booted (the ISO itself may be what failed; a copy,
    not a link, so nothing done to the evidence can change the cache). A passing run only names it in
    domain.xml."""
    iso = getattr(getattr(spec, "boot", None), "iso", None)
    if iso is None or not Path(iso).is_file() or (run_dir / "boot.iso").exists():
        return
    with contextlib.suppress(OSError):
        shutil.copyfile(iso, run_dir / "boot.iso")
    record = Path(str(iso) + ".json")  # what the ISO boots, with the GRUB fixes it carries
    if record.is_file():
        with contextlib.suppress(OSError):
            shutil.copyfile(record, run_dir / "boot.iso.json")


def collect_on_failure(guest: Any, run_dir: Path, exc: BaseException | None = None) -> None:
    """Domain XML, QEMU's log tail, the console tail and transcript: what a failed run is debugged from."""
    with contextlib.suppress(Exception):
        save_text(run_dir / "domain.xml", guest.domain_xml)
    with contextlib.suppress(Exception):
        save_text(run_dir / "qemu-log-tail.txt", guest.log_tail())
    with contextlib.suppress(Exception):
        save_text(run_dir / "console-tail.txt", guest.console.tail(64 * 1024))
    transcript = getattr(getattr(guest, "console", None), "transcript_path", None)
    if transcript and Path(transcript).is_file() and Path(transcript).parent != run_dir:
        with contextlib.suppress(OSError):
            shutil.copy2(transcript, run_dir / "console-transcript.log")
    tail = getattr(exc, "tail", "") or ""
    save_text(run_dir / "console-tail.txt", tail)
    if exc is not None:  # the whole message: a diagnosis may say more than its first line
        step = getattr(exc, "step", "")
        save_text(run_dir / "error.txt", f"{step + ': ' if step else ''}{type(exc).__name__}: {exc}\n")
    make_private(run_dir)

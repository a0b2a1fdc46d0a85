"""A bare kernel booted once to ``root_wait``, saved, and restored for each run ("booted and ready").

Why: under TCG most of a run is the boot. `save_booted` runs the run's own source and boot steps,
then saves the guest with `harness.vm.savestate` (RAM, device state, a frozen copy of the empty dump
disk) together with what the boot taught us: the boot banner's `KernelFacts` (a restored console
never shows the banner again, and the dump flow depends on it) and the configuration it booted with.
`restored(ctx)` starts a new guest from it and hands the run a `Booted`, so `run_repro` goes on with
enter -> dump -> retrieve -> verify exactly as after a fresh boot (`ReproConfig.saved_boot`).

Only bare kernels: an image's guest holds a logged-in shell and an SSH session, neither of which a
saved state can carry to a new guest.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.freebsd.kernel import KernelFacts, kernel_facts
from harness.freebsd.stages import TAIL_WINDOW
from harness.run import boot
from harness.run.config import Progress, ReproConfig, ReproError
from harness.run.context import RunContext
from harness.run.rundir import make_dump_disk, new_run_dir, save_text
from harness.run.sources import GuestSource, build_source
from harness.vm import savestate

RECORD = "saved-boot.pickle"
#: the run configuration fields a restored guest cannot change: they were fixed at boot
FIXED_AT_BOOT = ("kernel", "kenv", "memory_mib", "vcpus", "minidump", "accel", "uri", "dump_disk_mib")


@dataclass
class SavedBoot:
    """A saved booted guest and what its boot taught us."""

    dir: Path
    state: savestate.SavedState
    cfg: ReproConfig  # what it booted with
    source: GuestSource  # its dump disk names the booted guest's own file: a restore uses its copy
    dump_target: str  # the dump disk's device in the domain ("vda")
    facts: KernelFacts  # from the boot banner
    boot_seconds: float  # guest start (domain defined and started) to root_wait, when it was saved

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SavedBoot:
        path = Path(directory) / RECORD
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise ReproError(
                f"{path}: not a saved boot written by save_booted: {exc}", step="saved boot"
            ) from exc
        if not isinstance(saved, cls):
            raise ReproError(f"{path}: not a saved boot written by save_booted", step="saved boot")
        return saved

    def config(self, **changes: Any) -> ReproConfig:
        """A run configuration that starts from this saved boot (`changes`: what may differ per run)."""
        return dataclasses.replace(self.cfg, saved_boot=self.dir, **changes)


def save_booted(cfg: ReproConfig, dest: Path, progress: Progress = print) -> SavedBoot:
    """Boot `cfg`'s bare kernel to root_wait with the run's own steps and save it into `dest` (must not
    exist). The booted guest is destroyed afterwards; its run directory (under ``cfg.artifacts``) keeps
    the boot's console transcript."""
    if cfg.kernel is None:
        raise ReproError("only a bare --kernel boot can be saved and restored", step="saved boot")
    dest = Path(dest)
    ctx = RunContext(cfg, new_run_dir(cfg.artifacts, "saved-boot"), progress)
    source = build_source(ctx, make_dump_disk(ctx.dir / "dump-disk.raw", cfg.memory_mib, cfg.dump_disk_mib))
    started = time.monotonic()
    with boot.started(ctx, source) as guest:
        booted = boot.boot(ctx, guest, source)
        boot_seconds = time.monotonic() - started
        facts = kernel_facts(guest.console.tail(TAIL_WINDOW))
        target = _target_of(guest, source.dump_disk)
        ctx.enter("save")
        state = savestate.save(guest, dest / "state")
    saved = SavedBoot(dest, state, cfg, booted.source, target, facts, boot_seconds)
    with open(dest / RECORD, "wb") as f:
        pickle.dump(saved, f)
    progress(f"saved the booted guest in {state.saved_in:.1f}s: {dest}")
    return saved


@contextmanager
def restored(ctx: RunContext) -> Iterator[tuple[Any, boot.Booted]]:
    """A new guest from ``ctx.cfg.saved_boot``, as the boot step leaves it: (guest, Booted). Its copy of
    the dump disk is ``ctx.dir/dump-disk.raw``, evidence like any run's (kept on failure)."""
    ctx.enter("restore")
    saved = SavedBoot.load(ctx.cfg.saved_boot)
    _check_same_boot(saved.cfg, ctx.cfg)
    disk = ctx.dir / "dump-disk.raw"  # the guest's own copy of the saved (empty) dump disk
    with ctx.timed("boot"):
        guest = savestate.restore(saved.state, ctx.dir, keep=ctx.cfg.keep, copies={saved.dump_target: disk})
    with guest:
        save_text(ctx.dir / "domain.xml", guest.domain_xml)
        source = dataclasses.replace(saved.source, dump_disk=disk)
        ctx.progress(
            f"guest {guest.name} restored from {saved.dir} in {ctx.timings['boot']:.1f}s (booted to "
            f"root_wait; {saved.facts.describe()})"
        )
        yield guest, boot.Booted(
            guest, source, kernel=source.kernel, kernel_source=source.kernel_source, facts=saved.facts
        )


def _target_of(guest: Any, disk: Path | None) -> str:
    for target, path in guest.disk_paths().items():
        if disk is not None and path.resolve() == disk.resolve():
            return target
    raise ReproError(f"the dump disk {disk} is not among the guest's disks", step="saved boot")


def _check_same_boot(saved: ReproConfig, cfg: ReproConfig) -> None:
    """A saved boot fixed the kernel, its environment, memory and dump disk: a run must not ask for others."""
    for name in FIXED_AT_BOOT:
        was, want = getattr(saved, name), getattr(cfg, name)
        if want != was:
            raise ReproError(
                f"the saved boot {cfg.saved_boot} was booted with {name}={was!r}, this run asks for {want!r}",
                step="restore",
            )

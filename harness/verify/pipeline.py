"""One reproduction run: boot FreeBSD, enter ddb, dump, retrieve, verify against live memory.

Used by `fbsd-hil repro` and by the pytest plugin's ``verified_dump`` fixture, so the CLI a developer
runs by hand and the HIL test matrix exercise exactly the same steps:

1. guest source: a bare kernel (GRUB ISO, no root: the kernel waits for a root device) or a disk image
   (official release or a user's image; console login as root);
2. a dedicated raw dump disk; ``dumpdev`` (and ``debug.minidump`` for bare kernels) in the kernel env;
3. enter ddb by the plan's trigger; `show registers` and `x` of a few symbols for cross-checks;
4. a live image of physical memory *before* `dump` and one *after*, while every CPU sits in ddb;
5. the guest paused, the dump extracted from the dump disk on the host (savecore semantics);
6. `verify_dump` -> `VerificationReport` (JSON written into the artifacts directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.verify.report import VerificationReport

Progress = Callable[[str], None]

#: Symbols ddb prints before the dump, checked against the reader: (symbol, ddb format, size).
DDB_SYMBOL_CHECKS = [("KPML4phys", "gx", 8), ("hz", "lx", 4)]


class ReproError(RuntimeError):
    """A step failed; ``evidence`` names the directory holding transcript, domain XML and logs."""

    def __init__(self, message: str, *, step: str, evidence: Path | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.evidence = evidence

    def one_line(self) -> str:
        first = str(self).strip().splitlines()[0] if str(self).strip() else type(self).__name__
        where = f" (evidence: {self.evidence})" if self.evidence else ""
        return f"{self.step}: {first}{where}"


@dataclass
class ReproConfig:
    kernel: Path | None = None
    image: Path | None = None
    release: str | None = None
    kenv: dict[str, str] = field(default_factory=dict)
    memory_mib: int = 512
    vcpus: int = 1
    accel: str = "auto"
    uri: str | None = None
    minidump: bool = True
    trigger: str = "nmi"
    retrieve: str = "disk"  # "disk" (host-side extraction) | "ssh" (savecore + SFTP)
    compression: str = "none"
    device: str = "disk"
    artifacts: Path = field(default_factory=lambda: Path.cwd() / "fbsd-hil-artifacts")
    keep: bool = False
    offline: bool = False
    boot_seconds: float = 600.0
    keep_live_images: bool = False

    def source(self) -> str:
        if self.kernel:
            return f"kernel {self.kernel}"
        if self.image:
            return f"image {self.image}"
        return f"release {self.release}"


@dataclass
class ReproOutcome:
    report: VerificationReport
    artifacts: Path
    guest_name: str | None = None
    kept: bool = False
    uri: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)


def new_run_dir(root: Path, label: str) -> Path:
    """A fresh directory under ``root`` (never re-using one: nothing a user made is overwritten)."""
    root.mkdir(parents=True, exist_ok=True)
    # QEMU runs as another user (libvirt-qemu) and writes memory images and reads the ISO here
    with contextlib.suppress(OSError):
        os.chmod(root, 0o755)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", label)[:60]
    for n in range(1000):
        d = root / (f"{stamp}-{label}" + ("" if n == 0 else f"-{n}"))
        try:
            d.mkdir()
        except FileExistsError:
            continue
        os.chmod(d, 0o777)  # noqa: S103 - QEMU (libvirt-qemu) must write pmemsave images here
        return d
    raise ReproError(f"no free run directory under {root}", step="setup")


def _make_dump_disk(path: Path, memory_mib: int) -> Path:
    """A sparse raw disk big enough for a full dump: RAM + 64 KiB reserve + headers, rounded up."""
    size = (max(memory_mib, 128) + 128) << 20
    with open(path, "xb") as f:
        f.truncate(size)
    os.chmod(path, 0o666)
    return path


def _save_text(path: Path, text: str | None) -> None:
    if text:
        with contextlib.suppress(OSError):
            path.write_text(text, encoding="utf-8", errors="replace")


def run_repro(cfg: ReproConfig, progress: Progress = print) -> ReproOutcome:
    """Run the whole chain once; raise `ReproError` (one clear line + evidence dir) on a failed step."""
    from harness.domain_xml import ExtraDisk, GuestSpec, IsoBoot

    run_dir = new_run_dir(cfg.artifacts, f"repro-{'mini' if cfg.minidump else 'full'}-{cfg.trigger}")
    timings: dict[str, float | None] = {
        "boot": None,
        "ddb": None,
        "dump": None,
        "extract": None,
        "verify": None,
    }
    (run_dir / "config.json").write_text(
        json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()}, indent=2)
        + "\n"
    )
    step = "setup"
    dump_disk = _make_dump_disk(run_dir / "dump-disk.raw", cfg.memory_mib)
    kernel_for_reader: Path | None = cfg.kernel
    try:
        if cfg.kernel is not None:
            step = "grub iso"
            from images.grub_iso import DEFAULT_KENV, NO_ROOT_KENV, build_kernel_iso

            kenv = dict(DEFAULT_KENV) | dict(NO_ROOT_KENV) | {"dumpdev": "/dev/vtbd0"}
            kenv["debug.minidump"] = "1" if cfg.minidump else "0"
            kenv |= cfg.kenv
            progress(f"building GRUB ISO for {cfg.kernel}")
            iso = build_kernel_iso(cfg.kernel, kenv, run_dir / "boot.iso")
            os.chmod(iso, 0o644)
            spec = GuestSpec(
                memory_mib=cfg.memory_mib,
                vcpus=cfg.vcpus,
                accel=cfg.accel,
                boot=IsoBoot(iso),
                disks=(ExtraDisk(dump_disk),),
                uri=cfg.uri,
                on_reboot="destroy",
            )
            dump_dev = "/dev/vtbd0"
        else:
            step = "image"
            from harness.domain_xml import DiskImageBoot

            image = cfg.image
            if image is None:
                import images

                progress(f"fetching FreeBSD {cfg.release} (cached after the first time)")
                image = images.fetch(str(cfg.release), offline=cfg.offline, progress=True)
            spec = GuestSpec(
                memory_mib=cfg.memory_mib,
                vcpus=cfg.vcpus,
                accel=cfg.accel,
                boot=DiskImageBoot(Path(image)),
                disks=(ExtraDisk(dump_disk),),
                uri=cfg.uri,
                on_reboot="destroy",
            )
            dump_dev = "/dev/vtbd1"
        return _run_guest(cfg, spec, run_dir, dump_disk, dump_dev, kernel_for_reader, timings, progress)
    except ReproError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line + evidence
        raise ReproError(f"{type(exc).__name__}: {exc}", step=step, evidence=run_dir) from exc


def _run_guest(
    cfg: ReproConfig,
    spec: Any,
    run_dir: Path,
    dump_disk: Path,
    dump_dev: str,
    kernel: Path | None,
    timings: dict[str, float | None],
    progress: Progress,
) -> ReproOutcome:
    from harness.freebsd.ddb import Ddb
    from harness.freebsd.enter import enter_ddb
    from harness.freebsd.stages import Stage, wait_for_stage
    from harness.guest import Guest
    from harness.verify.engine import verify_dump

    step = "boot"
    guest_cm = Guest(spec, run_dir, keep=cfg.keep)
    guest = guest_cm.__enter__()
    kept = False
    evidence: dict[str, str] = {}
    try:
        try:
            _save_text(run_dir / "domain.xml", getattr(guest, "domain_xml", ""))
            progress(
                f"guest {guest.name} started ({cfg.memory_mib} MiB, {guest.accel}); booting {cfg.source()}"
            )
            t = time.monotonic()
            shell = None
            if cfg.kernel is not None:
                ev = wait_for_stage(
                    guest.console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], cfg.boot_seconds
                )
                progress(f"kernel up: {ev.stage.value} after {time.monotonic() - t:.1f}s")
            else:
                from harness.freebsd.dumps import DumpPlan
                from harness.freebsd.session import ConsoleShell

                shell = ConsoleShell(guest.console)
                shell.login(cfg.boot_seconds)
                progress(f"logged in on the console after {time.monotonic() - t:.1f}s")
                plan = DumpPlan(
                    minidump=cfg.minidump,
                    trigger=cfg.trigger.replace("-", "_"),
                    compression=cfg.compression,
                    dump_disk=dump_dev,
                )
                for cmd in plan.shell_commands():
                    shell.run(cmd, check=True)
                if kernel is None:
                    kernel = _fetch_kernel_from_guest(shell, run_dir)
            timings["boot"] = round(time.monotonic() - t, 3)

            step = "ddb"
            t = time.monotonic()
            entry = enter_ddb(
                guest.console,
                cfg.trigger.replace("-", "_"),
                guest=guest,
                shell=shell,
                memory_mib=cfg.memory_mib,
            )
            ddb: Ddb = entry.ddb
            progress(f"in ddb via {cfg.trigger} after {time.monotonic() - t:.1f}s")
            registers = ddb.show_registers()
            values: dict[str, tuple[int, int]] = {}
            for sym, fmt, size in DDB_SYMBOL_CHECKS:
                with contextlib.suppress(Exception):
                    values[sym] = (ddb.x(sym, fmt)[0], size)
            timings["ddb"] = round(time.monotonic() - t, 3)

            step = "live image (before dump)"
            before_path = run_dir / "live-before.raw"
            before = guest.memory_image(before_path)

            step = "dump"
            t = time.monotonic()
            progress("ddb: dump")
            result = ddb.dump()
            timings["dump"] = round(time.monotonic() - t, 3)
            progress(f"dump complete: {result.kind} dump, {result.dump_mb} MB in {result.seconds:.1f}s")

            step = "live image (after dump)"
            after_path = run_dir / "live-after.raw"
            after = guest.memory_image(after_path)
            cr3 = _cr3(guest)

            step = "extract"
            t = time.monotonic()
            from harness.freebsd.retrieve import from_dump_disk

            retrieved = from_dump_disk(dump_disk, run_dir / "crash", guest=guest, kernel=kernel)
            timings["extract"] = round(time.monotonic() - t, 3)
            progress(f"extracted {retrieved.vmcore} ({retrieved.sizes.get('vmcore', 0) >> 20} MiB)")
            evidence["vmcore"] = str(retrieved.vmcore)

            step = "verify"
            import reader

            ddb_regs = _trapframe_registers(registers)
            if kernel is None:  # no symbols: the reader cannot locate what ddb printed
                values, ddb_regs = {}, {}
            with reader.open_vmcore(retrieved.vmcore, kernel=kernel) as vm:
                report = verify_dump(
                    vm,
                    after,
                    before=before,
                    kernel=kernel,
                    ddb_values=values,
                    ddb_registers=ddb_regs,
                    timings=timings,
                    pml4_pa=None,
                )
                if any("cannot walk the live kernel page tables" in e for e in report.errors) and cr3:
                    report = verify_dump(
                        vm,
                        after,
                        before=before,
                        kernel=kernel,
                        ddb_values=values,
                        ddb_registers=ddb_regs,
                        timings=timings,
                        pml4_pa=cr3,
                    )
            if kernel is None:
                report.notes.append(
                    "no kernel file: no attribution by symbol and no ddb cross-checks "
                    "(this build does not copy /boot/kernel/kernel out of an image yet)"
                )
            report.write(run_dir / "report.json")
            evidence["report"] = str(run_dir / "report.json")
            if report.passed and not cfg.keep_live_images:
                for p in (before_path, after_path):
                    with contextlib.suppress(OSError):
                        p.unlink()
            if cfg.keep:
                guest.resume()  # paused for extraction; it goes on sitting in ddb
                kept = True
            return ReproOutcome(report, run_dir, guest.name, kept, cfg.uri, evidence)
        except Exception as exc:
            _collect_evidence(guest, run_dir)
            if isinstance(exc, ReproError):
                raise
            tail = getattr(exc, "tail", "") or ""
            _save_text(run_dir / "console-tail.txt", tail)
            raise ReproError(f"{type(exc).__name__}: {exc}", step=step, evidence=run_dir) from exc
    finally:
        guest_cm.__exit__(None, None, None)  # destroys the domain unless cfg.keep


def _trapframe_registers(regs: dict[str, int]) -> dict[str, int]:
    """The registers `show registers` prints that live in the trap frame (segment names differ)."""
    from harness.verify.engine import TRAPFRAME

    return {k: v for k, v in regs.items() if k in TRAPFRAME and k not in ("fs", "gs", "es", "ds")}


def _cr3(guest: Any) -> int | None:
    with contextlib.suppress(Exception):
        m = re.search(r"CR3=([0-9a-fA-F]+)", guest.hmp("info registers"))
        if m:
            return int(m.group(1), 16) & 0x000FFFFFFFFFF000
    return None


def _collect_evidence(guest: Any, run_dir: Path) -> None:
    with contextlib.suppress(Exception):
        _save_text(run_dir / "domain.xml", guest.domain_xml)
    with contextlib.suppress(Exception):
        _save_text(run_dir / "qemu-log-tail.txt", guest.log_tail())
    with contextlib.suppress(Exception):
        _save_text(run_dir / "console-tail.txt", guest.console.tail(64 * 1024))
    transcript = getattr(getattr(guest, "console", None), "transcript_path", None)
    if transcript and Path(transcript).is_file() and Path(transcript).parent != run_dir:
        with contextlib.suppress(OSError):
            shutil.copy2(transcript, run_dir / "console-transcript.log")


def _fetch_kernel_from_guest(shell: Any, run_dir: Path) -> Path | None:
    """The running kernel's file, for symbols: copied over the console is too slow; SSH is used if set up.

    Without SSH the reader works without symbols (no attribution by name, no cross-checks).
    """
    return None

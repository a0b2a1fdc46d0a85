"""One reproduction run: boot FreeBSD, make the kernel dump, retrieve it, verify against live memory.

Used by `fbsd-hil repro` and by the pytest plugin's ``verified_dump`` fixture, so the CLI a developer
runs by hand and the HIL test matrix exercise exactly the same steps:

1. guest source: a bare kernel (GRUB ISO, no root: the kernel waits for a root device) or a disk image
   (official release or a user's image), *prepared* by `images.prepare` (loader-time dump device, our
   SSH key, no ddb scripts) and logged into on the console; its ``/boot/kernel/kernel`` is fetched over
   SSH (pinned host key) for symbols;
2. a dedicated raw dump disk; ``dumpdev`` (and ``debug.minidump``, plus
   `harness.freebsd.panicdump.PANIC_FLOW_KENV`) in the kernel env for bare kernels;
3. the dump flow from the boot banner (`select_flow`): with ddb, enter ddb by the trigger, `show
   registers` and `x` of a few symbols, a live image *before* `dump`, `dump`; without ddb (release
   GENERIC), a live image right before the trigger, then panic and let the kernel write its own dump,
   held at "Press a key on the console to reboot";
4. a live image *after* the dump, while every CPU is stopped;
5. the dump from the dump disk on the host (guest paused; savecore semantics) and, with
   ``--retrieve ssh``, by savecore + SFTP after a reboot (checked against the host's copy);
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
    flow: str | None = None  # None: from the kernel (ddb if it has the backend, else panic); "ddb" | "panic"
    #: panic flow: a live image right before the trigger (the last stop before the kernel's own dump)
    panic_before_image: bool = True

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
    flow: str = "ddb"  # "ddb": kept guest sits in ddb; "panic": at "Press a key on the console to reboot"


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
    try:
        if cfg.kernel is not None:
            step = "grub iso"
            from harness.freebsd.handover import HANDOVER_QEMU_ARGS
            from images.grub_iso import build_kernel_iso

            kenv = bare_kernel_kenv(cfg)
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
                extra_qemu_args=HANDOVER_QEMU_ARGS,  # QEMU logs a triple fault at the hand-over
            )
            source = GuestSource(spec, "/dev/vtbd0", cfg.kernel, f"--kernel {cfg.kernel}", kenv=kenv)
        else:
            step = "image"
            source = _prepared_image_source(cfg, dump_disk, progress)
        return _run_guest(cfg, source, run_dir, dump_disk, timings, progress)
    except ReproError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line + evidence
        raise ReproError(f"{type(exc).__name__}: {exc}", step=step, evidence=run_dir) from exc


@dataclass
class GuestSource:
    """What boots and what we know about it before it does."""

    spec: Any  # harness.domain_xml.GuestSpec
    dump_dev: str  # the dump disk's name in the guest
    kernel: Path | None  # a kernel file for symbols (bare kernel: the user's; image: fetched later)
    kernel_source: str  # where `kernel` came from, for the report
    kenv: dict[str, str] | None = None  # the kernel environment a bare kernel booted with
    prepared: Any = None  # images.PreparedImage for images


def bare_kernel_kenv(cfg: ReproConfig) -> dict[str, str]:
    """The kernel environment of a bare-kernel boot: no root, the dump disk as ``dumpdev``, the dump
    kind, `PANIC_FLOW_KENV` (a kernel without ddb must be able to panic from the console and wait for a
    key after its own dump), then the user's ``--kenv`` (the user wins)."""
    from harness.freebsd.panicdump import PANIC_FLOW_KENV
    from images.grub_iso import DEFAULT_KENV, NO_ROOT_KENV

    kenv = dict(DEFAULT_KENV) | dict(NO_ROOT_KENV) | {"dumpdev": "/dev/vtbd0"}
    kenv["debug.minidump"] = "1" if cfg.minidump else "0"
    kenv |= PANIC_FLOW_KENV
    kenv |= cfg.kenv
    return kenv


def _prepared_image_source(cfg: ReproConfig, dump_disk: Path, progress: Progress) -> GuestSource:
    """The prepared image (`images.prepare`: loader-time dump device, our SSH key, no ddb scripts; cached
    after the first time) booted on an overlay, the dump disk on the same bus, SSH forwarded."""
    import images
    from harness.domain_xml import DiskImageBoot, ExtraDisk, GuestSpec, UserNetwork

    what: str | Path = cfg.image if cfg.image is not None else str(cfg.release)
    progress(f"preparing {what} for the harness (cached after the first time)")
    prepared = images.prepare(
        what, offline=cfg.offline, accel=cfg.accel, uri=cfg.uri, progress=True
    )
    spec = GuestSpec(
        memory_mib=cfg.memory_mib,
        vcpus=cfg.vcpus,
        accel=cfg.accel,
        boot=DiskImageBoot(image=Path(prepared.image), format="qcow2", bus=prepared.disk_bus),
        disks=(ExtraDisk(dump_disk, format="raw", bus=prepared.disk_bus),),
        network=UserNetwork(),
        uri=cfg.uri,
        # savecore retrieval reboots the guest and reads /var/crash afterwards
        on_reboot="restart" if cfg.retrieve == "ssh" else "destroy",
    )
    return GuestSource(spec, prepared.dump_device, None, "", prepared=prepared)


def _run_guest(
    cfg: ReproConfig,
    source: GuestSource,
    run_dir: Path,
    dump_disk: Path,
    timings: dict[str, float | None],
    progress: Progress,
) -> ReproOutcome:
    from harness.freebsd.panicdump import select_flow
    from harness.guest import Guest
    from harness.verify.engine import verify_dump

    step = "boot"
    guest_cm = Guest(source.spec, run_dir, keep=cfg.keep)
    guest = guest_cm.__enter__()
    kept = False
    evidence: dict[str, str] = {}
    kernel, kernel_source = source.kernel, source.kernel_source
    try:
        try:
            _save_text(run_dir / "domain.xml", getattr(guest, "domain_xml", ""))
            progress(
                f"guest {guest.name} started ({cfg.memory_mib} MiB, {guest.accel}); booting {cfg.source()}"
            )
            t = time.monotonic()
            shell = None
            bounds_before: int | None = None
            if cfg.kernel is not None:
                from harness.freebsd.stages import Stage, wait_for_stage

                ev = wait_for_stage(
                    guest.console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], cfg.boot_seconds, guest=guest,
                    progress=progress,
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
                    dump_disk=source.dump_dev,
                )
                for cmd in plan.shell_commands():
                    shell.run(cmd, check=True)
                step = "kernel over ssh"
                kernel, kernel_source = fetch_kernel_over_ssh(
                    guest, shell, source.prepared, run_dir, progress
                )
                if cfg.retrieve == "ssh":
                    bounds_before = _crash_bounds(shell)
            timings["boot"] = round(time.monotonic() - t, 3)

            step = "dump flow"
            choice = select_flow(
                guest.console,
                cfg.trigger.replace("-", "_"),
                shell=shell,
                kenv=source.kenv,
                facts=kernel_facts_with_shell(guest.console, shell),
                force=cfg.flow,
            )
            progress(choice.describe())
            steps: list[str] = []
            try:
                crash = make_dump(
                    guest, choice, shell=shell, memory_mib=cfg.memory_mib, run_dir=run_dir, timings=timings,
                    progress=progress, on_step=steps.append, panic_before_image=cfg.panic_before_image,
                )
            finally:
                step = steps[-1] if steps else step

            step = "live image (after dump)"
            after_path = run_dir / "live-after.raw"
            after = guest.memory_image(after_path)
            cr3 = _cr3(guest)
            # the dump device's own I/O state (rings, request header/status: FreeBSD's vtblk sets the
            # status byte to -1 before each request, so a dumped copy can hold a value neither live image
            # shows), named from QEMU in both flows
            io_ranges, io_note = virtio_blk_io_ranges(guest, after)
            crash.notes.append(io_note)

            step = "extract"
            t = time.monotonic()
            from harness.freebsd.retrieve import from_dump_disk

            retrieved = from_dump_disk(dump_disk, run_dir / "crash", guest=guest, kernel=kernel)
            timings["extract"] = round(time.monotonic() - t, 3)
            progress(f"extracted {retrieved.vmcore} ({retrieved.sizes.get('vmcore', 0) >> 20} MiB)")
            evidence["vmcore"] = str(retrieved.vmcore)
            retrieval_notes: list[str] = []
            if cfg.retrieve == "ssh":
                step = "savecore + sftp"
                host_copy = retrieved
                retrieved, retrieval_notes = retrieve_via_savecore(
                    guest, crash, shell, source, run_dir, host_copy, bounds_before, cfg, progress,
                    have_kernel=kernel is not None,
                )
                timings["extract"] = round(time.monotonic() - t, 3)
                evidence["vmcore"] = str(retrieved.vmcore)
                evidence["vmcore_host"] = str(host_copy.vmcore)
                if kernel is None and retrieved.kernel is not None:
                    kernel, kernel_source = retrieved.kernel, "fetched by SFTP from the guest after savecore"

            step = "verify"
            import reader

            values = crash.values
            ddb_regs = _trapframe_registers(crash.registers) if crash.registers else None
            if kernel is None:  # no symbols: the reader cannot locate what ddb printed
                values, ddb_regs = {}, None
            kw = dict(
                before=crash.before,
                kernel=kernel,
                ddb_values=values,
                ddb_registers=ddb_regs,
                timings=timings,
                flow=choice.flow.value,
                io_ranges=io_ranges,
            )
            with reader.open_vmcore(retrieved.vmcore, kernel=kernel) as vm:
                report = verify_dump(vm, after, pml4_pa=None, **kw)
                if any("cannot walk the live kernel page tables" in e for e in report.errors) and cr3:
                    report = verify_dump(vm, after, pml4_pa=cr3, **kw)
            report.kernel_source = kernel_source or "none"
            report.retrieval = "savecore + SFTP" if cfg.retrieve == "ssh" else "host (dump disk)"
            report.notes.extend(crash.notes)
            report.notes.extend(retrieval_notes)
            if kernel is None:
                report.notes.append(
                    "no kernel file: no attribution by symbol and no ddb cross-checks "
                    "(the kernel could not be fetched from the guest)"
                )
            report.decide()
            report.write(run_dir / "report.json")
            evidence["report"] = str(run_dir / "report.json")
            if report.passed and not cfg.keep_live_images:
                for p in (crash.before_path, after_path):
                    if p is not None:
                        with contextlib.suppress(OSError):
                            p.unlink()
            if cfg.keep:
                if cfg.retrieve != "ssh":  # savecore retrieval resumed it and rebooted it already
                    guest.resume()  # paused for extraction; it goes on sitting in ddb / at "Press a key"
                kept = True
            return ReproOutcome(
                report, run_dir, guest.name, kept, cfg.uri, evidence, flow=choice.flow.value
            )
        except Exception as exc:
            _collect_evidence(guest, run_dir)
            if isinstance(exc, ReproError):
                raise
            tail = getattr(exc, "tail", "") or ""
            _save_text(run_dir / "console-tail.txt", tail)
            raise ReproError(f"{type(exc).__name__}: {exc}", step=step, evidence=run_dir) from exc
    finally:
        guest_cm.__exit__(None, None, None)  # destroys the domain unless cfg.keep


def kernel_facts_with_shell(console: Any, shell: Any) -> Any:
    """The boot banner's `KernelFacts`; with a shell, the debugger backends from ``sysctl -n
    debug.kdb.available`` instead (exact, and independent of how much console text scrolled by since
    the banner). None without a shell: `select_flow` reads the banner itself."""
    import dataclasses

    from harness.freebsd.kernel import kernel_facts
    from harness.freebsd.stages import TAIL_WINDOW

    if shell is None:
        return None
    facts = kernel_facts(console.tail(TAIL_WINDOW))
    r = shell.run("sysctl -n debug.kdb.available")
    if r.status == 0:
        backends = tuple(r.output.split())
        facts = dataclasses.replace(
            facts, backends=backends, current_backend=facts.current_backend if backends else None
        )
    return facts


@dataclass
class Crash:
    """What making the dump left behind: the flow, ddb's values (ddb flow), the before image."""

    choice: Any  # harness.freebsd.panicdump.FlowChoice
    result: Any  # harness.freebsd.ddb.DumpResult
    registers: dict[str, int] | None = None
    values: dict[str, tuple[int, int]] = field(default_factory=dict)
    before: Any = None
    before_path: Path | None = None
    ddb: Any = None  # harness.freebsd.ddb.Ddb (ddb flow): still active after `dump`
    notes: list[str] = field(default_factory=list)


def make_dump(
    guest: Any,
    choice: Any,
    *,
    shell: Any = None,
    memory_mib: int,
    run_dir: Path,
    timings: dict[str, float | None],
    progress: Progress = print,
    on_step: Callable[[str], None] = lambda _step: None,
    panic_before_image: bool = True,
) -> Crash:
    """Make the dump by the chosen flow and leave every CPU stopped.

    ddb flow (unchanged): enter ddb by the trigger, `show registers` and `x` of `DDB_SYMBOL_CHECKS`, a
    live image before `dump`, `dump`; the kernel stays in ddb. Panic flow (no ddb backend): no ddb to
    ask, so no cross-checks; `panic_dump` panics, parses the dump the kernel writes and holds it at
    "Press a key on the console to reboot". There is no stop between the panic and the dump, so the
    before image (`panic_before_image`) is taken right before the trigger, the guest paused: the dump
    device's driver state in heap (struct virtqueue, sglist) changes while dumping and cannot be named
    from outside, and only this image tells such a page from a wrong one.
    """
    from harness.freebsd.panicdump import DumpFlow, PanicMethod, panic_dump

    if choice.flow == DumpFlow.PANIC:
        on_step("panic dump")
        if shell is not None:
            # no countdown to race (a tunable for bare kernels, writable at run time on 12.x and later)
            shell.run("sysctl kern.panic_reboot_wait_time=-1")
            if PanicMethod.ALT_PANIC in (choice.method, choice.fallback):
                shell.run("sysctl debug.kdb.alt_break_to_debugger=1")
        before = before_path = None
        if panic_before_image:
            on_step("live image (before the panic trigger)")
            before_path = run_dir / "live-before.raw"
            before = guest.memory_image(before_path)  # paused for the copy, running again afterwards
            on_step("panic dump")
        t = time.monotonic()
        progress(f"panic flow: panicking via {choice.method.value}; the kernel writes its own dump")
        result = panic_dump(guest.console, choice, guest=guest, shell=shell, memory_mib=memory_mib)
        timings["dump"] = round(time.monotonic() - t, 3)
        progress(
            f"dump complete: {result.kind} dump, {result.dump_mb} MB in {result.seconds:.1f}s; kernel held "
            f"at 'Press a key' (panic: {result.panic})"
        )
        notes = [
            f"panic flow ({choice.why}): the kernel wrote its own dump on panic; no ddb cross-checks (no "
            "ddb); the panic flow's expected-volatile kinds apply; "
            + (
                "the before image was taken right before the panic trigger (there is no stop between the "
                "panic and the dump)"
                if before is not None
                else "no live image before the dump"
            ),
            *[n for n in (result.notes or []) if n],
        ]
        return Crash(choice, result, before=before, before_path=before_path, notes=notes)

    from harness.freebsd.enter import enter_ddb

    on_step("ddb")
    t = time.monotonic()
    entry = enter_ddb(guest.console, choice.trigger, guest=guest, shell=shell, memory_mib=memory_mib)
    ddb = entry.ddb
    progress(f"in ddb via {choice.trigger.value} after {time.monotonic() - t:.1f}s")
    registers = ddb.show_registers()
    values: dict[str, tuple[int, int]] = {}
    for sym, fmt, size in DDB_SYMBOL_CHECKS:
        with contextlib.suppress(Exception):
            values[sym] = (ddb.x(sym, fmt)[0], size)
    timings["ddb"] = round(time.monotonic() - t, 3)

    on_step("live image (before dump)")
    before_path = run_dir / "live-before.raw"
    before = guest.memory_image(before_path)

    on_step("dump")
    t = time.monotonic()
    progress("ddb: dump")
    result = ddb.dump()
    timings["dump"] = round(time.monotonic() - t, 3)
    progress(f"dump complete: {result.kind} dump, {result.dump_mb} MB in {result.seconds:.1f}s")
    return Crash(choice, result, registers, values, before, before_path, ddb)


def _trapframe_registers(regs: dict[str, int]) -> dict[str, int]:
    """The registers `show registers` prints that live in the trap frame (segment names differ)."""
    from harness.verify.engine import TRAPFRAME

    return {k: v for k, v in regs.items() if k in TRAPFRAME and k not in ("fs", "gs", "es", "ds")}


def _cr3(guest: Any) -> int | None:
    """The page-table root CPU 0 runs on (QEMU ``info registers``), PCID / no-flush bits masked.

    Only a fallback when ``KPML4phys`` cannot be read. It is a kernel root in both flows: in ddb, and in
    the panic flow's "Press a key" loop (``cngetc()`` polling in ``shutdown_panic``) or the stopped CPUs'
    ``cpustop_handler``, the CPU runs kernel code, so CR3 holds either ``kernel_pmap`` or a process
    pmap's kernel-mode root (with PTI: ``pm_cr3``, not the user ``pm_ucr3``), whose kernel half is the
    kernel's own PML4 entries: the kernel VA walk gives the same mappings."""
    with contextlib.suppress(Exception):
        m = re.search(r"CR3=([0-9a-fA-F]+)", guest.hmp("info registers"))
        if m:
            return int(m.group(1), 16) & 0x000FFFFFFFFFF000
    return None


VRING_DESC_F_INDIRECT = 4
#: descriptors this short are request headers (struct virtio_blk_outhdr, 16 bytes) or status bytes, never
#: data: a dump writes whole sectors
REQUEST_BUFFER_MAX = 16


def virtio_blk_io_ranges(guest: Any, live: Any) -> tuple[list[tuple[int, int, str]], str]:
    """Physical ranges every virtio-blk queue's I/O writes, from QEMU (``x-query-virtio*``) and the
    descriptor tables in `live`: the rings, indirect descriptor tables and the <= 16-byte request
    header/status buffers. The panic flow has no live image from before the dump, so the dump device's
    own state (which the dump I/O changes after the pages holding it were written) is named this way.
    Returns (ranges, one line for the report)."""
    import struct

    ranges: list[tuple[int, int, str]] = []
    try:
        devices = [d["path"] for d in guest.qmp("x-query-virtio") if d.get("name") == "virtio-blk"]
        for path in devices:
            nvq = int(guest.qmp("x-query-virtio-status", path=path).get("num-vqs", 1))
            for q in range(nvq):
                st = guest.qmp("x-query-virtio-queue-status", path=path, queue=q)
                num, desc = int(st.get("vring-num", 0)), int(st.get("vring-desc", 0))
                if not num or not desc:
                    continue
                where = f"{path.split('/')[3] if path.count('/') > 3 else path} queue {q}"
                ranges += [
                    (desc, 16 * num, f"virtio-blk {where} descriptor table"),
                    (int(st["vring-avail"]), 6 + 2 * num, f"virtio-blk {where} avail ring"),
                    (int(st["vring-used"]), 6 + 8 * num, f"virtio-blk {where} used ring"),
                ]
                ranges += _request_buffers(live, desc, num, where, struct)
    except Exception as exc:  # noqa: BLE001 - evidence only: without it such pages stay unexplained
        return ranges, f"dump device I/O state not read from QEMU ({type(exc).__name__}: {exc})"
    return ranges, f"dump device I/O state from QEMU: {len(ranges)} ranges (virtio-blk rings and requests)"


def _request_buffers(live: Any, desc: int, num: int, where: str, struct: Any) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    tables = [(desc, num, False)]
    while tables:
        base, n, indirect = tables.pop()
        try:
            raw = bytes(live.read(base, 16 * n))
        except Exception:  # noqa: BLE001 - a table outside the image names nothing
            continue
        for i in range(n):
            addr, length, flags, _next = struct.unpack_from("<QIHH", raw, 16 * i)
            if flags & VRING_DESC_F_INDIRECT and not indirect and 16 <= length <= 16 * 1024:
                out.append((addr, length, f"virtio-blk {where} indirect descriptor table"))
                tables.append((addr, length // 16, True))
            elif 0 < length <= REQUEST_BUFFER_MAX and addr:
                out.append((addr, length, f"virtio-blk {where} request header/status"))
    return out


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


def _ssh_session(guest: Any, prepared: Any, *, seconds: float = 120.0) -> Any:
    """An SSH session to the guest with the prepared image's key, pinning its recorded host key; retried
    while sshd/DHCP come up (the console login can be quicker than rc's sshd)."""
    from harness.ssh import HostKeyMismatch, SshError, SshSession

    if prepared is None or getattr(guest, "ssh_port", None) is None:
        raise SshError("no prepared image with our SSH key, or no SSH port forwarded to the guest")
    end = time.monotonic() + seconds
    while True:
        session = SshSession(
            "127.0.0.1", guest.ssh_port, key=prepared.ssh_private_key, pinned_host_key=prepared.host_key
        )
        try:
            return session.connect()
        except HostKeyMismatch:
            raise
        except SshError:
            if time.monotonic() > end:
                raise
            time.sleep(2.0)


def fetch_kernel_over_ssh(
    guest: Any,
    shell: Any,
    prepared: Any,
    run_dir: Path,
    progress: Progress,
    *,
    remote: str = "/boot/kernel/kernel",
    connect_seconds: float = 120.0,
) -> tuple[Path | None, str]:
    """``/boot/kernel/kernel`` of the running image over SFTP (pinned host key), before the trigger, so
    attribution by symbol and the ddb cross-checks work. Returns (path, where it came from); without SSH
    the run goes on without symbols and the report says why."""
    from harness.ssh import SshError

    # BASIC-CI may not start DHCP on its own; the console shell can (harmless when it already has an IP)
    with contextlib.suppress(Exception):
        shell.run("ifconfig vtnet0 inet | grep -q 'inet ' || dhclient vtnet0", 60.0)
    try:
        with _ssh_session(guest, prepared, seconds=connect_seconds) as ssh:
            res = ssh.fetch(remote, run_dir / "kernel", progress=True)
            ident = ssh.run("uname -v", 30.0).stdout.strip()
    except (SshError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        progress(f"no kernel file for symbols: {first}")
        return None, f"none: fetching {remote} over SSH failed: {first}"
    progress(f"fetched {remote} over SSH ({res.size >> 20} MiB)")
    return res.local, f"{remote} of the running image, fetched over SSH (pinned host key; {ident})"


def _crash_bounds(shell: Any) -> int | None:
    """``bounds - 1`` in /var/crash before the dump (None: no bounds file), for `via_savecore`."""
    r = shell.run("cat /var/crash/bounds 2>/dev/null")
    text = r.output.strip()
    return int(text) - 1 if r.status == 0 and text.isdigit() else None


def retrieve_via_savecore(
    guest: Any,
    crash: Crash,
    shell: Any,
    source: GuestSource,
    run_dir: Path,
    host_copy: Any,
    bounds_before: int | None,
    cfg: ReproConfig,
    progress: Progress,
    *,
    have_kernel: bool = False,
) -> tuple[Any, list[str]]:
    """``--retrieve ssh``: leave ddb with `reset` (panic flow: the key `cngetc()` waits for), let the
    guest reboot, let rc's savecore copy the dump to /var/crash (or run it), fetch it over SFTP.

    The host has already extracted the same dump from the dump disk while the guest was paused
    (`host_copy`); the savecore copy must hold the same payload bytes, and that is checked here.
    Verification can only use the live image taken before the reboot (the rebooted guest's memory is
    another boot), which the returned notes say.
    """
    from harness.freebsd.retrieve import via_savecore
    from harness.freebsd.session import ConsoleShell
    from harness.freebsd.stages import Stage, wait_for_stage

    if shell is None or source.prepared is None:
        raise ReproError("--retrieve ssh needs a prepared image (a bare kernel has no userland)", step="ssh")
    guest.resume()  # paused for the host extraction
    if crash.ddb is not None and crash.ddb.active:
        progress("leaving ddb with `reset` so the guest reboots and savecore runs")
        crash.ddb.reset()
    else:
        progress("pressing a key: the held kernel reboots and savecore runs")
        guest.console.send("\r")
    wait_for_stage(guest.console, [Stage.LOGIN], cfg.boot_seconds, guest=guest)
    shell = ConsoleShell(guest.console)
    shell.login(cfg.boot_seconds)
    with contextlib.suppress(Exception):
        shell.run("ifconfig vtnet0 inet | grep -q 'inet ' || dhclient vtnet0", 60.0)
    with _ssh_session(guest, source.prepared) as ssh:
        retrieved = via_savecore(
            ssh,
            run_dir / "savecore",
            dump_device=source.dump_dev,
            previous_bounds=bounds_before,
            fetch_kernel=not have_kernel,
        )
    progress(f"fetched {retrieved.vmcore} by SFTP after savecore")
    notes = [
        "retrieved by savecore + SFTP after a reboot: verified against the live image taken before the "
        "reboot (the guest's memory after the reboot is another boot, so nothing later can be compared)"
    ]
    same, detail = same_payload(retrieved.vmcore, host_copy.vmcore)
    if same is None:
        notes.append(f"savecore copy not compared with the host's extraction: {detail}")
    elif same:
        notes.append(
            f"savecore copy and the host's extraction from the dump disk hold the same payload ({detail})"
        )
    else:
        raise ReproError(
            f"savecore's {retrieved.vmcore} differs from the host's extraction {host_copy.vmcore}: {detail}",
            step="savecore + sftp",
            evidence=run_dir,
        )
    return retrieved, notes


def same_payload(a: Path, b: Path) -> tuple[bool | None, str]:
    """Whether two vmcore files hold the same dump payload (decompressed; the savecore copy may be
    .gz/.zst). (None, why) when either cannot be opened."""
    import hashlib

    from reader.errors import ReaderError
    from reader.source import open_payload

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

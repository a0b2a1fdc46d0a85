"""Verify: what the judgement needs from the frozen guest, then the judgement itself.

`capture_live` runs right after the dump while every CPU is stopped (before any retrieval can resume
or reboot the guest): the live image *after* the dump, CR3 as a fallback page-table root, and the dump
device's own I/O state named from QEMU. `judge` opens the retrieved dump with the reader and runs
`harness.verify.engine.verify_dump` against the live images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import reader
from harness.run.boot import Booted
from harness.run.context import RunContext
from harness.run.dump import Crash
from harness.verify.compression import compression_facts
from harness.verify.dumpdevice import DumpDeviceState
from harness.verify.engine import TRAPFRAME, verify_dump
from harness.verify.report import VerificationReport

#: what the report says about where the dump came from, by retrieval
RETRIEVAL_LABELS = {"disk": "host (dump disk)", "ssh": "savecore + SFTP"}


@dataclass
class LiveAfter:
    """Guest state read while every CPU is stopped after the dump."""

    image: Any  # harness.vm.memory.PhysicalMemoryImage
    path: Path
    cr3: int | None = None
    device_state: DumpDeviceState | None = None


def capture_live(ctx: RunContext, booted: Booted, crash: Crash, *, name: str = "live-after.raw") -> LiveAfter:
    ctx.enter("live image (after dump)")
    path = ctx.dir / name
    after = booted.guest.memory_image(path)
    cr3 = _cr3(booted.guest)
    # the dump device's own I/O state: QEMU's facts about its rings, saved beside the images so that
    # `fbsd-hil verify` can judge the same dump offline (harness.verify.dumpdevice explains the bytes)
    device_state = DumpDeviceState.from_qemu(booted.guest.qmp)
    if (swap := booted.source.swap_partition) is not None:  # dump writes stay inside the partition
        device_state = dataclasses.replace(device_state, dump_extent=(swap.offset, swap.offset + swap.size))
    device_state.write(ctx.dir / _state_name(name))
    crash.notes.append(device_state.describe())
    return LiveAfter(after, path, cr3, device_state)


def _state_name(live_name: str) -> str:
    """``live-after.raw`` -> ``dump-device-state.json``, ``live-after-2.raw`` -> ``...-state-2.json``."""
    m = re.search(r"(-\d+)\.raw$", live_name)
    return f"dump-device-state{m.group(1) if m else ''}.json"


@contextlib.contextmanager
def opened_dump(ctx: RunContext, vmcore: Path, kernel: Path | None) -> Iterator[Any]:
    """The retrieved dump, opened once for everything that judges it (a compressed one is decoded
    once): the verification and the in-guest witness."""
    ctx.enter("verify")
    with reader.open_vmcore(vmcore, kernel=kernel) as vm:
        yield vm


def judge(
    ctx: RunContext,
    crash: Crash,
    live: LiveAfter,
    vm: Any,
    vmcore: Path,
    kernel: Path | None,
    kernel_source: str,
    header: dict[str, Any] | None = None,
) -> VerificationReport:
    """Verify the open dump `vm` (the file `vmcore`, from `opened_dump`) against the live images; the
    report is decided but not yet written. `header`: the kerneldumpheader when the dump was extracted
    from the dump device (compressed-dump checks)."""
    values = crash.values
    ddb_regs = _trapframe_registers(crash.registers) if crash.registers else None
    if kernel is None:  # no symbols: the reader cannot locate what ddb printed
        values, ddb_regs = {}, None
    kw = dict(
        before=crash.before,
        kernel=kernel,
        kernel_debug=ctx.cfg.kernel_debug,
        ddb_values=values,
        ddb_registers=ddb_regs,
        timings=ctx.timings,
        flow=crash.choice.flow.value,
        device_state=live.device_state,
    )
    report = verify_dump(vm, live.image, pml4_pa=None, **kw)
    if any("cannot walk the live kernel page tables" in e for e in report.errors) and live.cr3:
        report = verify_dump(vm, live.image, pml4_pa=live.cr3, **kw)
    facts, checks = compression_facts(vm, vmcore, header, getattr(crash.result, "dump_mb", None))
    if facts is not None:
        report.compression = facts.to_dict()
        report.crosschecks.extend(checks)
        report.notes.append(facts.describe())
        report.decide()
    report.kernel_source = kernel_source or "none"
    report.retrieval = RETRIEVAL_LABELS.get(ctx.cfg.retrieve, ctx.cfg.retrieve)
    report.notes.extend(crash.notes)
    if kernel is None:
        report.notes.append(
            "no kernel file: no attribution by symbol and no ddb cross-checks "
            "(the kernel could not be fetched from the guest)"
        )
    return report


def _trapframe_registers(regs: dict[str, int]) -> dict[str, int]:
    """The registers `show registers` prints that live in the trap frame (segment names differ)."""
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

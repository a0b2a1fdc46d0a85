"""Verify: what the judgement needs from the frozen guest, then the judgement itself.

`capture_live` runs right after the dump while every CPU is stopped (before any retrieval can resume
or reboot the guest): the live image *after* the dump, CR3 as a fallback page-table root, and the dump
device's own I/O state named from QEMU. `judge` opens the retrieved dump with the reader and runs
`harness.verify.engine.verify_dump` against the live images.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import reader
from harness.run.boot import Booted
from harness.run.context import RunContext
from harness.run.dump import Crash
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
    io_ranges: list[tuple[int, int, str]] = field(default_factory=list)


def capture_live(ctx: RunContext, booted: Booted, crash: Crash, *, name: str = "live-after.raw") -> LiveAfter:
    ctx.enter("live image (after dump)")
    path = ctx.dir / name
    after = booted.guest.memory_image(path)
    cr3 = _cr3(booted.guest)
    # the dump device's own I/O state (rings, request header/status: FreeBSD's vtblk sets the status
    # byte to -1 before each request, so a dumped copy can hold a value neither live image shows),
    # named from QEMU in both flows
    io_ranges, io_note = virtio_blk_io_ranges(booted.guest, after)
    crash.notes.append(io_note)
    return LiveAfter(after, path, cr3, io_ranges)


def judge(
    ctx: RunContext, crash: Crash, live: LiveAfter, vmcore: Path, kernel: Path | None, kernel_source: str
) -> VerificationReport:
    """Verify `vmcore` against the live images; the report is decided but not yet written."""
    ctx.enter("verify")
    values = crash.values
    ddb_regs = _trapframe_registers(crash.registers) if crash.registers else None
    if kernel is None:  # no symbols: the reader cannot locate what ddb printed
        values, ddb_regs = {}, None
    kw = dict(
        before=crash.before,
        kernel=kernel,
        ddb_values=values,
        ddb_registers=ddb_regs,
        timings=ctx.timings,
        flow=crash.choice.flow.value,
        io_ranges=live.io_ranges,
    )
    with reader.open_vmcore(vmcore, kernel=kernel) as vm:
        report = verify_dump(vm, live.image, pml4_pa=None, **kw)
        if any("cannot walk the live kernel page tables" in e for e in report.errors) and live.cr3:
            report = verify_dump(vm, live.image, pml4_pa=live.cr3, **kw)
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


# The dump device's I/O state, read from QEMU. Moved here unchanged from harness/verify/pipeline.py;
# another branch replaces both functions with harness.verify.dumpdevice (swap the call in capture_live).
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

"""Why a kernel stayed silent after GRUB's hand-over, said in one line from the evidence at hand.

A kernel that dies before its console exists leaves three witnesses: QEMU (did the CPU triple-fault
or reset, and when), the GRUB ISO's record of what it booted (``boot.iso.json`` from
`images.grub_iso.build_kernel_iso`: kernel path, kernel environment, the module type GRUB's
``kfreebsd`` gives an amd64 kernel) and the kernel file itself (`harness.freebsd.kernelfile`: its
``__FreeBSD_version`` and which preload module types it looks its metadata up by). `explain_silence`
puts them together; `wait_for_stage` uses it when GRUB handed over and nothing came after.

QEMU only logs a triple fault with ``-d cpu_reset`` (CPU_LOG_RESET), and SeaBIOS only talks on COM1
with ``-machine graphics=off`` (its serial console; the FreeBSD 12.1 transcripts were recorded that way):
guests that boot bare kernels add `HANDOVER_QEMU_ARGS` to their ``GuestSpec.extra_qemu_args``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.freebsd.kernelfile import KernelFile, KernelFileError, inspect_kernel_file

#: QEMU logs "Triple fault" (and the CPU state at every reset) into the domain log; SeaBIOS prints its
#: banner and "No bootable device" / "Boot failed: ..." on COM1 (the boot failure patterns see them)
HANDOVER_QEMU_ARGS = ("-d", "cpu_reset", "-machine", "graphics=off")
_TRIPLE = re.compile(r"^Triple fault\s*$", re.M)
_KILLED_BY_LIBVIRT = re.compile(r"terminating on signal 15 from pid \d+ \(([^)]*libvirtd[^)]*)\)")
_REGISTER_DUMP = re.compile(
    r"^(?:CPU Reset \(CPU \d+\)|[A-Z]{2,3}\s*=[0-9a-f]|R[A-Z0-9]{1,2}\s*=|RIP=|EAX=|EIP="
    r"|[ECSDFG]S =|LDT=|TR =|GDT=|IDT=|CR0=|DR[0-7]=|CCS=|EFER=|FCW=|FPR\d|XMM\d|YMM\d|MXCSR=)"
)
ELF_KERNEL = "elf kernel"
ELF64_KERNEL = "elf64 kernel"


@dataclass(frozen=True)
class QemuVerdict:
    """What QEMU's log says happened to the CPU after the hand-over."""

    triple_faults: int
    stopped_by_libvirt: bool  # libvirtd killed QEMU (on_reboot=destroy turns a reset into a stop)
    logged_resets: bool  # the log carries -d cpu_reset output (so "no triple fault" means something)

    def describe(self) -> str:
        if self.triple_faults:
            what = "QEMU logged a triple fault (CPU reset)"
            if self.triple_faults > 1:
                what += f" {self.triple_faults} times"
            return what
        if self.stopped_by_libvirt:
            return "libvirt stopped the guest (a guest reset under on_reboot=destroy)"
        if self.logged_resets:
            return "QEMU logged no triple fault"
        return "QEMU's log says nothing about the CPU (no -d cpu_reset)"


def qemu_verdict(log: str) -> QemuVerdict:
    """Read the QEMU domain log (only the last start of the domain counts)."""
    start = log.rfind("starting up libvirt")
    log = log[start:] if start >= 0 else log
    return QemuVerdict(
        triple_faults=len(_TRIPLE.findall(log)),
        stopped_by_libvirt=bool(_KILLED_BY_LIBVIRT.search(log)),
        logged_resets="CPU Reset (CPU" in log,
    )


def condensed_log(log: str, lines: int = 12) -> str:
    """The QEMU log tail without the ``-d cpu_reset`` register dumps (the verdict summarises them)."""
    kept = [line for line in log.splitlines() if not _REGISTER_DUMP.match(line.strip())]
    return "\n".join(kept[-lines:])


def iso_record(guest) -> dict | None:
    """The ``<iso>.json`` that `build_kernel_iso` wrote beside the guest's boot ISO, if any."""
    iso = getattr(getattr(getattr(guest, "spec", None), "boot", None), "iso", None)
    if iso is None:
        return None
    try:
        return json.loads(Path(str(iso) + ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _console_kenv(record: dict | None) -> bool | None:
    """Whether the ISO's grub.cfg gives the kernel a serial console (None: no record)."""
    if not record:
        return None
    return "kFreeBSD.hw.uart.console=" in (record.get("grub_cfg") or "") or "hw.uart.console" in (
        record.get("kenv") or {}
    )


def _likely_cause(kernel: KernelFile | None, record: dict | None, verdict: QemuVerdict | None) -> str:
    faulted = verdict is not None and bool(verdict.triple_faults or verdict.stopped_by_libvirt)
    grub_type = record.get("amd64_kernel_type") if record else None
    fixes = record.get("grub_fixes") if record else None
    if faulted and fixes is not None and "relocator" not in fixes:
        return (
            "likely cause: this ISO's GRUB modules lack the relocator fix (Debian's GRUB 2.06 jumps to "
            "entry << 32 and triple-faults every amd64 kernel); build it with fbsd-hil's fixes (the default)"
        )
    if kernel is not None and kernel.accepts_only_elf_kernel and grub_type == ELF64_KERNEL:
        return (
            f'likely cause: the kernel finds its boot metadata only under the module type "{ELF_KERNEL}" '
            f'(FreeBSD 13+, preload_initkmdp()) but this GRUB registers amd64 kernels as "{ELF64_KERNEL}", '
            "so it panics before its console exists; boot it through fbsd-hil's fixed GRUB modules "
            "(the default; FBSD_HIL_GRUB_FIXES must include kernel-type)"
        )
    if faulted:
        hint = f'GRUB registered it as "{grub_type}"' if grub_type else "GRUB's kernel type string is unknown"
        return (
            "likely cause: the kernel faulted before its console existed (early boot: metadata, memory map, "
            f"page tables); {hint}; the kernel file and the QEMU log below are the evidence"
        )
    if _console_kenv(record) is False:
        return (
            "likely cause: no serial console: a kernel booted by GRUB only uses COM1 when its environment "
            "says so; add hw.uart.console=io:1016,br:115200 (what loader(8) sets)"
        )
    return (
        "likely cause unknown: a kernel booted by GRUB only uses COM1 with hw.uart.console=io:1016,br:115200 "
        "(fbsd-hil's ISOs set it); otherwise it hangs early or has no uart console driver"
    )


def explain_silence(
    *,
    waiting_for: str,
    seconds: float,
    guest=None,
    handover_at: float | None = None,
    closed: str | None = None,
    kernel_path: Path | str | None = None,
    log: str | None = None,
    now: float | None = None,
    grub_boots: int = 1,
) -> str:
    """The message for "GRUB handed over and the kernel printed nothing": first line = what happened and
    the likely cause; then the evidence (the kernel file, the ISO record, QEMU)."""
    now = time.monotonic() if now is None else now
    record = iso_record(guest) if guest is not None else None
    if kernel_path is None and record:
        kernel_path = record.get("kernel")
    if log is None and guest is not None and hasattr(guest, "log_tail"):
        log = _settled_log(guest, closed is not None)
    verdict = qemu_verdict(log) if log else None
    kernel: KernelFile | None = None
    kernel_note = None
    if kernel_path:
        try:
            kernel = inspect_kernel_file(kernel_path)
        except KernelFileError as exc:
            kernel_note = str(exc)
        except Exception as exc:  # noqa: BLE001 - evidence only: never hide the boot failure behind it
            kernel_note = f"{kernel_path}: could not be read as an ELF kernel ({type(exc).__name__}: {exc})"
    after = ""
    if handover_at is not None:
        dt = now - handover_at
        after = f" {dt:.2f} s after the hand-over" if dt < 1 else f" {dt:.1f} s after the hand-over"
    end = f"before the console closed ({closed})" if closed else f"in {seconds:.0f} s"
    if verdict is not None and (verdict.triple_faults or verdict.stopped_by_libvirt):
        happened = f"{verdict.describe()}{after}"
    elif closed:
        happened = f"the console closed{after}"
    else:
        happened = f"silent{after}" if after else "silent"
    lines = [
        f"GRUB handed over but the kernel printed nothing {end} (waiting for {waiting_for}): {happened}; "
        + _likely_cause(kernel, record, verdict)
    ]
    if grub_boots > 1:
        lines.append(f"GRUB started {grub_boots} times: the guest reset and booted again")
    if kernel is not None:
        lines.append("kernel file: " + kernel.describe())
    elif kernel_note:
        lines.append("kernel file: " + kernel_note)
    if record:
        fixes = ", ".join(record.get("grub_fixes") or []) or "none"
        console = (
            "sets hw.uart.console=io:1016,br:115200" if _console_kenv(record) else "sets no hw.uart.console"
        )
        lines.append(
            f"GRUB ISO: kernel environment {console}; amd64 kernels registered as "
            f"{record.get('amd64_kernel_type')!r}; GRUB fixes applied: {fixes}"
        )
    if verdict is not None:
        lines.append("QEMU: " + verdict.describe())
    if log:
        lines.append("--- QEMU log tail (register dumps left out) ---\n" + condensed_log(log))
    return "\n".join(lines)


def _settled_log(guest, closed: bool) -> str:
    """The QEMU log; after the console closed, wait a moment for QEMU's last words to be flushed."""
    deadline = time.monotonic() + (2.0 if closed else 0.0)
    while True:
        try:
            log = guest.log_tail()
        except Exception as exc:  # noqa: BLE001 - evidence only
            return f"(QEMU log unavailable: {exc})"
        if not closed or _TRIPLE.search(log) or _KILLED_BY_LIBVIRT.search(log) or time.monotonic() > deadline:
            return log
        time.sleep(0.1)

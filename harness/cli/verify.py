"""`fbsd-hil verify`: verify a kernel dump against a live memory image again, offline, booting nothing.

    fbsd-hil verify VMCORE --live IMAGE [--before IMAGE] --kernel KERNEL [--report R.json]
    fbsd-hil verify RUN_DIR            (a `repro` run's artifacts directory)

Why: a kernel developer iterating on a dump bug, or on the verifier, should not wait for a guest to
boot and dump each time. Given the files `repro` kept (the vmcore, the live images of guest RAM taken
in ddb after and before `dump`, the kernel), the same engine (`harness.verify.engine.verify_dump`) gives
the same report. Exit status as `repro`: 0 verified, 1 verification failed, 2 could not verify (bad
input: one line names the file and what was expected).

A live image is guest RAM as `repro` saves it: the RAM ranges of the QEMU machine type back to back
(one flat range below 3.5 GiB on ``pc``; `harness.vm.memory.ram_ranges`), so byte N of a small image is
physical address N. A run directory names its machine type in ``domain.xml``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROG = "fbsd-hil verify"
#: what `repro` leaves in a run directory (harness/run/evidence.py)
RUN_LIVE_AFTER = "live-after.raw"
RUN_LIVE_BEFORE = "live-before.raw"
RUN_REPORT = "report.json"
RUN_DEVICE_STATE = "dump-device-state.json"
PAGE_SIZE = 4096


class BadInput(Exception):
    """Input that cannot be verified: the message is the one line the user sees (exit status 2)."""


@dataclass
class VerifyInputs:
    """Everything one offline verification needs, resolved from the command line or a run directory."""

    vmcore: Path
    live: Path
    before: Path | None = None
    kernel: Path | None = None
    kernel_debug: Path | None = None
    machine: str = "pc"
    flow: str = "ddb"
    pml4_pa: int | None = None
    device_state: Path | None = None
    strict: bool = False
    zero_fill: bool = False
    notes: list[str] = field(default_factory=list)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify",
        help="verify a dump against live memory images again, offline (a run's directory or your files)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        type=Path,
        metavar="VMCORE|RUN_DIR",
        help="the dump file (vmcore, raw or compressed), or a `repro` artifacts directory to take "
        "the dump, live images, kernel and flow from",
    )
    p.add_argument(
        "--live",
        type=Path,
        metavar="IMAGE",
        help=f"live image of guest RAM taken after the dump, in ddb (a run's {RUN_LIVE_AFTER})",
    )
    p.add_argument(
        "--before",
        type=Path,
        metavar="IMAGE",
        help=f"live image taken right before the dump (a run's {RUN_LIVE_BEFORE}); excuses pages that "
        "changed while dumping",
    )
    p.add_argument(
        "--kernel",
        type=Path,
        metavar="PATH",
        help="the kernel ELF the dump was made by (symbols for attribution; must match the dump)",
    )
    p.add_argument(
        "--kernel-debug",
        type=Path,
        metavar="PATH",
        help="the kernel's DWARF (kernel.debug) when it is not beside the kernel: names the dump device's "
        "driver state field by field",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="also write the JSON report here (never overwritten)",
    )
    p.add_argument(
        "--flow",
        choices=("ddb", "panic"),
        default=None,
        help="how the dump was made: ddb's `dump` (default) or the kernel's own dump on panic "
        "(default for a run directory: the flow its report.json names)",
    )
    p.add_argument(
        "--machine",
        choices=("pc", "q35"),
        default=None,
        help="QEMU machine type the live images come from: their RAM layout (default: a run's "
        "domain.xml, else pc)",
    )
    p.add_argument(
        "--pml4",
        type=_address,
        metavar="PA",
        default=None,
        help="physical address of the kernel's top page table (CR3) when neither the dump header nor "
        "the KPML4phys symbol gives it",
    )
    p.add_argument(
        "--device-state",
        type=Path,
        metavar="FILE",
        default=None,
        help=f"facts about the dump device saved by repro ({RUN_DEVICE_STATE} in a run directory): "
        "names the device's own I/O memory in the report",
    )
    p.add_argument(
        "--zero-fill",
        action="store_true",
        help="read pages past the end of a dump file that was cut short as zeros (else: exit 2)",
    )
    p.add_argument("--strict", action="store_true", help="also fail on mapped pages the kernel did not dump")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    p.set_defaults(func=run)


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r} (want e.g. 0x27be000)") from None
    if value < 0 or value % PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"{text} is not a page-aligned physical address")
    return value


# ---------------------------------------------------------------------------------------------- inputs
def _file(path: Path, what: str) -> Path:
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist")
    if not path.is_file():
        raise BadInput(f"{what} {path} is not a file")
    return path.resolve()


def inputs_from_args(args: argparse.Namespace) -> VerifyInputs:
    """Resolve the command line (a dump file, or a run directory) into `VerifyInputs`, or `BadInput`."""
    if args.source.is_dir():
        found = inputs_from_run_dir(args.source)
        if args.live is not None:
            found.live = _file(args.live, "live image")
        if args.before is not None:
            found.before = _file(args.before, "before image")
        if args.kernel is not None:
            found.kernel = _file(args.kernel, "kernel")
    else:
        if args.live is None:
            raise BadInput(
                f"{args.source} is a dump file: give the live image with --live IMAGE "
                "(or give a repro run directory instead)"
            )
        found = VerifyInputs(
            vmcore=_file(args.source, "dump"),
            live=_file(args.live, "live image"),
            before=_file(args.before, "before image") if args.before is not None else None,
            kernel=_file(args.kernel, "kernel") if args.kernel is not None else None,
        )
    if args.flow is not None:
        found.flow = args.flow
    if args.machine is not None:
        found.machine = args.machine
    if args.device_state is not None:
        found.device_state = _file(args.device_state, "device state file")
    if args.kernel_debug is not None:
        found.kernel_debug = _file(args.kernel_debug, "kernel debug file")
    found.pml4_pa = args.pml4
    found.strict = args.strict
    found.zero_fill = args.zero_fill
    return found


def inputs_from_run_dir(run_dir: Path) -> VerifyInputs:
    """What a `repro` run left: its report names the dump and kernel; the live images have fixed names."""
    run_dir = run_dir.resolve()
    report = _read_json(run_dir / RUN_REPORT)
    config = _read_json(run_dir / "config.json")
    if config.get("textdump") or report.get("dump_kind") == "text":
        raise BadInput(
            f"run directory {run_dir} holds a textdump (repro --textdump): no memory pages to verify "
            f"against live images; its member checks are in {run_dir / RUN_REPORT}"
        )
    vmcore = _existing(report.get("dump")) or _newest_vmcore(run_dir)
    if vmcore is None:
        raise BadInput(
            f"run directory {run_dir} holds no dump (no {RUN_REPORT} naming one, no crash/vmcore.N)"
        )
    live = run_dir / RUN_LIVE_AFTER
    if not live.is_file():
        raise BadInput(
            f"run directory {run_dir} has no {RUN_LIVE_AFTER}: repro deletes the live images after a "
            "passed verification unless run with --keep-images"
        )
    before = run_dir / RUN_LIVE_BEFORE
    kernel = (
        _existing(report.get("kernel")) or _existing(run_dir / "kernel") or _existing(config.get("kernel"))
    )
    found = VerifyInputs(
        vmcore=vmcore,
        live=live,
        before=before if before.is_file() else None,
        kernel=kernel,
        kernel_debug=_existing(config.get("kernel_debug")),
        machine=_machine_of(run_dir / "domain.xml") or "pc",
        flow=report.get("flow") if report.get("flow") in ("ddb", "panic") else "ddb",
    )
    state = run_dir / RUN_DEVICE_STATE
    if state.is_file():
        found.device_state = state
    return found


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path}: not readable as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _existing(value: Any) -> Path | None:
    if not value or not isinstance(value, str | Path):
        return None
    path = Path(value)
    return path.resolve() if path.is_file() else None


def _newest_vmcore(run_dir: Path) -> Path | None:
    def number(p: Path) -> int:
        m = re.search(r"vmcore\.(\d+)", p.name)
        return int(m.group(1)) if m else -1

    found = [p for p in (run_dir / "crash").glob("vmcore.*") if p.is_file() and number(p) >= 0]
    return max(found, key=number).resolve() if found else None


def _machine_of(domain_xml: Path) -> str | None:
    try:
        text = domain_xml.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"<type\b[^>]*\bmachine=['\"]([^'\"]+)['\"]", text)
    if not m:
        return None
    machine = m.group(1)
    return "q35" if "q35" in machine else "pc"


# ---------------------------------------------------------------------------------------------- checks
def live_layout(path: Path, machine: str, what: str) -> list[tuple[int, int, int]]:
    """[(pa, size, file offset)] of a live image of `machine`'s RAM; its size must be whole pages."""
    from harness.vm.memory import image_layout, ram_ranges

    size = path.stat().st_size
    if size == 0 or size % PAGE_SIZE:
        raise BadInput(f"{what} {path} is {size} bytes: a live image of guest RAM is a whole number of pages")
    return image_layout(ram_ranges(machine, size))


def check_dump_fits(vm: Any, layout: list[tuple[int, int, int]], path: Path, what: str) -> None:
    """Every page the dump holds must lie in the live image: else it is another guest's image."""
    frames = vm.phys_page_frames()
    if len(frames) == 0:
        raise BadInput(f"dump {vm.path} holds no physical pages")
    top = int(frames.max()) * PAGE_SIZE
    if not any(pa <= top and top + PAGE_SIZE <= pa + size for pa, size, _ in layout):
        end = max(pa + size for pa, size, _ in layout)
        raise BadInput(
            f"{what} {path} covers guest RAM up to {end:#x}, but the dump holds a page at {top:#x}: "
            "not an image of the guest that wrote this dump (other file, or other --memory)"
        )


#: what a kernel's own variables read in a dump of that kernel: (symbol, check, expectation)
KERNEL_PROBES: tuple[tuple[str, str], ...] = (
    ("version", "a string starting with 'FreeBSD'"),
    ("ostype", "the string 'FreeBSD'"),
    ("hz", "a clock rate between 1 and 100000"),
)


def check_kernel_matches(vm: Any, kernel: Path | None) -> str | None:
    """The kernel must be the one that wrote the dump: one of its variables (``version``, else
    ``ostype``, else ``hz``), read from the dump at the kernel's own symbol address, must hold what that
    variable always holds. Another build's addresses read unmapped memory or something else. Returns a
    note when the kernel names none of them (nothing to check)."""
    from reader.errors import ReaderError

    if kernel is None:
        return None
    symbols = vm.kernel
    for name, expectation in KERNEL_PROBES:
        if name not in symbols:
            continue
        va = None
        try:
            va = vm.symbol(name)
            if name == "hz":
                value: Any = vm.read_int(va, 4, signed=True)
                ok = 0 < value <= 100000
            else:
                value = vm.read_cstring(va, 256)
                ok = value.startswith("FreeBSD")
        except ReaderError as exc:
            where = f" at {va:#x}" if va is not None else ""
            raise BadInput(
                f"kernel {kernel} does not match dump {vm.path}: its {name!r}{where} cannot be read from "
                f"the dump ({_one_line(exc)})"
            ) from exc
        if not ok:
            raise BadInput(
                f"kernel {kernel} does not match dump {vm.path}: its {name!r} at {va:#x} reads "
                f"{value!r} in the dump, expected {expectation}"
            )
        return None
    names = ", ".join(n for n, _ in KERNEL_PROBES)
    return f"kernel {kernel} has none of {names}: not checked against the dump"


def device_state_arguments(path: Path | None) -> tuple[dict[str, Any], list[str]]:
    """``dump-device-state.json`` (QEMU's facts about the dump device, saved by `repro`) as the
    ``device_state=`` argument of `verify_dump`, and a note for the report. A file that is not such a
    state is bad input (one line naming it), never silently ignored."""
    from harness.verify.dumpdevice import DumpDeviceState

    if path is None:
        return {}, []
    try:
        state = DumpDeviceState.read(path)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    return {"device_state": state}, [f"dump device state from {path}"]


# ---------------------------------------------------------------------------------------------- run
def verify(inputs: VerifyInputs) -> Any:
    """Run `verify_dump` on `inputs` as the repro pipeline's verify step does; returns the report."""
    import reader
    from harness.verify.compression import compression_facts
    from harness.verify.engine import verify_dump
    from harness.verify.live import LiveMemory

    live_layout_ = live_layout(inputs.live, inputs.machine, "live image")
    before_layout = None
    if inputs.before is not None:
        before_layout = live_layout(inputs.before, inputs.machine, "before image")
        if inputs.before.stat().st_size != inputs.live.stat().st_size:
            raise BadInput(
                f"before image {inputs.before} is {inputs.before.stat().st_size} bytes, the live image "
                f"{inputs.live} {inputs.live.stat().st_size}: not images of the same guest"
            )
    extra, notes = device_state_arguments(inputs.device_state)
    t = time.monotonic()
    with reader.open_vmcore(inputs.vmcore, kernel=inputs.kernel, zero_fill=inputs.zero_fill) as vm:
        check_dump_fits(vm, live_layout_, inputs.live, "live image")
        if (note := check_kernel_matches(vm, inputs.kernel)) is not None:
            notes.append(note)
        live = LiveMemory(live_layout_, path=inputs.live)
        before = LiveMemory(before_layout, path=inputs.before) if before_layout is not None else None
        try:
            report = verify_dump(
                vm,
                live,
                kernel=inputs.kernel,
                kernel_debug=inputs.kernel_debug,
                before=before,
                pml4_pa=inputs.pml4_pa,
                strict=inputs.strict,
                flow=inputs.flow,
                **extra,
            )
        finally:
            live.close()
            if before is not None:
                before.close()
        # a gzip/zstd dump: kind and sizes (the dump device's header is not among a run's files)
        facts, checks = compression_facts(vm, inputs.vmcore, None, None)
    if facts is not None:
        report.compression = facts.to_dict()
        report.crosschecks.extend(checks)
        report.notes.append(facts.describe())
    report.timings["verify"] = round(time.monotonic() - t, 3)
    report.kernel_source = str(inputs.kernel) if inputs.kernel else "none"
    report.retrieval = "offline (fbsd-hil verify)"
    report.notes.append(
        "verified offline by `fbsd-hil verify`: no ddb cross-checks and no hypervisor view of the "
        "dump device beyond what the files hold"
    )
    if inputs.kernel is None:
        report.notes.append("no kernel file: no attribution by symbol")
    report.notes.extend(notes)
    report.notes.extend(inputs.notes)
    if inputs.pml4_pa is None and any("cannot walk the live kernel page tables" in e for e in report.errors):
        report.notes.append("give the page-table root with --pml4 PA (CR3 of the stopped guest)")
    report.decide()
    return report


def run(args: argparse.Namespace) -> int:
    from harness.verify.live import LiveMemoryError
    from reader.errors import ReaderError

    try:
        if args.report is not None and args.report.exists():
            raise BadInput(f"{args.report} exists; refusing to overwrite it")
        inputs = inputs_from_args(args)
        report = verify(inputs)
    except BadInput as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except (ReaderError, LiveMemoryError, OSError) as exc:
        print(f"{PROG}: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.report is not None:
        try:
            report.write(args.report)
        except OSError as exc:
            print(f"{PROG}: cannot write the report: {_one_line(exc)}", file=sys.stderr)
            return 2
    print(report.to_json() if args.json else report.summary())
    return 0 if report.passed else 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""`fbsd-hil doctor [--fix] [--state-file F] [--stop]` (standard library only, see harness.vm.doctor)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check (and --fix) host readiness: packages, /dev/kvm, virtlogd/libvirtd, KVM probe, binding",
        description=(
            "Check what real libvirt/QEMU guests need on this host. With --fix (as root or with "
            "passwordless sudo) install missing Debian packages, fix /dev/kvm permissions, start "
            "virtlogd/libvirtd and install the libvirt Python binding into this interpreter's environment."
        ),
    )
    p.add_argument("--fix", action="store_true", help="repair what is missing instead of only reporting")
    p.add_argument(
        "--state-file",
        type=Path,
        metavar="F",
        help="record daemons started by --fix here; `--stop --state-file F` stops exactly those",
    )
    p.add_argument("--stop", action="store_true", help="stop the daemons recorded in --state-file, then exit")
    p.add_argument("--no-kvm-probe", action="store_true", help="skip booting a probe guest under KVM")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from harness.vm import doctor

    if args.stop:
        if args.state_file is None:
            print("fbsd-hil doctor --stop needs --state-file F (what an earlier --fix recorded)")
            return 2
        report = doctor.Report()
        doctor.stop_started(args.state_file, report)
        return 1 if report.problems else 0
    report = doctor.run_doctor(fix=args.fix, state_file=args.state_file, probe_kvm=not args.no_kvm_probe)
    if report.problems:
        print(f"doctor: {len(report.problems)} problem(s) left; see PROBLEM lines above")
        return 1
    print("doctor: host ready")
    return 0

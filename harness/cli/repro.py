"""`fbsd-hil repro`: reproduce a kernel dump by hand and prove it right against live memory.

Boots a FreeBSD guest (a kernel file you built, an image, or an official release), enters ddb, dumps,
retrieves the dump from the dump disk, verifies it page by page against the guest's physical memory
and prints the summary. Exit status 0 only when verification passed; 1 when it failed; 2 when a step
could not be carried out (one line says which, and where the evidence was saved).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TRIGGERS = ("sysctl", "nmi", "break", "alt-break", "panic")


def _kenv(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item or item.startswith("="):
            raise argparse.ArgumentTypeError(f"--kenv wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a whole number of MiB, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"want at least 1 MiB, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "repro",
        help="boot FreeBSD, enter ddb, dump, retrieve and verify the dump against live memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--image", type=Path, metavar="PATH", help="FreeBSD disk image (raw/qcow2; never written)"
    )
    src.add_argument("--release", metavar="X.Y", help="official FreeBSD release (downloaded and cached)")
    src.add_argument(
        "--kernel", type=Path, metavar="PATH", help="a FreeBSD kernel file, booted from a GRUB ISO"
    )
    src.add_argument(
        "--from-saved-boot",
        type=Path,
        metavar="DIR",
        help="restore a kernel booted and saved by --save-boot instead of booting (kernel, memory, kenv "
        "as saved)",
    )
    p.add_argument(
        "--save-boot",
        type=Path,
        metavar="DIR",
        help="with --kernel: boot to root_wait, save the guest into DIR (new) and stop; runs from it start "
        "in about a second (--from-saved-boot DIR)",
    )
    p.add_argument(
        "--root-image",
        type=Path,
        metavar="IMG",
        help="with --kernel: a UFS root image loaded as the kernel's md root (type=mfs_root) and booted "
        "single-user; its shell runs the sysctl/panic triggers and dumpon (the file is never written)",
    )
    p.add_argument(
        "--kenv", action="append", default=[], metavar="K=V", help="kernel environment (repeatable)"
    )
    p.add_argument(
        "--force-kernel",
        action="store_true",
        help="boot a --kernel file that does not look like an amd64 FreeBSD kernel (no FreeBSD ABI note)",
    )
    p.add_argument("--memory", type=int, default=None, metavar="MiB", help="guest memory (default 512)")
    p.add_argument(
        "--dump-disk-mib",
        type=_positive_int,
        default=None,
        metavar="MiB",
        help="dump disk size (default: memory + 128 MiB, room for a full dump)",
    )
    p.add_argument(
        "--device",
        choices=("disk", "swap"),
        default="disk",
        help="disk: dump onto the raw dump disk (default); swap: give the dump disk a GPT and dump onto its "
        "freebsd-swap partition (`dumpon /dev/vtbd0p2`, with --root-image), read from that partition",
    )
    p.add_argument(
        "--swap-mib",
        type=_positive_int,
        default=None,
        metavar="MiB",
        help="with --device swap: the swap partition's size (default: what the dump disk leaves)",
    )
    p.add_argument("--vcpus", type=int, default=None, help="guest CPUs (default 1)")
    p.add_argument("--minidump", choices=("1", "0"), default=None, help="1: minidump (default), 0: full dump")
    p.add_argument(
        "--compression",
        choices=("none", "gzip", "zstd"),
        default="none",
        help="gzip (`dumpon -z`) or zstd (`dumpon -Z`) kernel dump compression, set in the guest's shell "
        "(an image, or --kernel with --root-image); the reader decompresses before verifying",
    )
    p.add_argument(
        "--trigger",
        choices=TRIGGERS,
        default=None,
        help="how to enter ddb (default nmi; sysctl/panic need a shell: an image, or --kernel with "
        "--root-image)",
    )
    p.add_argument(
        "--dump-twice",
        action="store_true",
        help="a minidump, then a full dump in the same boot (see --dump-twice-via); both verified "
        "(report.json, report-2.json)",
    )
    p.add_argument(
        "--dump-twice-via",
        choices=("auto", "ddb", "sysctl"),
        default="auto",
        help="with --dump-twice, how minidumps are switched off between the dumps: ddb (`write/l "
        "do_minidump 0` in the same session), sysctl (`c` back to the shell, `sysctl debug.minidump=0`, "
        "`sysctl debug.kdb.enter=1`, `dump`); auto: sysctl where the guest has a shell",
    )
    p.add_argument(
        "--textdump",
        action="store_true",
        help="make a textdump in ddb instead of a memory dump (show msgbuf/panic, textdump set, capture on, "
        "show panic, show registers, bt, ps, textdump dump) and check its members against the console: "
        "ddb.txt, msgbuf.txt, panic.txt, version.txt; needs only ddb (a bare kernel will do)",
    )
    p.add_argument(
        "--flow",
        choices=("auto", "ddb", "panic"),
        default="auto",
        help="auto (default): ddb if the kernel has it, else panic and let the kernel dump by itself; "
        "panic on a kernel with ddb continues from ddb so the kernel dumps on its own",
    )
    p.add_argument(
        "--retrieve",
        choices=("disk", "ssh", "savecore"),
        default="disk",
        help="disk: read the dump disk on the host (default); ssh: reboot, savecore + SFTP (images only); "
        "savecore: reboot single-user, savecore onto a UFS2 crash disk read on the host (--root-image)",
    )
    p.add_argument(
        "--report", type=Path, metavar="PATH", help="also write the JSON report here (never overwritten)"
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        metavar="DIR",
        default=Path("fbsd-hil-artifacts"),
        help="where each run keeps its files (default ./fbsd-hil-artifacts)",
    )
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="QEMU accelerator")
    p.add_argument("--libvirt-uri", default=None, help="libvirt URI (default qemu:///system)")
    p.add_argument("--keep", action="store_true", help="leave the guest running in ddb afterwards")
    p.add_argument(
        "--keep-images",
        action="store_true",
        help="keep the live memory images and the dump disk of a passing run too (a failing run keeps "
        "them; `fbsd-hil verify RUN_DIR` needs them)",
    )
    p.add_argument(
        "--kernel-debug",
        type=Path,
        metavar="PATH",
        help="the kernel's DWARF (kernel.debug) when it is not beside --kernel: names the dump device's "
        "driver state field by field",
    )
    p.add_argument("--offline", action="store_true", help="--release: use only the image cache")
    p.add_argument(
        "--boot-timeout", type=float, default=600.0, metavar="S", help="seconds to boot (default 600)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.run import ReproError, run_repro

    try:
        kenv = _kenv(args.kenv)
    except argparse.ArgumentTypeError as exc:
        print(f"fbsd-hil repro: {exc}", file=sys.stderr)
        return 2
    trigger = args.trigger or "nmi"
    if (why := _refusal(args, trigger)) is not None:
        print(f"fbsd-hil repro: {why}", file=sys.stderr)
        return 2
    try:
        cfg = _saved_boot_config(args, trigger) if args.from_saved_boot else _config(args, kenv, trigger)
    except ReproError as exc:
        print(f"fbsd-hil repro: {exc.one_line()}", file=sys.stderr)
        return 2
    if (code := _ensure_libvirt(args.libvirt_uri)) is not None:
        return code
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        if args.save_boot is not None:
            return _save_boot(cfg, args.save_boot, progress)
        outcome = run_repro(cfg, progress)
    except ReproError as exc:
        for line in _detail_lines(exc):  # the diagnosis beyond its first line; the verdict stays last
            print(f"fbsd-hil repro:   {line}", file=sys.stderr)
        print(f"fbsd-hil repro: FAILED at {exc.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (harness.util.termination)
        from harness.util.termination import describe, exit_status

        print(f"fbsd-hil repro: interrupted by {describe(exc)} (the guest was destroyed)", file=sys.stderr)
        return exit_status(exc)
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user; the cause in one line
        print(f"fbsd-hil repro: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    report = outcome.report
    if args.report is not None:
        report.write(args.report)
    reports = outcome.reports or [report]
    if args.json:
        print(report.to_json() if len(reports) == 1 else "[" + ",\n".join(r.to_json() for r in reports) + "]")
    else:
        print("\n\n".join(r.summary() for r in reports))
    print(kept_summary(outcome), file=sys.stderr)
    print(f"total: {time.monotonic() - started:.1f}s", file=sys.stderr)
    if outcome.kept:
        print(_kept_guest(outcome, cfg.retrieve), file=sys.stderr)
    return 0 if outcome.passed else 1


def _refusal(args: argparse.Namespace, trigger: str) -> str | None:
    """Why these options cannot run (one line), before anything boots; None when they can."""
    root_image = getattr(args, "root_image", None)
    if root_image is not None and args.kernel is None:
        return "--root-image goes with --kernel (the kernel that mounts it as its md root)"
    if root_image is not None and not root_image.is_file():
        return f"root image {root_image} does not exist"
    bare = (args.kernel is not None and root_image is None) or args.from_saved_boot is not None
    unsaveable = args.kernel is None or root_image is not None
    if args.save_boot is not None and (unsaveable or args.save_boot.exists()):
        return (
            f"--save-boot {args.save_boot} exists; refusing to overwrite it"
            if args.kernel is not None and root_image is None
            else "--save-boot saves a bare --kernel boot (a shell and an SSH session cannot be saved)"
        )
    fixed = [o for o, v in (("--kenv", args.kenv), ("--memory", args.memory), ("--minidump", args.minidump),
                            ("--vcpus", args.vcpus), ("--dump-disk-mib", args.dump_disk_mib),
                            ("--force-kernel", args.force_kernel or None)) if v is not None and v != []]
    if args.from_saved_boot is not None and fixed:
        return f"--from-saved-boot restores what was saved; {', '.join(fixed)} was fixed at boot"
    if bare and trigger in ("sysctl", "panic"):
        return (
            f"--trigger {trigger} runs a sysctl in a shell; a bare --kernel boot has no "
            "userland: use nmi, break or alt-break, or give a --root-image"
        )
    if getattr(args, "device", "disk") == "swap" and root_image is None:
        return (
            "--device swap runs `dumpon /dev/vtbd0p2` in a shell: it needs --kernel with --root-image "
            "(a bare kernel has no shell; an image's own swap partition is not used by this pipeline)"
        )
    if getattr(args, "swap_mib", None) is not None and getattr(args, "device", "disk") != "swap":
        return "--swap-mib sizes the swap partition of --device swap"
    if bare and args.compression != "none":
        return (
            f"--compression {args.compression} is switched on with `dumpon -z/-Z` in a shell; a bare "
            "--kernel boot has no userland: give a --root-image"
        )
    if args.kernel is not None and not args.kernel.is_file():
        return f"kernel file {args.kernel} does not exist"
    if args.image is not None and not args.image.is_file():
        return f"image {args.image} does not exist"
    if args.report is not None and args.report.exists():
        return f"{args.report} exists; refusing to overwrite it"
    if args.dump_twice and (args.minidump == "0" or args.retrieve != "disk" or args.flow == "panic"):
        return (
            "--dump-twice makes a minidump, switches minidumps off in ddb and dumps again, both read from "
            "the dump disk: it needs --minidump 1, --retrieve disk and the ddb flow"
        )
    if args.dump_twice_via == "sysctl" and (not args.dump_twice or args.from_saved_boot is not None):
        return (
            "--dump-twice-via sysctl switches minidumps off from the guest's shell between the two dumps of "
            "--dump-twice: it needs --dump-twice and a guest with a shell (not --from-saved-boot)"
        )
    if getattr(args, "textdump", False) and (args.dump_twice or args.flow == "panic"):
        return (
            "--textdump is made in ddb (`textdump dump`) and checked on its own: it goes with neither "
            "--dump-twice nor --flow panic"
        )
    if args.retrieve == "savecore" and root_image is None:
        return (
            "--retrieve savecore reboots single-user and runs the guest's savecore onto a crash disk: it "
            "needs --kernel with --root-image"
        )
    if args.retrieve == "ssh" and (args.kernel is not None or args.from_saved_boot is not None):
        return (
            "--retrieve ssh reboots into userland and runs savecore; a bare --kernel boot "
            "has no userland: use --retrieve disk, or --image/--release"
        )
    return None


def _saved_boot_config(args: argparse.Namespace, trigger: str):
    """A run from a saved boot: the kernel, its environment and memory are the saved ones."""
    from harness.run.saved_boot import SavedBoot

    return SavedBoot.load(args.from_saved_boot.resolve()).config(
        trigger=trigger,
        retrieve=args.retrieve,
        flow=None if args.flow == "auto" else args.flow,
        artifacts=args.artifacts.resolve(),
        keep=args.keep,
        keep_images=args.keep_images,
        dump_twice=args.dump_twice,
        textdump=getattr(args, "textdump", False),
    )


def _save_boot(cfg, dest: Path, progress) -> int:
    from harness.run.saved_boot import save_booted

    saved = save_booted(cfg, dest.resolve(), progress)
    print(f"booted to root_wait in {saved.boot_seconds:.1f}s; saved: fbsd-hil repro --from-saved-boot {dest}")
    return 0


def _config(args: argparse.Namespace, kenv: dict[str, str], trigger: str):
    from harness.run import ReproConfig

    return ReproConfig(
        kernel=args.kernel.resolve() if args.kernel else None,
        kernel_debug=args.kernel_debug.resolve() if args.kernel_debug else None,
        root_image=args.root_image.resolve() if getattr(args, "root_image", None) else None,
        image=args.image.resolve() if args.image else None,
        release=args.release,
        kenv=kenv,
        memory_mib=512 if args.memory is None else args.memory,
        vcpus=1 if args.vcpus is None else args.vcpus,
        accel=args.accel,
        uri=args.libvirt_uri,
        minidump=args.minidump != "0",
        compression=args.compression,
        trigger=trigger,
        retrieve=args.retrieve,
        flow=None if args.flow == "auto" else args.flow,
        artifacts=args.artifacts.resolve(),
        keep=args.keep,
        keep_images=args.keep_images,
        offline=args.offline,
        boot_seconds=args.boot_timeout,
        dump_twice=args.dump_twice,
        dump_twice_via=args.dump_twice_via,
        textdump=getattr(args, "textdump", False),
        dump_disk_mib=args.dump_disk_mib,
        force_kernel=args.force_kernel,
        device=getattr(args, "device", "disk"),
        swap_mib=getattr(args, "swap_mib", None),
    )


def _kept_guest(outcome, retrieve: str) -> str:
    """Where the kept guest sits and how to attach to it or get rid of it."""
    uri = outcome.uri or "qemu:///system"
    where = (
        "running (it rebooted for savecore)"
        if retrieve == "ssh"
        else "held at 'Press a key on the console to reboot' after its panic dump"
        if outcome.flow == "panic"
        else "in ddb"
    )
    return (
        f"guest {outcome.guest_name} is still {where}.\n"
        f"  attach:  fbsd-hil console {outcome.guest_name}"
        + (f" --libvirt-uri {outcome.uri}" if outcome.uri else "")
        + "\n"
        f"  destroy: virsh -c {uri} destroy {outcome.guest_name}"
    )


def kept_summary(outcome) -> str:
    """Where the run's files are, what they take on disk, and what a passing run removed."""
    from harness.run.rundir import human_size

    kept = outcome.kept_files
    lines = [f"artifacts: {outcome.artifacts} ({human_size(sum(kept.values()))} kept)"]
    lines += [f"  {name}  {human_size(size)}" for name, size in sorted(kept.items())]
    if outcome.removed_files:
        gone = ", ".join(f"{name} {human_size(size)}" for name, size in sorted(outcome.removed_files.items()))
        lines.append(f"  removed after the pass (--keep-images keeps them): {gone}")
    return "\n".join(lines)


def _ensure_libvirt(uri: str | None) -> int | None:
    """Start a local libvirtd if nobody did (as `doctor --fix` would); 2 with the reason if that fails."""
    import contextlib

    from harness.vm.doctor import ensure_local_libvirt

    with contextlib.redirect_stdout(sys.stderr):
        report = ensure_local_libvirt(uri)
    if report is not None and report.problems:
        print(f"fbsd-hil repro: libvirt is not usable: {'; '.join(report.problems)}", file=sys.stderr)
        return 2
    return None


#: lines of a multi-line failure printed above the FAILED line (all of them are in error.txt)
DETAIL_LINES = 12


def _detail_lines(exc: BaseException) -> list[str]:
    """The lines after the first of a failure's message (a boot diagnosis names cause and evidence), up
    to the console/QEMU log sections it carries (those are in console-tail.txt, qemu-log-tail.txt)."""
    rest = []
    for line in str(exc).strip().splitlines()[1:]:
        if line.startswith("--- "):  # "--- console tail ---", "--- QEMU log tail ---": kept in files
            break
        if line.strip():
            rest.append(line.rstrip())
    if len(rest) > DETAIL_LINES:
        rest = [*rest[:DETAIL_LINES], f"... ({len(rest) - DETAIL_LINES} more lines in error.txt)"]
    return rest

"""`fbsd-hil` command line: one argparse tree, each subcommand lives in its own module.

A subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func`` (called with the parsed namespace, returns an exit status). Modules listed here
that do not exist yet are reported as "not built yet" rather than faked.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

#: (subcommand name, module providing ``register``)
SUBCOMMAND_MODULES: list[tuple[str, str]] = [
    ("doctor", "harness.cli.doctor"),
    ("images", "harness.cli.images"),
    ("repro", "harness.cli.repro"),
    ("console", "harness.cli.console"),
    ("verify", "harness.cli.verify"),
]

DESCRIPTION = """\
Test FreeBSD kernel crash dumps in the loop: boot a FreeBSD guest under QEMU/libvirt, enter the kernel
debugger, make the kernel dump, retrieve the vmcore and verify it page by page against the guest's live
memory.
"""

EPILOG = """\
typical use:
  fbsd-hil doctor --fix                          prepare this host (packages, daemons, /dev/kvm)
  fbsd-hil repro --kernel ./kernel               boot a kernel you built, dump it, verify the dump
  fbsd-hil repro --release 14.3 --retrieve ssh   the same with an official release and savecore
  fbsd-hil verify RUN_DIR                        verify a run's dump again, offline (no guest)
  fbsd-hil console NAME                          attach to a kept guest's serial console
  fbsd-hil images list                           the FreeBSD image catalogue and the cache

exit status: 0 success (dump verified), 1 verification failed, 2 could not do it (one line says why),
128+N killed by signal N (guests and temporary files are cleaned up on SIGINT, SIGTERM and SIGHUP).
`fbsd-hil COMMAND --help` describes each command; README.md and docs/ have the details.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fbsd-hil")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fbsd-hil",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p = sub.add_parser(name, help=f"(not built yet: {module_name} is missing)")
            p.set_defaults(func=_not_built(name, module_name))
            continue
        module.register(sub)
    return parser


def _not_built(name: str, module_name: str):
    def run(_args: argparse.Namespace) -> int:
        print(f"fbsd-hil {name}: not built yet ({module_name} does not exist)", file=sys.stderr)
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from harness.util.termination import describe, exit_status, terminate_as_interrupt

    try:
        with terminate_as_interrupt():
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # inside the try: a reader that went away shows up here, not at exit
            return status
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: the `with` blocks below cleaned up
        print(f"fbsd-hil {args.command}: interrupted ({describe(exc)})", file=sys.stderr)
        return exit_status(exc)
    except BrokenPipeError:
        # `fbsd-hil images list --json | head`: the reader has all it wanted; no traceback, and no
        # second error when the interpreter flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + 13  # as if killed by SIGPIPE, like any Unix filter


if __name__ == "__main__":
    raise SystemExit(main())

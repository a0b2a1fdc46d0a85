"""`fbsd-hil console NAME`: attach the terminal to a running domain's serial console.

Why: after `fbsd-hil repro --keep` the guest sits in ddb; a kernel developer wants to type ddb commands
into it. The serial port is a pty that libvirt names in the live domain XML; we open it, put the local
terminal in raw mode and copy bytes both ways until the escape character (Ctrl-]) is typed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import sys
import termios
import tty
import xml.etree.ElementTree as ET

ESCAPE = b"\x1d"  # Ctrl-]
ESCAPE_NAME = "Ctrl-]"


class ConsoleAttachError(RuntimeError):
    """The domain does not exist, is not running, or has no pty serial console."""


def serial_pty(domain_xml: str) -> str:
    """The host pty path of the first serial (or console) device of a running domain's XML."""
    root = ET.fromstring(domain_xml)
    for tag in ("serial", "console"):
        for dev in root.iter(tag):
            if dev.get("type") != "pty":
                continue
            src = dev.find("source")
            path = src.get("path") if src is not None else None
            path = path or dev.get("tty")
            if path:
                return path
    raise ConsoleAttachError("the domain has no pty serial console (no <serial type='pty'> with a path)")


def domain_pty(name: str, uri: str | None) -> str:
    from harness.vm.libvirt_conn import connect

    conn = connect(uri)
    try:
        import libvirt

        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise ConsoleAttachError(f"no domain named {name!r} on {conn.getURI()}: {exc}") from exc
        if not dom.isActive():
            raise ConsoleAttachError(f"domain {name!r} is not running")
        return serial_pty(dom.XMLDesc(0))
    finally:
        conn.close()


def relay(pty_fd: int, in_fd: int, out_fd: int, escape: bytes = ESCAPE) -> str:
    """Copy in_fd -> pty and pty -> out_fd until the escape byte, EOF on input, or the pty closes."""
    while True:
        ready, _, _ = select.select([pty_fd, in_fd], [], [])
        if pty_fd in ready:
            try:
                data = os.read(pty_fd, 4096)
            except OSError:
                return "console closed (domain stopped?)"
            if not data:
                return "console closed (domain stopped?)"
            os.write(out_fd, data)
        if in_fd in ready:
            data = os.read(in_fd, 1024)
            if not data:
                return "end of input"
            if escape in data:
                before = data.split(escape, 1)[0]
                if before:
                    os.write(pty_fd, before)
                return "detached"
            os.write(pty_fd, data)


def attach(pty_path: str, *, in_fd: int | None = None, out_fd: int | None = None) -> str:
    in_fd = sys.stdin.fileno() if in_fd is None else in_fd
    out_fd = sys.stdout.fileno() if out_fd is None else out_fd
    pty_fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        with contextlib.suppress(termios.error):
            tty.setraw(pty_fd)  # the guest's bytes pass through untouched
        saved = None
        if os.isatty(in_fd):
            saved = termios.tcgetattr(in_fd)
            tty.setraw(in_fd)
        try:
            return relay(pty_fd, in_fd, out_fd)
        finally:
            if saved is not None:
                termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
    finally:
        os.close(pty_fd)


def run(args: argparse.Namespace) -> int:
    try:
        path = args.pty or domain_pty(args.name, args.libvirt_uri)
        print(
            f"fbsd-hil console: attached to {args.name} ({path}); type {ESCAPE_NAME} to detach.",
            file=sys.stderr,
            flush=True,
        )
        if sys.stdin.isatty():
            print("(In ddb, press Enter for a fresh db> prompt.)\r", file=sys.stderr, flush=True)
        reason = attach(path)
    except (ConsoleAttachError, OSError) as exc:
        print(f"fbsd-hil console: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - libvirt errors: one line, not a traceback
        print(f"fbsd-hil console: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"\r\nfbsd-hil console: {reason}.", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "console",
        help="attach interactively to a domain's serial console (Ctrl-] detaches)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("name", help="libvirt domain name (printed by `fbsd-hil repro --keep`)")
    p.add_argument("--libvirt-uri", default=None, help="libvirt URI (default qemu:///system)")
    p.add_argument(
        "--pty",
        default=None,
        metavar="PATH",
        help="open this pty directly instead of asking libvirt for the domain's serial pty",
    )
    p.set_defaults(func=run)

"""`fbsd-vmcore` / `python -m reader`: look into a FreeBSD kernel dump from any host.

Every reader failure prints one line (`fbsd-vmcore: <file, offset, field: what (expected)>`)
and exits 2; usage errors exit 2 through argparse as usual.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ReaderError


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r} (use 0x... for hex)") from None


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before and after the command (`fbsd-vmcore info core --kernel k`):
    # the subcommand copies default to SUPPRESS so they never overwrite a value given up front.
    def add_common(parser: argparse.ArgumentParser, default) -> None:
        parser.add_argument("--kernel", metavar="PATH", default=default(None),
                            help="kernel (or kernel.debug) with symbols")
        parser.add_argument("--zero-fill", action="store_true", default=default(False),
                            help="read pages missing from a cut-short dump as zeros instead of failing")
        parser.add_argument("--private-key", metavar="PEM", default=default(None),
                            help="RSA key for an encrypted (EKCD) dump")

    common = argparse.ArgumentParser(add_help=False)
    add_common(common, lambda _value: argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="fbsd-vmcore", description=__doc__.splitlines()[0])
    add_common(p, lambda value: value)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    real_add_parser = sub.add_parser

    def add_parser(name: str, **kw) -> argparse.ArgumentParser:
        return real_add_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    s = sub.add_parser("info", help="header fields, version, panic string, hostname, dump time")
    s.add_argument("vmcore")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("read", help="read memory by symbol, virtual or physical address")
    s.add_argument("vmcore")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--symbol", metavar="S")
    g.add_argument("--va", type=_int, metavar="A")
    g.add_argument("--pa", type=_int, metavar="A")
    s.add_argument("--size", type=_int, required=True, metavar="N")
    s.add_argument("--raw", action="store_true", help="write the bytes to stdout instead of a hex dump")
    s.set_defaults(func=cmd_read)

    s = sub.add_parser("translate", help="physical address of a kernel virtual address")
    s.add_argument("vmcore")
    s.add_argument("va", type=_int)
    s.set_defaults(func=cmd_translate)

    s = sub.add_parser("pages", help="one '0x<va> 0x<pa>' line per present kernel page")
    s.add_argument("vmcore")
    s.add_argument("--include-dmap", action="store_true", help="also list direct-map aliases")
    s.set_defaults(func=cmd_pages)

    s = sub.add_parser("msgbuf", help="the kernel message buffer, oldest line first")
    s.add_argument("vmcore")
    s.set_defaults(func=cmd_msgbuf)

    s = sub.add_parser("threads", help="processes, threads and saved registers")
    s.add_argument("vmcore")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_threads)

    s = sub.add_parser("extract", help="save the dump on a raw dump device / disk image (as savecore)")
    s.add_argument("image")
    s.add_argument("-o", "--outdir", required=True)
    s.set_defaults(func=cmd_extract)
    return p


def _open(args):
    from .vmcore import open_vmcore

    return open_vmcore(args.vmcore, args.kernel, zero_fill=args.zero_fill,
                       private_key=_load_key(args.private_key))


def _load_key(path: str | None):
    """The key file path as given: the container layer loads it and names it in its errors."""
    return path


def cmd_info(args) -> int:
    with _open(args) as vm:
        info = vm.info
    if args.json:
        json.dump(info, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {_fmt(v)}")
        else:
            print(f"{key}: {_fmt(value)}")
    return 0


def _fmt(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v > 9999:
        return f"{v:#x}"
    if isinstance(v, str):
        return v.rstrip("\n")
    return str(v)


def cmd_read(args) -> int:
    with _open(args) as vm:
        if args.symbol:
            addr = vm.symbol(args.symbol)
            data = vm.read(addr, args.size)
        elif args.va is not None:
            addr = args.va
            data = vm.read(addr, args.size)
        else:
            addr = args.pa
            data = vm.read_phys(addr, args.size)
    if args.raw:
        sys.stdout.buffer.write(data)
        return 0
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        print(f"{addr + i:#018x}  {row.hex(' '):<47}  {text}")
    return 0


def cmd_translate(args) -> int:
    with _open(args) as vm:
        print(f"{vm.translate(args.va):#x}")
    return 0


def cmd_pages(args) -> int:
    out = sys.stdout
    with _open(args) as vm:
        m = vm.kernel_page_map(include_dmap=args.include_dmap)
        step = 1 << 16
        for i in range(0, len(m), step):
            out.write("".join(f"{v:#x} {p:#x}\n" for v, p in
                              zip(m.va[i : i + step].tolist(), m.pa[i : i + step].tolist(), strict=True)))
    return 0


def cmd_msgbuf(args) -> int:
    with _open(args) as vm:
        if vm.kernel is None and vm.format == "minidump":
            print("fbsd-vmcore: no --kernel: printing the msgbuf section in buffer order; after a "
                  "wrap-around the oldest text is not first", file=sys.stderr)
            text = vm.msgbuf_section().replace(b"\0", b"").decode("utf-8", "replace")
        else:
            text = vm.msgbuf()
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def cmd_threads(args) -> int:
    with _open(args) as vm:
        threads = vm.threads()
    if args.json:
        json.dump([t.to_json() for t in threads], sys.stdout, indent=2)
        print()
        return 0
    for t in threads:
        regs = " ".join(f"{k}={v:#x}" for k, v in t.registers.items())
        print(f"tid {t.tid:<7} {t.name}")
        print(f"    {regs}" if regs else f"    registers unavailable: {t.error}")
    return 0


def cmd_extract(args) -> int:
    try:
        from .device import extract
    except ImportError:
        raise ReaderError("extract needs reader.device (the container layer), which is not installed",
                          path=args.image) from None
    result = extract(args.image, args.outdir, private_key=_load_key(args.private_key))
    print(f"vmcore: {result.vmcore}")
    print(f"info: {result.info}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ReaderError as exc:
        print(f"fbsd-vmcore: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0

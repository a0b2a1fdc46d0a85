"""`fbsd-vmcore` / `python -m reader`: crash analysis of FreeBSD kernel dumps on any host.

Reads minidumps and full dumps (amd64, i386, arm64; plain, gzip/zstd, dump-device images, EKCD)
with the kernel's symbols: `crashinfo` summary, backtraces (`bt`), `ps`, `threads`, `msgbuf`,
`symbolize`, typed `read`, and an interactive drgn `shell` with types from kernel.debug.

Every reader failure prints one line (`fbsd-vmcore: <file, offset, field: what (expected)>`) and
exits 2; usage errors exit 2 through argparse as usual. JSON output writes every address as a
"0x..." string (64-bit values do not survive JSON numbers in jq or JavaScript).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import struct
import sys
import tempfile
import time
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

from .errors import ReaderError, SymbolError
from .report import json_safe, text_lines

#: `read --size` bound: a hex dump of more is not for a terminal, and the bytes would be held in memory
MAX_READ = 64 << 20
#: a vmcore given as a pipe / FIFO / process substitution is copied to a temporary file up to this size
MAX_STREAM = 64 << 30
#: how long to wait for the first byte of a FIFO nobody writes to
FIFO_WAIT = 10.0
INT_TYPES = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "s8": "<b", "s16": "<h", "s32": "<i",
             "s64": "<q"}


def _version() -> str:
    try:
        return metadata.version("fbsd-hil")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


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
                            help="the kernel (or kernel.debug) that wrote the dump: symbols")
        parser.add_argument("--debug", metavar="PATH", default=default(None),
                            help="kernel.debug with DWARF: types (shell, read --type, ps), CFI for bt")
        parser.add_argument("--zero-fill", action="store_true", default=default(False),
                            help="read pages missing from a cut-short dump as zeros instead of failing")
        parser.add_argument("--private-key", metavar="PEM", default=default(None),
                            help="RSA key for an encrypted (EKCD) dump")
        parser.add_argument("--force", action="store_true", default=default(False),
                            help="read even when the kernel's version/build-id differs from the dump's")

    common = argparse.ArgumentParser(add_help=False)
    add_common(common, lambda _value: argparse.SUPPRESS)
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="fbsd-vmcore", description=doc[0] + "\n\n" + doc[1],
                                epilog=doc[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fbsd-vmcore {_version()}",
                   help="print the version and exit")
    add_common(p, lambda value: value)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           help="what to do (`fbsd-vmcore COMMAND --help` for its options)")
    real_add_parser = sub.add_parser

    def add_parser(name: str, **kw) -> argparse.ArgumentParser:
        kw.setdefault("description", kw.get("help"))
        return real_add_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    vmcore_help = "the dump: vmcore.N, .gz/.zst, a dump device image, or a pipe"

    s = sub.add_parser("info", help="header fields, version, panic string, hostname, dump time")
    s.add_argument("vmcore", help=vmcore_help)
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("crashinfo", help="crashinfo(8)-style summary: version, panic, backtrace, ps, msgbuf")
    s.add_argument("vmcore", help=vmcore_help)
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.add_argument("--msgbuf-lines", type=_int, default=40, metavar="N",
                   help="how many message buffer lines to show (default 40)")
    s.set_defaults(func=cmd_crashinfo)

    s = sub.add_parser("bt", help="backtraces: the crashed thread (default), one thread, or all")
    s.add_argument("vmcore", help=vmcore_help)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--tid", type=_int, metavar="N", help="the thread with this tid")
    g.add_argument("--all", action="store_true", help="every thread")
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.set_defaults(func=cmd_bt)

    s = sub.add_parser("ps", help="processes: pid, ppid, uid, state, flags, threads, command")
    s.add_argument("vmcore", help=vmcore_help)
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.set_defaults(func=cmd_ps)

    s = sub.add_parser("threads", help="threads and their saved registers")
    s.add_argument("vmcore", help=vmcore_help)
    s.add_argument("--json", action="store_true", help="JSON instead of text")
    s.set_defaults(func=cmd_threads)

    s = sub.add_parser("symbolize", help="function+offset of code addresses (needs --kernel, no dump)")
    s.add_argument("addresses", nargs="+", type=_int, metavar="ADDR", help="code address (0x...)")
    s.set_defaults(func=cmd_symbolize)

    s = sub.add_parser("read", help="read memory by symbol, virtual or physical address; decode it")
    s.add_argument("vmcore", help=vmcore_help)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--symbol", metavar="S", help="a kernel symbol's address")
    g.add_argument("--va", type=_int, metavar="A", help="a kernel virtual address")
    g.add_argument("--pa", type=_int, metavar="A", help="a physical address")
    s.add_argument("--size", type=_int, metavar="N",
                   help=f"bytes to read (at most {MAX_READ >> 20} MiB; default: the symbol's or type's size)")
    s.add_argument("--type", metavar="T",
                   help="u8..u64, s8..s64, ptr, string, or a DWARF type ('struct proc'; needs --debug)")
    s.add_argument("--raw", action="store_true", help="write the bytes to stdout instead of a hex dump")
    s.set_defaults(func=cmd_read)

    s = sub.add_parser("translate", help="physical address of a kernel virtual address or symbol")
    s.add_argument("vmcore", help=vmcore_help)
    s.add_argument("va", metavar="ADDR|SYMBOL", help="a virtual address (0x...) or a kernel symbol")
    s.set_defaults(func=cmd_translate)

    s = sub.add_parser("pages", help="one '0x<va> 0x<pa>' line per present kernel page")
    s.add_argument("vmcore", help=vmcore_help)
    s.add_argument("--include-dmap", action="store_true", help="also list direct-map aliases")
    s.set_defaults(func=cmd_pages)

    s = sub.add_parser("msgbuf", help="the kernel message buffer, oldest line first")
    s.add_argument("vmcore", help=vmcore_help)
    s.set_defaults(func=cmd_msgbuf)

    s = sub.add_parser("shell", help="interactive drgn session on the dump (needs drgn; types from --debug)")
    s.add_argument("vmcore", help=vmcore_help)
    s.set_defaults(func=cmd_shell)

    s = sub.add_parser("extract", help="save the dump on a raw dump device / disk image (as savecore)")
    s.add_argument("image", help="raw dump device or disk image (read only)")
    s.add_argument("-o", "--outdir", required=True, help="directory for vmcore.N / info.N (created)")
    s.add_argument("--partition", metavar="N|TYPE", default=None,
                   help="the dump device was a partition of this whole-disk image: its index (2 for vtbd0p2) "
                        "or its GPT type (freebsd-swap: the first such partition)")
    s.set_defaults(func=cmd_extract)
    return p


# ---- inputs ----------------------------------------------------------------------------------------
def _regular_input(path: str, stack: ExitStack, what: str) -> str:
    """`path` itself if it is a regular file or block device; a bounded temp copy for pipes / FIFOs."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ReaderError(f"cannot open {what}: {exc.strerror}", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise ReaderError(f"is a directory, not a {what}", path=path, expected=f"a {what} file")
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return path
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        tmp = stack.enter_context(tempfile.NamedTemporaryFile(prefix="fbsd-vmcore-", suffix=".stream"))  # noqa: SIM115
        _spool_stream(path, tmp.fileno())
        return tmp.name
    raise ReaderError(f"not a regular file (mode {st.st_mode:#o})", path=path, expected=f"a {what} file")


def _spool_stream(path: str, out_fd: int) -> int:
    """Copy a pipe / FIFO to `out_fd`, at most MAX_STREAM bytes; never blocks on a writer-less FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    total = 0
    started = time.monotonic()
    try:
        import select

        while True:
            ready, _, _ = select.select([fd], [], [], 1.0)
            data = os.read(fd, 1 << 20) if ready else None
            if data:
                if total + len(data) > MAX_STREAM:
                    raise ReaderError(f"the stream is larger than {MAX_STREAM} bytes", path=path,
                                      expected="a vmcore file for dumps this large")
                os.write(out_fd, data)
                total += len(data)
                continue
            if total == 0 and time.monotonic() - started < FIFO_WAIT:
                time.sleep(0.05)     # no writer yet (or no data yet): wait, boundedly
                continue
            if total == 0:
                raise ReaderError(f"nothing arrived on this pipe/FIFO within {FIFO_WAIT:.0f} s", path=path,
                                  expected="a writer sending a vmcore")
            if data == b"":
                return total
    finally:
        os.close(fd)


def _open(args, stack: ExitStack):
    from .vmcore import open_vmcore

    path = _regular_input(args.vmcore, stack, "vmcore")
    if args.kernel is not None:
        args.kernel = _regular_input(args.kernel, stack, "kernel")
    vm = open_vmcore(path, args.kernel, zero_fill=args.zero_fill, private_key=args.private_key,
                     force=args.force)
    if path != args.vmcore:
        vm.path = Path(args.vmcore)   # name the file the user gave in every message
    return stack.enter_context(vm)


def _program(args, vm):
    if args.debug is None:
        return None
    from .fbsd_drgn import drgn_program

    return drgn_program(vm, args.debug)


def _cfi(args, vm):
    """kernel.debug's DWARF call frame information for the unwinder (checked against the kernel)."""
    if args.debug is None:
        return None
    from .cfi import CallFrameTable
    from .fbsd_drgn import check_debug_file

    check_debug_file(vm, args.debug)
    return CallFrameTable(args.debug, vm.arch.name)


def _print_json(data) -> None:
    json.dump(json_safe(data), sys.stdout, indent=2)
    print()


# ---- commands --------------------------------------------------------------------------------------
def cmd_info(args) -> int:
    with ExitStack() as stack:
        info = _open(args, stack).info
    if args.json:
        _print_json(info)
        return 0
    print("\n".join(text_lines(info)))
    return 0


def cmd_crashinfo(args) -> int:
    from .crashinfo import build_crashinfo, crashinfo_json, format_crashinfo

    with ExitStack() as stack:
        vm = _open(args, stack)
        ci = build_crashinfo(vm, vm.info, msgbuf_lines=args.msgbuf_lines, program=_program(args, vm),
                             cfi=_cfi(args, vm))
    if args.json:
        _print_json(crashinfo_json(ci))
    else:
        print("\n".join(format_crashinfo(ci)))
    return 0


def cmd_bt(args) -> int:
    with ExitStack() as stack:
        vm = _open(args, stack)
        threads = vm.threads()
        if args.all:
            chosen = threads
        elif args.tid is not None:
            chosen = [t for t in threads if t.tid == args.tid]
            if not chosen:
                raise ReaderError(f"no thread with tid {args.tid}", path=args.vmcore, field="tid",
                                  expected=", ".join(str(t.tid) for t in threads[:20]))
        else:
            chosen = [t for t in threads if t.crashed][:1] or threads[:1]
        cfi = _cfi(args, vm)
        traces = [(t, t.backtrace(cfi=cfi)) for t in chosen]
        arch = vm.arch.name
    if args.json:
        _print_json([{"tid": t.tid, "pid": t.pid, "name": t.name, "stop_reason": bt.stop_reason,
                      "frames": [f.to_json() for f in bt.frames]} for t, bt in traces])
        return 0
    for i, (t, bt) in enumerate(traces):
        if i:
            print()
        print(f"thread {t.tid} {t.name}")
        print("\n".join(bt.format(arch)))
    return 0


def cmd_ps(args) -> int:
    from .ps import format_ps, list_processes

    with ExitStack() as stack:
        vm = _open(args, stack)
        procs = list_processes(vm, program=_program(args, vm))
    if args.json:
        _print_json([p.to_json() for p in procs])
    else:
        print("\n".join(format_ps(procs)))
    return 0


def cmd_threads(args) -> int:
    with ExitStack() as stack:
        vm = _open(args, stack)
        threads = vm.threads()
        if args.json:
            _print_json([t.to_json() for t in threads])
            return 0
        for t in threads:
            regs = " ".join(f"{k}={v:#x}" for k, v in t.registers.items())
            pc = t.pc
            where = vm.kernel.symbolize(pc) if vm.kernel is not None and pc is not None else None
            print(f"tid {t.tid:<7} {t.name}" + (f"  at {where}" if where else ""))
            print(f"    {regs}" if regs else f"    registers unavailable: {t.error}")
    return 0


def cmd_symbolize(args) -> int:
    from .kernel import Kernel

    if args.kernel is None:
        raise SymbolError("symbolize needs the kernel's symbol table", field="--kernel",
                          expected="--kernel PATH")
    kern = Kernel(args.kernel)
    for addr in args.addresses:
        name = kern.symbolize(addr)
        print(f"{addr:#x} {name if name else '?? (no function symbol covers it)'}")
    return 0


def cmd_read(args) -> int:
    with ExitStack() as stack:
        vm = _open(args, stack)
        addr = _resolve(vm, args.symbol) if args.symbol else (args.va if args.va is not None else args.pa)
        if args.type and args.type not in INT_TYPES and args.type not in ("ptr", "string"):
            return _read_dwarf(args, vm, addr)
        if args.size is None and args.type == "string":
            text = vm.read_cstring(addr, 4096) if args.pa is None else \
                vm.read_phys(addr, 4096).split(b"\0", 1)[0].decode("utf-8", "replace")
            print(text)
            return 0
        size = _read_size(args, vm)
        data = vm.read_phys(addr, size) if args.pa is not None else vm.read(addr, size)
        psize = vm.arch.pointer_size
        kernel = vm.kernel
    if args.raw:
        sys.stdout.buffer.write(data)
        return 0
    if args.type in INT_TYPES or args.type == "ptr":
        fmt = INT_TYPES.get(args.type) or ("<Q" if psize == 8 else "<I")
        step = struct.calcsize(fmt)
        for i in range(0, len(data) - step + 1, step):
            (v,) = struct.unpack_from(fmt, data, i)
            shown = f"{v:#x}" if args.type == "ptr" else str(v)
            if args.type == "ptr" and kernel is not None and (name := kernel.symbolize(v)):
                shown += f" <{name}>"
            print(f"{addr + i:#018x}  {shown}")
        return 0
    if args.type == "string":
        print(data.split(b"\0", 1)[0].decode("utf-8", "replace"))
        return 0
    for i in range(0, len(data), 16):
        row = data[i : i + 16]
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        print(f"{addr + i:#018x}  {row.hex(' '):<47}  {text}")
    return 0


def _read_size(args, vm) -> int:
    if args.size is not None:
        size = args.size
    elif args.type in INT_TYPES:
        size = struct.calcsize(INT_TYPES[args.type])
    elif args.type == "ptr":
        size = vm.arch.pointer_size
    elif args.symbol and vm.kernel is not None and vm.kernel.lookup(args.symbol).size:
        size = vm.kernel.lookup(args.symbol).size
    else:
        raise ReaderError("how many bytes?", field="--size",
                          expected="--size N, or --type, or a sized --symbol")
    if size < 0 or size > MAX_READ:
        raise ReaderError(f"--size {size} is out of range", field="--size",
                          expected=f"0..{MAX_READ} ({MAX_READ >> 20} MiB); read larger areas in pieces")
    return min(size, MAX_READ)


def _read_dwarf(args, vm, addr: int) -> int:
    if args.debug is None:
        raise ReaderError(f"--type {args.type!r} is not a built-in type and needs DWARF", field="--type",
                          expected="u8..u64, s8..s64, ptr, string, or --debug kernel.debug for C types")
    import drgn

    prog = _program(args, vm)
    try:
        obj = drgn.Object(prog, args.type, address=addr)
        print(obj.format_())
    except LookupError as exc:
        raise ReaderError(f"no type {args.type!r} in the debug info: {exc}", path=args.debug,
                          field="--type", expected="a C type name, e.g. 'struct proc'") from None
    except drgn.FaultError as exc:
        raise ReaderError(f"cannot read {args.type} at {addr:#x}: {exc}", path=args.vmcore) from None
    return 0


def _resolve(vm, text: str) -> int:
    """A number (0x...) or a kernel symbol name."""
    try:
        return int(text, 0)
    except ValueError:
        return vm.symbol(text)


def cmd_translate(args) -> int:
    with ExitStack() as stack:
        vm = _open(args, stack)
        print(f"{vm.translate(_resolve(vm, args.va)):#x}")
    return 0


def cmd_pages(args) -> int:
    out = sys.stdout
    with ExitStack() as stack:
        vm = _open(args, stack)
        m = vm.kernel_page_map(include_dmap=args.include_dmap)
        step = 1 << 16
        for i in range(0, len(m), step):
            out.write("".join(f"{v:#x} {p:#x}\n" for v, p in
                              zip(m.va[i : i + step].tolist(), m.pa[i : i + step].tolist(), strict=True)))
    return 0


def cmd_msgbuf(args) -> int:
    with ExitStack() as stack:
        vm = _open(args, stack)
        if vm.kernel is None and vm.format == "minidump":
            print("fbsd-vmcore: no --kernel: printing the msgbuf section in buffer order; after a "
                  "wrap-around the oldest text is not first", file=sys.stderr)
            text = vm.msgbuf_section().replace(b"\0", b"").decode("utf-8", "replace")
        else:
            text = vm.msgbuf()
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return 0


def cmd_shell(args) -> int:
    from .fbsd_drgn import drgn_program, run_shell

    with ExitStack() as stack:
        vm = _open(args, stack)
        if args.kernel is None:
            raise SymbolError("shell needs the kernel's symbols", field="--kernel", expected="--kernel PATH")
        run_shell(drgn_program(vm, args.debug))
    return 0


def cmd_extract(args) -> int:
    from .device import extract

    with ExitStack() as stack:
        image = _regular_input(args.image, stack, "dump device image")
        if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
            raise ReaderError("exists and is not a directory", path=args.outdir, field="--outdir",
                              expected="a directory (created if missing)")
        result = extract(image, args.outdir, private_key=args.private_key, force=args.force,
                         partition=_partition_index(image, args.partition))
    print(f"vmcore: {result.vmcore}")
    print(f"info: {result.info}")
    return 0


def _partition_index(image: str, partition: str | None) -> int | None:
    """`--partition`: an index as is, a GPT type name looked up in the image's table (strictly)."""
    if partition is None:
        return None
    if partition.isdigit() and int(partition) > 0:
        return int(partition)
    from .gpt import find_by_type

    return find_by_type(image, partition).index


#: the reader's errors name API keywords; on the command line the options are what a user can type
CLI_WORDS = (("use zero_fill=True to", "use --zero-fill to"), ("zero_fill=True to", "--zero-fill to"),
             ("force=True / --force", "--force"), ("force=True / savecore -f", "--force"),
             ("open_vmcore(path, kernel=...) / --kernel PATH", "--kernel PATH"),
             ("private_key= / --private-key", "--private-key"))


def cli_words(message: str) -> str:
    """A reader error in the words of this command line (`--zero-fill`, not `zero_fill=True`)."""
    for api, cli in CLI_WORDS:
        message = message.replace(api, cli)
    return message.replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ReaderError as exc:
        print(f"fbsd-vmcore: {cli_words(str(exc))}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130

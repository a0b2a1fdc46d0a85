"""Textdumps: ddb output, message buffer, panic string, version (and kernel config) as a ustar stream.

`textdump_dumpsys()` (sys/ddb/db_textdump.c) writes 512-byte blocks backwards from the end of the
dump device: trailer header in the last block, the first tar block just below it, the next below
that, then the leader. savecore reverses the blocks into `textdump.tar.N`. The tar stream has no
end-of-archive blocks, so this reader stops at the end of the data rather than at two zero blocks.
Members: ddb.txt, config.txt (INCLUDE_CONFIG_FILE kernels), msgbuf.txt, panic.txt, version.txt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reader import device
from reader.device import TEXTDUMP_BLOCK as BLOCK
from reader.device import copy_reversed  # noqa: F401 - kept importable from here
from reader.errors import FormatError, ReaderError, TruncatedError

KNOWN_MEMBERS = ("ddb.txt", "config.txt", "msgbuf.txt", "panic.txt", "version.txt")
# A textdump is a few MiB at most (ddb capture buffer + msgbuf); refuse to slurp gigabytes.
MAX_TEXTDUMP = 256 << 20


def _octal(raw: bytes, *, path: Any, offset: int, name: str) -> int:
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(
            f"ustar field {name} is {raw!r}, not an octal number",
            path=path,
            offset=offset,
            field=name,
            expected="octal digits",
        ) from None


@dataclass
class Textdump:
    """The members of a textdump, by name, as bytes. `text(name)` decodes one leniently."""

    path: Path
    members: dict[str, bytes] = field(default_factory=dict)
    mtimes: dict[str, int] = field(default_factory=dict)
    header: dict[str, Any] | None = None

    def text(self, name: str) -> str | None:
        data = self.members.get(name)
        return None if data is None else data.decode("utf-8", errors="replace")

    @property
    def ddb(self) -> str | None:
        return self.text("ddb.txt")

    @property
    def msgbuf(self) -> str | None:
        return self.text("msgbuf.txt")

    @property
    def panic(self) -> str | None:
        return self.text("panic.txt")

    @property
    def version(self) -> str | None:
        return self.text("version.txt")

    @property
    def config(self) -> str | None:
        return self.text("config.txt")


def parse_tar(data: bytes, *, path: Any = None) -> tuple[dict[str, bytes], dict[str, int]]:
    """Parse the kernel's ustar stream (checksums verified; EOF or zero blocks end it)."""
    members: dict[str, bytes] = {}
    mtimes: dict[str, int] = {}
    pos = 0
    while pos + BLOCK <= len(data):
        hdr = data[pos : pos + BLOCK]
        if not any(hdr):
            break
        stored = _octal(hdr[148:156], path=path, offset=pos + 148, name="chksum")
        actual = sum(hdr[:148]) + 8 * ord(" ") + sum(hdr[156:])
        if stored != actual:
            raise FormatError(
                f"ustar header checksum {stored:o} does not match the header ({actual:o})",
                path=path,
                offset=pos + 148,
                field="chksum",
                expected=f"{actual:o}",
            )
        if hdr[257:262] != b"ustar":
            raise FormatError(
                "tar header without the ustar magic",
                path=path,
                offset=pos + 257,
                field="magic",
                expected="'ustar'",
            )
        raw_name = hdr[:100].split(b"\0", 1)[0]
        name = raw_name.decode("utf-8", errors="replace")
        size = _octal(hdr[124:136], path=path, offset=pos + 124, name="size")
        mtime = _octal(hdr[136:148], path=path, offset=pos + 136, name="mtime")
        start = pos + BLOCK
        if start + size > len(data):
            raise TruncatedError(
                f"member {name!r} claims {size} bytes, only {len(data) - start} remain",
                path=path,
                offset=pos + 124,
                field="size",
                expected=f"<= {len(data) - start}",
            )
        if hdr[156:157] in (b"0", b"\0"):
            members[name] = data[start : start + size]
            mtimes[name] = mtime
        pos = start + (size + BLOCK - 1) // BLOCK * BLOCK
    return members, mtimes


def _read_device_textdump(dd: Any) -> bytes:
    if dd.payload_length > MAX_TEXTDUMP:
        raise FormatError(
            f"textdump of {dd.payload_length} bytes is implausibly large",
            path=dd.path,
            offset=dd.trailer_offset + 40,
            field="dumplength",
            expected=f"<= {MAX_TEXTDUMP}",
        )
    import tempfile

    with tempfile.TemporaryFile() as tf, open(dd.path, "rb") as src:
        copy_reversed(src.fileno(), dd, tf.fileno())
        tf.seek(0)
        return tf.read()


def open_textdump(path: str | os.PathLike[str]) -> Textdump:
    """Read a textdump from a dump device image (block-reversed) or a `textdump.tar.N` file."""
    p = Path(path)
    if device.has_dump_trailer(p):
        dd = device.find_dump(p)
        if not dd.is_textdump:
            raise FormatError(
                "this device holds a memory dump, not a textdump",
                path=p,
                offset=dd.trailer_offset,
                field="magic",
                expected="'FreeBSD Text Dump'",
            )
        data = _read_device_textdump(dd)
        header = dd.header.to_dict()
    else:
        try:
            size = p.stat().st_size
        except OSError as e:
            raise ReaderError(f"cannot open: {e.strerror}", path=p) from e
        if size > MAX_TEXTDUMP:
            raise FormatError(
                f"{size} bytes is implausibly large for a textdump",
                path=p,
                expected=f"<= {MAX_TEXTDUMP} bytes",
            )
        data = p.read_bytes()
        if len(data) < BLOCK or data[257:262] != b"ustar":
            raise FormatError(
                "not a textdump: no ustar header at the start and no dump header at the end",
                path=p,
                offset=257,
                field="magic",
                expected="'ustar' or a 'FreeBSD Text Dump' trailer",
            )
        header = None
    members, mtimes = parse_tar(data, path=p)
    return Textdump(path=p, members=members, mtimes=mtimes, header=header)


def extract_textdump(path: str | os.PathLike[str], outdir: str | os.PathLike[str]) -> list[Path]:
    """Unpack the members into *outdir* (created if needed); never overwrites an existing file.

    Member names are reduced to their base name, so a hostile archive cannot write elsewhere.
    All names are checked before anything is written.
    """
    td = open_textdump(path)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[Path, bytes]] = []
    for name, data in td.members.items():
        base = os.path.basename(name)
        if base in ("", ".", ".."):
            raise FormatError(f"unusable member name {name!r}", path=td.path, field="name")
        target = out / base
        if os.path.lexists(target):
            raise ReaderError(
                "refusing to overwrite an existing file (extract into an empty directory)", path=target
            )
        plan.append((target, data))
    written: list[Path] = []
    for target, data in plan:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise ReaderError("refusing to overwrite an existing file", path=target) from e
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        written.append(target)
    return written

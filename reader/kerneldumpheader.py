"""`struct kerneldumpheader` (sys/sys/kerneldump.h), versions 1 to 4.

The 512-byte header exists only on a dump device: the kernel writes it before (leader) and after
(trailer) the payload, and savecore strips it. Integers are big-endian ("dump byte order") on every
architecture; `version` sits at offset 32 in every layout, so it is read first to pick the layout.
Version history and offsets: docs in `shared/reference/freebsd-dump-formats.md` §1.3 (v1 = <= 11.x,
v2 = EKCD 12-CURRENT, v3 = compression 12-CURRENT, v4 = 12.0-RELEASE onwards).
"""

from __future__ import annotations

import struct
import time
from dataclasses import asdict, dataclass
from functools import reduce
from operator import xor
from pathlib import Path
from typing import Any

from construct import Bytes, Int8ub, Int32ub, Int64ub, Struct

from reader.errors import FormatError

HEADER_SIZE = 512

KERNELDUMPMAGIC = b"FreeBSD Kernel Dump"
TEXTDUMPMAGIC = b"FreeBSD Text Dump"
KERNELDUMPMAGIC_CLEARED = b"Cleared Kernel Dump"

KERNELDUMPVERSION = 4
KERNELDUMP_TEXT_VERSION = 4

KERNELDUMP_COMP_NONE = 0
KERNELDUMP_COMP_GZIP = 1
KERNELDUMP_COMP_ZSTD = 2
COMPRESSION_NAMES = {KERNELDUMP_COMP_NONE: "none", KERNELDUMP_COMP_GZIP: "gzip", KERNELDUMP_COMP_ZSTD: "zstd"}

# architectureversion per MACHINE_ARCH (kerneldump.h; textdumps use KERNELDUMP_TEXT_VERSION).
ARCHITECTURE_VERSIONS = {
    "aarch64": 1,
    "amd64": 2,
    "arm": 1,
    "armv6": 1,
    "armv7": 1,
    "i386": 2,
    "mips": 1,
    "powerpc": 1,
    "powerpc64": 1,
    "powerpc64le": 1,
    "riscv64": 1,
    "sparc64": 1,
}

_COMMON = (
    "magic" / Bytes(20),
    "architecture" / Bytes(12),
    "version" / Int32ub,
    "architectureversion" / Int32ub,
    "dumplength" / Int64ub,
)

LAYOUTS: dict[int, Struct] = {
    1: Struct(
        *_COMMON,
        "dumptime" / Int64ub,
        "blocksize" / Int32ub,
        "hostname" / Bytes(64),
        "versionstring" / Bytes(192),
        "panicstring" / Bytes(192),
        "parity" / Int32ub,
    ),
    2: Struct(
        *_COMMON,
        "dumptime" / Int64ub,
        "dumpkeysize" / Int32ub,
        "blocksize" / Int32ub,
        "hostname" / Bytes(64),
        "versionstring" / Bytes(192),
        "panicstring" / Bytes(188),
        "parity" / Int32ub,
    ),
    3: Struct(
        *_COMMON,
        "dumpextent" / Int64ub,
        "dumptime" / Int64ub,
        "dumpkeysize" / Int32ub,
        "blocksize" / Int32ub,
        "compression" / Int8ub,
        "hostname" / Bytes(64),
        "versionstring" / Bytes(192),
        "panicstring" / Bytes(179),
        "parity" / Int32ub,
    ),
    4: Struct(
        *_COMMON,
        "dumptime" / Int64ub,
        "dumpkeysize" / Int32ub,
        "blocksize" / Int32ub,
        "hostname" / Bytes(64),
        "versionstring" / Bytes(192),
        "panicstring" / Bytes(175),
        "compression" / Int8ub,
        "dumpextent" / Int64ub,
        "unused" / Bytes(4),
        "parity" / Int32ub,
    ),
}
for _v, _s in LAYOUTS.items():
    assert _s.sizeof() == HEADER_SIZE, (_v, _s.sizeof())

_STRING_FIELDS = ("magic", "architecture", "hostname", "versionstring", "panicstring")


def kerneldump_parity(raw: bytes) -> int:
    """XOR of the 128 32-bit words, as `kerneldump_parity()`; 0 for a valid header.

    The kernel stores the parity of the header with `parity = 0`, so a valid header XORs to zero.
    XOR commutes with byte swapping, so the word order used here does not matter.
    """
    if len(raw) != HEADER_SIZE:
        raise ValueError(f"kerneldumpheader is {HEADER_SIZE} bytes, got {len(raw)}")
    return reduce(xor, struct.unpack("<128I", raw), 0)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class KernelDumpHeader:
    """A decoded header; fields a layout lacks get the value the kernel implied (see `parse`)."""

    magic: str
    architecture: str
    version: int
    architectureversion: int
    dumplength: int
    dumptime: int
    dumpkeysize: int
    blocksize: int
    hostname: str
    versionstring: str
    panicstring: str
    compression: int
    dumpextent: int
    parity: int
    parity_ok: bool
    raw: bytes

    @property
    def kind(self) -> str:
        """Which magic the header carries: kernel, text, cleared or unknown."""
        m = self.raw[:20]
        if m == KERNELDUMPMAGIC.ljust(20, b"\0"):
            return "kernel"
        if m == TEXTDUMPMAGIC.ljust(20, b"\0"):
            return "text"
        if m == KERNELDUMPMAGIC_CLEARED.ljust(20, b"\0"):
            return "cleared"
        return "unknown"

    @property
    def compression_name(self) -> str:
        return COMPRESSION_NAMES.get(self.compression, "???")

    @property
    def encrypted(self) -> bool:
        return self.dumpkeysize > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable fields (raw bytes left out, parity as stored)."""
        d = asdict(self)
        d.pop("raw")
        d["kind"] = self.kind
        d["compression_name"] = self.compression_name
        d["encrypted"] = self.encrypted
        return d


def parse(raw: bytes, *, path: str | Path | None = None, offset: int = 0) -> KernelDumpHeader:
    """Decode a 512-byte header of any known version; no magic or parity check (see `check`).

    v1/v2 have no `dumpextent`: the payload filled the space exactly, so it equals `dumplength`;
    v1 has no key (`dumpkeysize` 0) and v1/v2 no compression (0).
    """
    if len(raw) < HEADER_SIZE:
        raise FormatError(
            f"kerneldumpheader is {HEADER_SIZE} bytes, only {len(raw)} available",
            path=path,
            offset=offset,
            field="kerneldumpheader",
            expected=f"{HEADER_SIZE} bytes",
        )
    raw = bytes(raw[:HEADER_SIZE])
    (version,) = struct.unpack_from(">I", raw, 32)
    layout = LAYOUTS.get(version)
    if layout is None:
        raise FormatError(
            f"unknown kerneldumpheader version {version}",
            path=path,
            offset=offset + 32,
            field="version",
            expected="1, 2, 3 or 4",
        )
    c = layout.parse(raw)
    fields = {k: c[k] for k in c if not k.startswith("_") and k != "unused"}
    for k in _STRING_FIELDS:
        fields[k] = _cstr(fields[k])
    fields.setdefault("dumpkeysize", 0)
    fields.setdefault("compression", KERNELDUMP_COMP_NONE)
    fields.setdefault("dumpextent", fields["dumplength"])
    return KernelDumpHeader(**fields, parity_ok=kerneldump_parity(raw) == 0, raw=raw)


def build(
    *,
    magic: bytes = KERNELDUMPMAGIC,
    architecture: str = "amd64",
    version: int = KERNELDUMPVERSION,
    architectureversion: int | None = None,
    dumplength: int,
    dumptime: int = 0,
    dumpkeysize: int = 0,
    blocksize: int = 512,
    hostname: str = "",
    versionstring: str = "",
    panicstring: str = "",
    compression: int = KERNELDUMP_COMP_NONE,
    dumpextent: int | None = None,
) -> bytes:
    """Encode a header as `dump_init_header()` + `kerneldump_parity()` would (parity filled in).

    Used to rewrite a trailer's magic (savecore clears it) and by the test writers.
    Strings longer than their field are cut, as the kernel's strlcpy does (the version string
    is forced to end in "\\n" like `dump_init_header()`).
    """
    layout = LAYOUTS[version]
    if architectureversion is None:
        architectureversion = ARCHITECTURE_VERSIONS.get(architecture, 1)
    if dumpextent is None:
        dumpextent = dumplength
    sizes = {sc.name: sc.subcon.sizeof() for sc in layout.subcons if sc.name in _STRING_FIELDS}

    def fit(name: str, value: str | bytes) -> bytes:
        b = value.encode() if isinstance(value, str) else value
        b = b[: sizes[name] - 1]
        if name == "versionstring" and len(value) >= sizes[name] - 1 and b:
            b = b[:-1] + b"\n"
        return b.ljust(sizes[name], b"\0")

    values: dict[str, Any] = {
        "magic": fit("magic", magic),
        "architecture": fit("architecture", architecture),
        "version": version,
        "architectureversion": architectureversion,
        "dumplength": dumplength,
        "dumptime": dumptime,
        "dumpkeysize": dumpkeysize,
        "blocksize": blocksize,
        "hostname": fit("hostname", hostname),
        "versionstring": fit("versionstring", versionstring),
        "panicstring": fit("panicstring", panicstring),
        "compression": compression,
        "dumpextent": dumpextent,
        "unused": b"\0" * 4,
        "parity": 0,
    }
    raw = layout.build({sc.name: values[sc.name] for sc in layout.subcons})
    p = kerneldump_parity(raw)
    return raw[:508] + struct.pack("<I", p)


def with_magic(raw: bytes, magic: bytes) -> bytes:
    """The same header with another magic and the parity fixed up (what savecore -f / clearing does)."""
    body = magic.ljust(20, b"\0")[:20] + bytes(raw[20:508]) + b"\0\0\0\0"
    return body[:508] + struct.pack("<I", kerneldump_parity(body))


def render_info(
    header: KernelDumpHeader,
    *,
    device: str,
    bounds: int,
    status: str = "good",
    tz: str | None = None,
) -> str:
    """`info.N` text exactly as savecore's `printheader()` writes it (libxo text style).

    `Dumptime` is `strftime("%F %T %z")` in local time (UTC when `tz` is "UTC"); `Dump Parity` prints
    the stored word in host (little-endian) order, as savecore prints `h->parity` without dtoh32.
    """
    try:
        t = time.gmtime(header.dumptime) if tz == "UTC" else time.localtime(header.dumptime)
        dumptime = time.strftime("%Y-%m-%d %H:%M:%S %z", t)
    except (OverflowError, OSError, ValueError):
        dumptime = ""  # savecore prints an empty time when strftime() fails
    (parity_host,) = struct.unpack_from("<I", header.raw, 508)
    lines = [
        f"Dump header from device: {device}\n",
        f"  Architecture: {header.architecture}\n",
        f"  Architecture Version: {header.architectureversion}\n",
        f"  Dump Length: {header.dumplength}\n",
        f"  Blocksize: {header.blocksize}\n",
        f"  Compression: {header.compression_name}\n",
        f"  Dumptime: {dumptime}\n",
        f"  Hostname: {header.hostname}\n",
        f"  Magic: {header.magic}\n",
        # savecore emits the version string without a newline of its own: the kernel's ends in "\n".
        f"  Version String: {header.versionstring}",
        f"  Panic String: {header.panicstring}\n",
        f"  Dump Parity: {parity_host}\n",
        f"  Bounds: {bounds}\n",
        f"  Dump Status: {status}\n",
    ]
    return "".join(lines)

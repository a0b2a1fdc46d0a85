"""Turn whatever file a user has into the raw dump payload bytes.

A FreeBSD dump reaches a host in several containers: a `vmcore.N` written by savecore (payload only),
the same compressed (`.gz`, `.zst`), a raw dump device / disk image with a kerneldumpheader leader and
trailer around the payload, an EKCD-encrypted payload, or a textdump. `open_payload` detects which,
undoes the container (decompress, decrypt, slice) and hands back one read-only buffer, so the format
parsers (`reader.formats`) never care where the bytes came from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from reader import compression, device, ekcd
from reader import kerneldumpheader as kdh
from reader.errors import FormatError, ReaderError
from reader.rawfile import (  # noqa: F401 - re-exported: the payload API lives here
    ELF_MAGIC,
    GZIP_MAGIC,
    MINIDUMP_MAGIC,
    USTAR_MAGIC,
    USTAR_MAGIC_OFFSET,
    ZSTD_MAGIC,
    Payload,
    SparseWriter,
    iter_region,
    map_file,
    spool_payload,
    write_sparse,
)


def _sniff_head(path: Path, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as e:
        raise ReaderError(f"cannot open: {e.strerror}", path=path) from e


def detect(path: str | os.PathLike[str]) -> str:
    """Name the container of *path* without decoding it.

    Returns one of "elf", "minidump", "gzip", "zstd", "textdump-tar", "device", "encrypted",
    "unknown". The order matters: a disk image whose first bytes happen to be a payload magic
    would still be a disk image, but savecore output and vmcores always start with their magic and
    a dump device's first 64 KiB are never written by the kernel, so the head decides first.
    """
    p = Path(path)
    head = _sniff_head(p)
    if head.startswith(ELF_MAGIC):
        return "elf"
    if head.startswith(MINIDUMP_MAGIC):
        return "minidump"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head[USTAR_MAGIC_OFFSET : USTAR_MAGIC_OFFSET + 5] == USTAR_MAGIC:
        return "textdump-tar"
    if device.has_dump_trailer(p):
        return "device"
    if _encrypted_key_for(p) is not None:
        return "encrypted"
    return "unknown"


def _encrypted_key_for(path: Path) -> Path | None:
    """savecore names an encrypted payload `vmcore_encrypted.N` and its key blob `key.N`."""
    name = path.name
    for suffix in ("", ".gz", ".zst"):
        stem = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else name
        if stem.startswith("vmcore_encrypted."):
            n = stem[len("vmcore_encrypted.") :]
            key = path.with_name(f"key.{n}")
            if key.exists():
                return key
    return None


def open_device_payload(
    image_path: str | os.PathLike[str], *, private_key: Any = None, sector_size: int | None = None
) -> Payload:
    """The payload of the dump on a device image, decrypted and decompressed as needed.

    Plain payloads are mapped in place (no copy); compressed or encrypted ones are decoded into a
    sparse temporary file (see `reader.compression` / `reader.ekcd`).
    """
    dd = device.find_dump(image_path, sector_size=sector_size)
    path = dd.path
    header = dd.header.to_dict()
    if dd.is_textdump:
        raise FormatError(
            "this device holds a textdump (ddb output as a ustar archive), not a memory dump; "
            "unpack it with `reader.textdump.extract_textdump()` or `fbsd-vmcore extract`",
            path=path,
            offset=dd.trailer_offset,
            field="magic",
            expected="'FreeBSD Kernel Dump'",
        )
    if dd.encrypted:
        return ekcd.open_device_encrypted(dd, private_key=private_key)
    if dd.header.compression != kdh.KERNELDUMP_COMP_NONE:
        return compression.open_compressed_region(
            path, dd.compression, dd.payload_offset, dd.payload_length, header=header
        )
    view, closers = map_file(path, dd.payload_offset, dd.payload_length)
    return Payload(
        path=path,
        buffer=view,
        header=header,
        container="device",
        source_offset=dd.payload_offset,
        _closers=closers,
    )


def _coerce_private_key(private_key: Any) -> Any:
    if private_key is None:
        return None
    return ekcd.load_private_key(private_key)


def open_payload(path: str | os.PathLike[str], *, private_key: Any = None) -> Payload:
    """Open any dump container at *path* and return its payload (see module docstring).

    `private_key` (PEM path, PEM bytes or a `cryptography` RSA private key) decrypts EKCD dumps.
    Raises `ReaderError` (or a subclass) naming the file, offset and field for anything it cannot
    read; a textdump is refused with a hint to unpack it instead.
    """
    p = Path(path)
    kind = detect(p)
    if kind in ("elf", "minidump"):
        view, closers = map_file(p)
        return Payload(path=p, buffer=view, header=None, container="plain", _closers=closers)
    if kind in ("gzip", "zstd"):
        return compression.open_compressed(p, kind)
    if kind == "device":
        return open_device_payload(p, private_key=_coerce_private_key(private_key))
    if kind == "encrypted":
        key = _encrypted_key_for(p)
        assert key is not None
        return ekcd.open_encrypted_file(p, key, private_key=_coerce_private_key(private_key))
    if kind == "textdump-tar":
        raise FormatError(
            "this is a textdump archive (ustar: ddb.txt, msgbuf.txt, panic.txt, ...), not a memory dump; "
            "read it with `tar xf` or `reader.textdump.open_textdump()`",
            path=p,
            offset=USTAR_MAGIC_OFFSET,
            field="ustar magic",
            expected="a vmcore (\\x7fELF or 'minidump'), a .gz/.zst vmcore or a dump device image",
        )
    head = _sniff_head(p, 16)
    raise FormatError(
        f"not a FreeBSD kernel dump: starts with {head.hex(' ')!s}"
        if head
        else "not a FreeBSD kernel dump: the file is empty",
        path=p,
        offset=0,
        field="magic",
        expected="\\x7fELF, 'minidump', gzip 1f 8b, zstd 28 b5 2f fd, or a kerneldumpheader "
        "in the last 512-byte block of a dump device",
    )

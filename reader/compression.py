"""gzip and zstd dumps: `vmcore.N.gz`, `vmcore.N.zst` and compressed payloads on a dump device.

The kernel compresses with `sys/kern/subr_compressor.c`: gzip is a minimal 10-byte header, raw
deflate and the usual CRC32/ISIZE trailer (so an ordinary gzip member); zstd is one frame with a
checksum. savecore copies the compressed bytes unchanged (`dumplength` of them) into `vmcore.N.gz`
/ `.zst`. We decode by streaming into a sparse temporary file that is then mapped, so memory stays
bounded whatever the dump size, and a bomb cannot allocate more than one bounded chunk at a time.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reader.errors import FormatError, TruncatedError
from reader.rawfile import GZIP_MAGIC, ZSTD_MAGIC, Payload, SparseWriter, iter_region, spool_payload

OUT_CHUNK = 1 << 20  # max bytes of output produced per decoder call (gzip)
ZSTD_IN_CHUNK = 2048  # zstd output per call is unbounded: feed little input at a time (RLE <= ~64x/byte)
GZIP_IN_CHUNK = 1 << 16  # small, so an error names a narrow compressed range
# A decoded payload larger than this is not a memory dump of any machine FreeBSD runs on.
MAX_DECODED = 1 << 46


def _is_padding(data: bytes) -> bool:
    return not data.strip(b"\0")


def decompress_zstd(chunks: Iterable[tuple[int, bytes]], out: SparseWriter, *, path: Path) -> int:
    """Decode zstd frame(s) from `(offset, bytes)` chunks into *out*; return the compressed end offset."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    in_frame = False
    last = 0
    seen = False
    for off, data in chunks:
        seen = True
        mv = memoryview(data)
        for i in range(0, len(mv), ZSTD_IN_CHUNK):
            piece = mv[i : i + ZSTD_IN_CHUNK].tobytes()
            pos = off + i
            while piece:
                if not in_frame and _is_padding(piece):
                    piece = b""
                    break
                if not in_frame and piece[:4] != ZSTD_MAGIC[: min(4, len(piece))]:
                    raise FormatError(
                        "data after the end of the zstd stream",
                        path=path,
                        offset=pos,
                        field="zstd frame",
                        expected="end of file, NUL padding or another zstd frame",
                    )
                in_frame = True
                try:
                    out.write(d.decompress(piece))
                except zstandard.ZstdError as e:
                    raise FormatError(
                        f"corrupt zstd stream: {e} (in the compressed bytes near {pos:#x}; "
                        f"{out.size} bytes decoded so far)",
                        path=path,
                        offset=pos,
                        field="zstd data",
                        expected="a valid zstd frame with matching checksum",
                    ) from e
                if d.eof:
                    rest = d.unused_data
                    pos += len(piece) - len(rest)
                    piece = rest
                    d = dctx.decompressobj()
                    in_frame = False
                else:
                    piece = b""
        last = off + len(data)
    if not seen:
        raise TruncatedError("empty zstd stream", path=path, offset=0, expected="a zstd frame")
    if in_frame:
        raise TruncatedError(
            f"the zstd stream ends inside a frame: {out.size} bytes decoded, the frame's end never came",
            path=path,
            offset=last,
            field="zstd data",
            expected="a complete zstd frame",
        )
    return last


def _decoder(kind: str) -> Any:
    if kind == "gzip":
        return decompress_gzip
    if kind == "zstd":
        return decompress_zstd
    raise FormatError(f"unknown compression {kind!r}", expected="gzip or zstd")


def decompress_gzip(chunks: Iterable[tuple[int, bytes]], out: SparseWriter, *, path: Path) -> int:
    """Inflate gzip member(s) from `(offset, bytes)` chunks into *out*; return the end offset.

    Concatenated members (pigz, `cat a.gz b.gz`) are decoded in sequence as gzip(1) does; trailing
    NUL padding (a device block's tail) is ignored; anything else after the last member, a member
    cut short, or a CRC32 mismatch is an error naming the compressed offset.
    """
    d = zlib.decompressobj(wbits=31)
    in_member = False
    last = 0
    seen = False
    for off, data in chunks:
        seen = True
        buf = data
        pos = off
        while buf:
            if not in_member:
                if _is_padding(buf):
                    break
                if buf[:2] != GZIP_MAGIC[: min(2, len(buf))]:
                    raise FormatError(
                        "data after the end of the gzip stream",
                        path=path,
                        offset=pos,
                        field="gzip member",
                        expected="end of file, NUL padding or another gzip member",
                    )
                in_member = True
            try:
                out.write(d.decompress(buf, OUT_CHUNK))
                while d.unconsumed_tail and not d.eof:
                    out.write(d.decompress(d.unconsumed_tail, OUT_CHUNK))
            except zlib.error as e:
                raise FormatError(
                    f"corrupt gzip stream: {e} (in the compressed bytes {pos:#x}..{pos + len(buf):#x}; "
                    f"{out.size} bytes decoded so far)",
                    path=path,
                    offset=pos,
                    field="gzip data",
                    expected="a valid deflate stream with a matching CRC32 trailer",
                ) from e
            if d.eof:
                rest = d.unused_data
                pos += len(buf) - len(rest)
                buf = rest
                d = zlib.decompressobj(wbits=31)
                in_member = False
            else:
                buf = b""
        last = off + len(data)
    if not seen:
        raise TruncatedError("empty gzip stream", path=path, offset=0, expected="a gzip member")
    if in_member:
        raise TruncatedError(
            f"the gzip stream ends early: {out.size} bytes decoded, the end of the member and its "
            "CRC32 trailer never came",
            path=path,
            offset=last,
            field="gzip data",
            expected="a complete gzip member",
        )
    return last


def open_compressed(path: str | os.PathLike[str], kind: str) -> Payload:
    """Decode a whole `.gz` / `.zst` vmcore file (see module docstring)."""
    p = Path(path)
    size = os.path.getsize(p)
    return open_compressed_region(p, kind, 0, size, header=None, container=kind)


def open_compressed_region(
    path: str | os.PathLike[str],
    kind: str,
    offset: int,
    length: int,
    *,
    header: dict[str, Any] | None = None,
    container: str | None = None,
) -> Payload:
    """Decode `length` compressed bytes at `offset` of *path* (a device payload or a whole file)."""
    p = Path(path)
    decode = _decoder(kind)
    chunk = GZIP_IN_CHUNK
    return spool_payload(
        p,
        lambda w: decode(iter_region(p, offset, length, chunk), w, path=p),
        container=container or f"device+{kind}",
        header=header,
        source_offset=offset,
        limit=MAX_DECODED,
    )


def decompress_file(src: str | os.PathLike[str], kind: str, dst_fd: int) -> int:
    """Decode a whole compressed file into `dst_fd`, sparse; return the decoded size."""
    p = Path(src)
    w = SparseWriter(dst_fd, path=p, limit=MAX_DECODED)
    _decoder(kind)(iter_region(p, 0, os.path.getsize(p), GZIP_IN_CHUNK), w, path=p)
    return w.close()

"""The raw-file layer under every dump container: payload magics, `Payload`, mapping and spooling.

The bottom of the container stack (rawfile <- compression <- ekcd <- device <- textdump, source): it
imports no other container module, so `device`, `compression`, `ekcd`, `textdump` and `source` can
all use it without import cycles.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reader.errors import FormatError, ReaderError, TruncatedError

ELF_MAGIC = b"\x7fELF"
MINIDUMP_MAGIC = b"minidump"
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
USTAR_MAGIC = b"ustar"
USTAR_MAGIC_OFFSET = 257


@dataclass
class Payload:
    """The uncompressed, decrypted payload of a dump, whatever container it came in.

    `buffer` is read-only (an mmap or a memoryview slice of one). `path` is the file the user gave;
    `header` the decoded kerneldumpheader when the container had one (device image), else None.
    `container` says what was undone ("plain", "gzip", "zstd", "device", "encrypted", and
    combinations such as "device+zstd"), `source_offset` where the payload starts in `path`.
    """

    path: Path
    buffer: Any
    header: dict[str, Any] | None = None
    container: str = "plain"
    source_offset: int = 0
    _closers: list[Any] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.buffer)

    def close(self) -> None:
        """Release the mapping(s). Views handed out from `buffer` must be released first."""
        buf, self.buffer = self.buffer, memoryview(b"")
        if isinstance(buf, memoryview):
            buf.release()
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()

    def __enter__(self) -> Payload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def map_file(path: Path, offset: int = 0, length: int | None = None) -> tuple[memoryview, list[Any]]:
    """Map `length` bytes of *path* from `offset` read-only; return a view and its closers.

    mmap offsets must be multiples of the allocation granularity, so the mapping starts at the
    granule below `offset` and the view is sliced; the payload on a dump device begins at
    `mediasize - blocksize - dumpextent`, which is only sector-aligned.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ReaderError(f"cannot open: {e.strerror}", path=path) from e
    try:
        size = os.fstat(fd).st_size
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise ReaderError(
                f"range [{offset:#x}, {offset + length:#x}) lies outside the file of {size:#x} bytes",
                path=path,
                offset=offset,
            )
        if length == 0:
            raise FormatError("empty payload", path=path, offset=offset, expected="a non-empty dump")
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        m = mmap.mmap(fd, length + (offset - base), access=mmap.ACCESS_READ, offset=base)
    finally:
        os.close(fd)
    view = memoryview(m)[offset - base : offset - base + length]

    def _close() -> None:
        view.release()
        # A caller may still hold a view derived from the buffer; the mapping is then freed when
        # that view is garbage collected. Never fail a close() over it.
        with contextlib.suppress(BufferError):
            m.close()

    return view, [_close]


SPARSE_BLOCK = 4096
_FLUSH_AT = 1 << 20


class SparseWriter:
    """Append-only writer that turns aligned all-zero 4 KiB blocks into holes.

    savecore writes uncompressed vmcores sparse (`sparsefwrite()`); decompressed and decrypted
    payloads are spooled the same way so a mostly-empty 1 GiB dump costs little disk. `close()`
    truncates the file to its logical length so trailing holes still count.
    """

    def __init__(self, fd: int, *, path: str | os.PathLike[str] | None = None, limit: int | None = None):
        self.fd = fd
        self.path = path
        self.limit = limit
        self.size = 0  # bytes handed to write()
        self._flushed = 0
        self._pending = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise FormatError(
                f"output grows past {self.limit} bytes",
                path=self.path,
                field="decoded size",
                expected=f"at most {self.limit} bytes",
            )
        self._pending += data
        if len(self._pending) >= _FLUSH_AT:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        buf = self._pending
        n = len(buf) if final else len(buf) - len(buf) % SPARSE_BLOCK
        if n == 0:
            return
        with memoryview(buf) as mv:
            write_sparse(self.fd, mv[:n], self._flushed)
        del buf[:n]
        self._flushed += n

    def close(self) -> int:
        """Flush, set the file length, return it."""
        self._flush(final=True)
        os.ftruncate(self.fd, self._flushed)
        return self._flushed


def write_sparse(fd: int, data: memoryview, offset: int) -> None:
    """pwrite *data* at *offset*, leaving aligned all-zero 4 KiB blocks (relative to *data*) as holes."""
    import numpy as np

    n = len(data)
    nblocks = n // SPARSE_BLOCK
    if nblocks:
        words = np.frombuffer(data, dtype=np.uint64, count=nblocks * (SPARSE_BLOCK // 8))
        nonzero = words.reshape(nblocks, SPARSE_BLOCK // 8).any(axis=1)
        del words
        edges = np.flatnonzero(np.diff(np.concatenate(([False], nonzero, [False])).astype(np.int8)))
        for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            _pwrite_all(fd, data[start * SPARSE_BLOCK : end * SPARSE_BLOCK], offset + start * SPARSE_BLOCK)
    tail = data[nblocks * SPARSE_BLOCK :]
    if len(tail) and any(tail):
        _pwrite_all(fd, tail, offset + nblocks * SPARSE_BLOCK)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def spool_payload(
    path: Path,
    produce: Any,
    *,
    container: str,
    header: dict[str, Any] | None = None,
    source_offset: int = 0,
    limit: int | None = None,
) -> Payload:
    """Run `produce(writer)` into an unnamed sparse temporary file and map the result read-only.

    The temporary file lives in `$TMPDIR` (tempfile's rules) and disappears when the mapping is
    closed, so decoding a 1 GiB dump needs disk, not memory.
    """
    import tempfile

    try:
        with tempfile.TemporaryFile(prefix="fbsd-vmcore-") as tf:
            w = SparseWriter(tf.fileno(), path=path, limit=limit)
            produce(w)
            size = w.close()
            if size == 0:
                raise FormatError(
                    "the decoded payload is empty",
                    path=path,
                    offset=source_offset,
                    expected="a non-empty dump",
                )
            m = mmap.mmap(tf.fileno(), size, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ReaderError(
            f"cannot spool the decoded payload to a temporary file in {tempfile.gettempdir()} "
            f"({e.strerror}); set TMPDIR to a file system with room for it",
            path=path,
        ) from e
    view = memoryview(m)

    def _close() -> None:
        view.release()
        with contextlib.suppress(BufferError):
            m.close()

    return Payload(
        path=path,
        buffer=view,
        header=header,
        container=container,
        source_offset=source_offset,
        _closers=[_close],
    )


def iter_region(path: Path, offset: int, length: int, chunk: int = 1 << 20) -> Any:
    """Yield `(file_offset, bytes)` chunks of `[offset, offset+length)`.

    Raises TruncatedError when the file ends early.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ReaderError(f"cannot open: {e.strerror}", path=path) from e
    try:
        pos, end = offset, offset + length
        while pos < end:
            data = os.pread(fd, min(chunk, end - pos), pos)
            if not data:
                raise TruncatedError(
                    f"the file ends at {pos:#x}, inside a region that should run to {end:#x}",
                    path=path,
                    offset=pos,
                    expected=f"{length} bytes from {offset:#x}",
                )
            yield pos, data
            pos += len(data)
    finally:
        os.close(fd)

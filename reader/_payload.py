"""Open a dump file as one read-only buffer.

The container layer (`reader.source.open_payload`, owned by reader-containers) unwraps
compressed, encrypted and raw-device dumps. Until it exists this module maps plain files
itself, so the format layer never cares where its bytes came from.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FormatError, ReaderError


@dataclass
class PlainPayload:
    """A plain (uncompressed, unencrypted) vmcore mapped read-only with mmap."""

    path: Path
    buffer: Any
    header: dict | None = None
    _mm: mmap.mmap | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._mm is not None:
            # BufferError: a caller still holds a view into the mapping; the GC unmaps it later.
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None

    def __enter__(self) -> PlainPayload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_plain(path: Path) -> PlainPayload:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ReaderError(f"cannot open: {exc.strerror}", path=path) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise FormatError("file is empty", path=path, offset=0, field="magic",
                              expected="a minidump or ELF vmcore")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise ReaderError(f"cannot map: {exc.strerror}", path=path) from None
    finally:
        os.close(fd)
    with contextlib.suppress(AttributeError, OSError):
        mm.madvise(mmap.MADV_RANDOM)
    return PlainPayload(path=path, buffer=mm, _mm=mm)


def open_payload(path: str | os.PathLike, *, private_key: Any = None):
    """The uncompressed, decrypted dump bytes of `path` (container layer if present)."""
    try:
        from . import source  # reader-containers
    except ImportError:
        source = None
    if source is not None and hasattr(source, "open_payload"):
        return source.open_payload(path, private_key=private_key)
    if private_key is not None:
        raise ReaderError("encrypted dumps need reader.source (not installed)", path=path)
    return _open_plain(Path(path))

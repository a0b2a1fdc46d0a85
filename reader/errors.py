"""The one exception family every reader failure ends in.

Messages name the file, the byte offset, the field and what was expected, so a user can tell
a truncated copy from a corrupt header from a bug in the reader without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class ReaderError(Exception):
    """Base class: anything wrong with a dump, a kernel or a disk image."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        offset: int | None = None,
        field: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.offset = offset
        self.field = field
        self.expected = expected
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.offset is not None:
            parts.append(f"offset {self.offset:#x}")
        if self.field is not None:
            parts.append(f"field {self.field}")
        head = ": ".join([", ".join(parts)] if parts else [])
        msg = f"{head}: {self.detail}" if head else self.detail
        if self.expected is not None:
            msg += f" (expected {self.expected})"
        return msg


class FormatError(ReaderError):
    """A header or section does not match the format it claims to be."""


class TruncatedError(ReaderError):
    """The file ends before data its own headers promise."""


class AddressError(ReaderError):
    """A virtual or physical address is not mapped, or its page is absent from the dump."""

    def __init__(self, message: str, *, address: int, **kw) -> None:
        self.address = address
        super().__init__(message, **kw)


class SymbolError(ReaderError):
    """A kernel symbol is missing, or no kernel was given where one is needed."""


class DecryptionError(ReaderError):
    """An encrypted (EKCD) dump cannot be decrypted with the key given."""


class KernelMismatchError(ReaderError):
    """The kernel file given is not the kernel that wrote the dump (version string / build-id differ)."""

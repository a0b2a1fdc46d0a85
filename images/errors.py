"""Errors of the image layer; each message carries its evidence (URL, status, offsets, digests, paths)."""

from __future__ import annotations


class ImageError(Exception):
    """Base class: anything that stops us from handing out a verified guest image."""


class CatalogueError(ImageError):
    """The catalogue file is unreadable or malformed."""


class UnknownReleaseError(ImageError):
    """The requested release is not in the catalogue."""


class DownloadError(ImageError):
    """An HTTP transfer failed; carries URL, HTTP status and byte offset."""

    def __init__(self, message: str, *, url: str, status: int | None = None, offset: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status
        self.offset = offset


class CacheWriteError(ImageError):
    """Writing into the cache failed (disk full, permissions): not retried, not the network's fault."""


class ChecksumFileError(ImageError):
    """The published checksum file does not list our image, or cannot be parsed."""


class ChecksumMismatchError(ImageError):
    """The downloaded bytes do not have the expected SHA-256 (the download was deleted)."""

    def __init__(self, message: str, *, url: str, expected: str, actual: str):
        super().__init__(message)
        self.url = url
        self.expected = expected
        self.actual = actual


class NotCachedError(ImageError):
    """Offline mode and the cache does not hold what was asked for."""


class ConversionError(ImageError):
    """Decompression or ``qemu-img convert`` failed."""


class GrubError(ImageError):
    """Building a GRUB ISO failed, or GRUB's modules are not the ones we know how to fix."""


class PreparationError(ImageError):
    """Preparing an image in a guest failed; carries the console tail."""

"""FreeBSD guest images: catalogue, verified download + cache, preparation, GRUB ISOs for bare kernels.

Public API::

    images.fetch(release, *, cache=None, offline=False, progress=True) -> Path   # read-only qcow2 base
    images.prepare(release_or_base, ...) -> PreparedImage                         # see images.preparation
    images.grub_iso.build_kernel_iso(kernel, kenv, out) -> Path
    images.catalogue.load_catalogue() -> Catalogue
"""

from images.cache import ImageCache, default_cache_dir
from images.catalogue import Catalogue, CatalogueImage, load_catalogue
from images.download import fetch
from images.errors import (
    ChecksumFileError,
    ChecksumMismatchError,
    DownloadError,
    GrubError,
    ImageError,
    NotCachedError,
    PreparationError,
    UnknownReleaseError,
)
from images.preparation import PreparedImage, prepare

__all__ = [
    "Catalogue",
    "CatalogueImage",
    "ChecksumFileError",
    "ChecksumMismatchError",
    "DownloadError",
    "GrubError",
    "ImageCache",
    "ImageError",
    "NotCachedError",
    "PreparationError",
    "PreparedImage",
    "UnknownReleaseError",
    "default_cache_dir",
    "fetch",
    "load_catalogue",
    "prepare",
]

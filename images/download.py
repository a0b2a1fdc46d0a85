"""Download an official image, verify it, and store a read-only qcow2 base in the cache.

The order is the point: bytes are downloaded to ``<file>.part`` (resumable with HTTP Range),
hashed and compared with a pinned or published SHA-256, and only then decompressed and
converted. A mismatch deletes the download (it is ours) and says which URL gave which digest.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from harness.util.progress import transfer_progress
from images.cache import ImageCache, make_read_only
from images.catalogue import Catalogue, CatalogueImage, load_catalogue
from images.checksums import digest_for, sha256_file
from images.convert import CHUNK, decompress_xz, qemu_img_convert, source_format
from images.errors import CacheWriteError, ChecksumMismatchError, DownloadError, ImageError, NotCachedError

USER_AGENT = "fbsd-hil/0.1 (+https://github.com/freebsd)"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


@dataclass(frozen=True)
class Transfer:
    """What one download call did: where the bytes are and whether it resumed."""

    path: Path
    size: int
    resumed_from: int


def _open(url: str, offset: int, timeout: float, validator: str | None = None):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            # The file changed on the server since the partial download (e.g. a new Latest/ image):
            # the server then sends the whole new file (200) instead of splicing two versions.
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https only, checked)


def discard_partial(part: Path) -> None:
    """Remove a download of ours and its If-Range validator."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".validator").unlink(missing_ok=True)


def _check_scheme(url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"{url}: only http:// and https:// URLs are supported", url=url)


def fetch_text(url: str, *, timeout: float = 60.0, limit: int = 4 << 20) -> str:
    """A small text file (the checksum file), with the same error evidence as downloads."""
    _check_scheme(url)
    try:
        with _open(url, 0, timeout) as response:
            data = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}", url=url, status=exc.code) from exc
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect: {reason}", url=url) from exc
    if len(data) > limit:
        raise DownloadError(f"{url}: larger than {limit} bytes, not a checksum file", url=url, status=200)
    return data.decode("utf-8", errors="replace")


def download(url: str, part: Path, *, progress: bool = True, timeout: float = 60.0) -> Transfer:
    """Download ``url`` into ``part``, continuing from its current length with a Range request.

    On a lost connection the partial file stays and DownloadError says at which byte; the next
    call resumes there. A server that ignores Range (200 instead of 206) makes us start over.
    """
    _check_scheme(url)
    offset = part.stat().st_size if part.exists() else 0
    validator_file = part.with_name(part.name + ".validator")
    validator = None
    if offset and validator_file.is_file():
        validator = validator_file.read_text(encoding="utf-8").strip() or None
    try:
        response = _open(url, offset, timeout, validator)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _total_from_unsatisfied(exc.headers.get("Content-Range"))
            if total == offset:
                return Transfer(part, offset, offset)  # already complete
            # Our partial file is longer than the server's file: a different file now. Start over.
            print(f"fbsd-hil: {url}: HTTP 416 for bytes={offset}- (server size {total}); "
                  f"discarding the stale partial download and starting again", file=sys.stderr)
            discard_partial(part)
            return download(url, part, progress=progress, timeout=timeout)
        where = f" (Range from byte {offset})" if offset else ""
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}{where}", url=url, status=exc.code,
                            offset=offset) from exc
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{url}: cannot connect: {reason}", url=url, offset=offset) from exc

    with response:
        status = response.status
        mode, resumed_from, offset, total = _resume_or_restart(response, url, offset)
        if mode == "wb":
            _remember_validator(response, validator_file)
        written = _copy_body(response, part, mode, offset, total, url=url, progress=progress)
    if total is not None and written != total:
        raise DownloadError(
            f"{url}: connection closed at byte {written} of {total} (HTTP {status}); "
            f"{part} is kept and the next fetch resumes from there",
            url=url, status=status, offset=written,
        )
    return Transfer(part, written, resumed_from)


def _resume_or_restart(response, url: str, offset: int) -> tuple[str, int, int, int | None]:
    """From the response status: append to the partial file (206 at our offset) or start over (200).
    Returns (file mode, resumed from, the offset written from, total size if known)."""
    status = response.status
    if offset and status == 206:
        start, total = _parse_content_range(response.headers.get("Content-Range"), url, offset)
        if start != offset:
            raise DownloadError(
                f"{url}: asked for bytes from {offset}, server sent from {start}", url=url,
                status=status, offset=offset,
            )
        return "ab", offset, offset, total
    if status == 200:
        length = response.headers.get("Content-Length")
        return "wb", 0, 0, int(length) if length and length.isdigit() else None
    raise DownloadError(f"{url}: unexpected HTTP {status}", url=url, status=status, offset=offset)


def _remember_validator(response, validator_file: Path) -> None:
    """A strong ETag (or else Last-Modified) identifies this version for a later If-Range."""
    etag = response.headers.get("ETag")
    strong = etag if etag and not etag.startswith("W/") else None
    new_validator = strong or response.headers.get("Last-Modified")
    if new_validator:
        validator_file.write_text(new_validator + "\n", encoding="utf-8")
    else:
        validator_file.unlink(missing_ok=True)


def _copy_body(
    response, part: Path, mode: str, written: int, total: int | None, *, url: str, progress: bool
) -> int:
    """The response body into `part` with a progress bar; returns the bytes the file now holds."""
    name = part.name.removesuffix(".part")
    with open(part, mode) as out, transfer_progress(progress, name, total, start=written) as bar:
        while True:
            try:
                block = response.read(CHUNK)
            except (TimeoutError, OSError, HTTPException) as exc:
                raise DownloadError(
                    f"{url}: connection lost at byte {written}"
                    f"{f' of {total}' if total is not None else ''} ({exc}); "
                    f"{part} is kept and the next fetch resumes from there",
                    url=url, status=response.status, offset=written,
                ) from exc
            if not block:
                return written
            try:
                out.write(block)
            except OSError as exc:  # disk full, quota: not the network's fault
                raise CacheWriteError(
                    f"downloading {url}: cannot write {part} at byte {written}: {exc}"
                ) from exc
            written += len(block)
            bar(written)


def _parse_content_range(value: str | None, url: str, offset: int) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        raise DownloadError(f"{url}: 206 with unusable Content-Range {value!r}", url=url, status=206,
                            offset=offset)
    total = None if match[3] == "*" else int(match[3])
    return int(match[1]), total


def _total_from_unsatisfied(value: str | None) -> int | None:
    match = re.match(r"^bytes \*/(\d+)$", value or "")
    return int(match[1]) if match else None


def _expected_digest(image: CatalogueImage, timeout: float) -> tuple[str, str]:
    """(digest, where it came from): the pin, else the checksum file beside the image."""
    if image.sha256:
        return image.sha256, "pinned in the catalogue"
    text = fetch_text(image.checksum_url, timeout=timeout)
    return digest_for(text, image.filename, source=image.checksum_url), image.checksum_url


def cached_base(image: CatalogueImage, cache: ImageCache) -> Path | None:
    """The cached base for ``image`` without any network access (pin first, then the index)."""
    digest = image.sha256
    if digest is None:
        entry = cache.read_json(cache.index_path(image.key)) or {}
        if entry.get("url") == image.url:
            digest = entry.get("sha256")
    if digest and cache.base_image(digest).is_file() and cache.base_meta(digest).is_file():
        return cache.base_image(digest)
    return None


def fetch(
    release: str,
    *,
    cache: ImageCache | Path | str | None = None,
    offline: bool = False,
    progress: bool = True,
    catalogue: Catalogue | None = None,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Path of the verified, read-only qcow2 base for ``release`` (downloading it when needed).

    ``offline=True`` never touches the network: a cache miss raises NotCachedError saying what
    is missing and how to get it.
    """
    cache = cache if isinstance(cache, ImageCache) else ImageCache(cache)
    catalogue = catalogue or load_catalogue()
    image = catalogue.lookup(release)

    if offline:
        found = cached_base(image, cache)
        if found is None:
            pin = f"pinned sha256 {image.sha256}" if image.sha256 else "no digest recorded"
            raise NotCachedError(
                f"offline: FreeBSD {image.key} is not in the cache {cache.root} ({pin}); "
                f"fetch it once with network access: `fbsd-hil images fetch {image.release}` "
                f"(downloads {image.url})"
            )
        return found

    with cache.lock(image.key):
        try:
            expected, origin = _expected_digest(image, timeout)
        except DownloadError as exc:
            found = cached_base(image, cache)
            if found is None:
                raise
            raise DownloadError(
                f"{exc}; a cached image exists ({found}): use offline mode "
                f"(`fbsd-hil images fetch --offline {image.release}`, fetch(..., offline=True)) to use it",
                url=exc.url, status=exc.status, offset=exc.offset,
            ) from exc
        target = cache.base_image(expected)
        if target.is_file() and cache.base_meta(expected).is_file():
            _record_index(cache, image, expected)
            return target

        part = cache.part_path(image.filename)
        transfer = _download_with_retries(image.url, part, progress=progress, timeout=timeout,
                                          retries=retries)
        actual = sha256_file(part)
        if actual != expected:
            discard_partial(part)
            raise ChecksumMismatchError(
                f"checksum mismatch for {image.url}: expected sha256 {expected} ({origin}), "
                f"got {actual} over {transfer.size} bytes; the download was deleted",
                url=image.url, expected=expected, actual=actual,
            )
        _store_base(image, part, expected, cache, progress=progress)
        _record_index(cache, image, expected, origin=origin, resumed_from=transfer.resumed_from)
        return target


def _download_with_retries(url: str, part: Path, *, progress: bool, timeout: float, retries: int) -> Transfer:
    attempt = 0
    while True:
        try:
            return download(url, part, progress=progress, timeout=timeout)
        except DownloadError as exc:
            # Lost connections resume; HTTP errors (404, 403, ...) are answers, not accidents.
            if attempt >= retries or (exc.status is not None and exc.status >= 400):
                raise
            attempt += 1
            print(f"fbsd-hil: {exc}; retrying ({attempt}/{retries})", file=sys.stderr)


def _store_base(image: CatalogueImage, part: Path, digest: str, cache: ImageCache, *, progress: bool) -> None:
    compressed, fmt = source_format(image.filename)
    target = cache.base_image(digest)
    tmp_raw = target.with_name(f"{digest}.{fmt}.tmp")
    tmp_qcow = target.with_name(f"{digest}.qcow2.tmp")
    try:
        if compressed:
            total = part.stat().st_size
            with transfer_progress(progress, f"decompress {image.filename}", total) as bar:
                raw_size = decompress_xz(part, tmp_raw, on_progress=bar)
            source = tmp_raw
        else:
            raw_size = part.stat().st_size
            source = part
        qemu_img_convert(source, tmp_qcow, src_format=fmt)
        os.replace(tmp_qcow, target)
        make_read_only(target)
    finally:
        tmp_raw.unlink(missing_ok=True)
        tmp_qcow.unlink(missing_ok=True)
    cache.write_json(
        cache.base_meta(digest),
        {
            "release": image.release,
            "flavour": image.flavour,
            "url": image.url,
            "sha256": digest,
            "download_size": part.stat().st_size,
            "image_size": raw_size,
            "root": image.root,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    discard_partial(part)


def _record_index(cache: ImageCache, image: CatalogueImage, digest: str, **extra) -> None:
    cache.write_json(
        cache.index_path(image.key),
        {"release": image.release, "flavour": image.flavour, "url": image.url, "sha256": digest, **extra},
    )


__all__ = ["ImageError", "Transfer", "cached_base", "download", "fetch", "fetch_text"]

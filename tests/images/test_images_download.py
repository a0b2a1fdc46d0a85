"""fetch() against a real HTTP server on 127.0.0.1: verify, cache, resume, offline, errors."""

from __future__ import annotations

import hashlib
import stat
import subprocess
from pathlib import Path

import pytest
from images_testlib import (
    CHECKSUM_PATH,
    IMAGE_NAME,
    IMAGE_PATH,
    RELEASE,
    bsd_checksum_line,
    make_image,
)

from images import (
    ChecksumFileError,
    ChecksumMismatchError,
    DownloadError,
    ImageCache,
    NotCachedError,
    fetch,
)
from images.catalogue import Catalogue
from images.errors import ConversionError


def assert_same_disk(raw: bytes, qcow2: Path, tmp_path: Path) -> None:
    """qemu-img compares guest-visible contents of the raw original and the cached qcow2."""
    raw_path = tmp_path / "expected.raw"
    raw_path.write_bytes(raw)
    proc = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw_path), str(qcow2)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fetch_verifies_converts_and_caches_read_only(server, catalogue, cache_dir, image, tmp_path):
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)

    assert path == cache_dir / "base" / f"{image.xz_sha256}.qcow2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert path.read_bytes()[:4] == b"QFI\xfb"  # qcow2 magic
    assert_same_disk(image.raw, path, tmp_path)
    assert not list((cache_dir / "downloads").iterdir()), "the verified download is removed after conversion"
    meta = ImageCache(cache_dir).read_json(ImageCache(cache_dir).base_meta(image.xz_sha256))
    assert meta["url"] == server.url + IMAGE_PATH and meta["sha256"] == image.xz_sha256
    assert meta["image_size"] == len(image.raw)

    # Second fetch: only the checksum file is asked for; the image comes from the cache.
    before = len(server.requests_for(IMAGE_PATH))
    assert fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False) == path
    assert len(server.requests_for(IMAGE_PATH)) == before == 1
    assert len(server.requests_for(CHECKSUM_PATH)) == 2


def test_mirror_environment_variable_redirects_the_shipped_catalogue(server, cache_dir, monkeypatch, image):
    monkeypatch.setenv("FBSD_HIL_MIRROR", server.url + "/")
    monkeypatch.setenv("FBSD_HIL_CACHE", str(cache_dir))
    path = fetch(RELEASE, progress=True)  # default catalogue, default cache from the environment
    assert path == cache_dir / "base" / f"{image.xz_sha256}.qcow2"
    assert [r.status for r in server.requests_for(IMAGE_PATH)] == [200]


def test_tampered_image_is_deleted_and_named_loudly(server, catalogue, cache_dir, image):
    tampered = bytearray(image.xz)
    tampered[len(tampered) // 2] ^= 0xFF
    server.state.files[IMAGE_PATH] = bytes(tampered)
    actual = hashlib.sha256(tampered).hexdigest()

    with pytest.raises(ChecksumMismatchError) as excinfo:
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)

    message = str(excinfo.value)
    assert server.url + IMAGE_PATH in message
    assert image.xz_sha256 in message and actual in message
    assert server.url + CHECKSUM_PATH in message  # where the expected digest came from
    assert (excinfo.value.expected, excinfo.value.actual) == (image.xz_sha256, actual)
    assert not ImageCache(cache_dir).part_path(IMAGE_NAME).exists()
    assert not list((cache_dir / "base").glob("*.qcow2"))


def test_truncated_download_is_kept_then_resumed_with_range(server, catalogue, cache_dir, image, tmp_path):
    half = len(image.xz) // 2
    server.state.drop_after[IMAGE_PATH] = half

    with pytest.raises(DownloadError) as excinfo:
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False, retries=0)
    assert excinfo.value.offset == half
    assert f"byte {half} of {len(image.xz)}" in str(excinfo.value)
    assert server.url + IMAGE_PATH in str(excinfo.value)
    part = ImageCache(cache_dir).part_path(IMAGE_NAME)
    assert part.stat().st_size == half

    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False, retries=0)

    records = server.requests_for(IMAGE_PATH)
    assert [(r.range, r.status) for r in records] == [(None, 200), (f"bytes={half}-", 206)]
    assert_same_disk(image.raw, path, tmp_path)
    assert not part.exists()


def test_image_replaced_on_the_server_between_attempts_is_not_spliced(server, catalogue, cache_dir, image,
                                                                     tmp_path):
    """Latest/ images are rebuilt: If-Range with the first response's ETag makes the server send the
    whole new file instead of the tail of the new one after the head of the old one."""
    server.state.drop_after[IMAGE_PATH] = 3000
    with pytest.raises(DownloadError):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False, retries=0)
    newer = make_image(seed=2)
    server.state.files[IMAGE_PATH] = newer.xz
    server.state.files[CHECKSUM_PATH] = bsd_checksum_line(IMAGE_NAME, newer.xz).encode()

    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False, retries=0)

    first, second = server.requests_for(IMAGE_PATH)
    assert (second.range, second.if_range, second.status) == ("bytes=3000-", first_etag(image), 200)
    assert path.name == f"{newer.xz_sha256}.qcow2"
    assert_same_disk(newer.raw, path, tmp_path)
    assert not list((cache_dir / "downloads").iterdir())


def first_etag(image) -> str:
    return '"' + hashlib.sha256(image.xz).hexdigest()[:16] + '"'


def test_lost_connection_is_resumed_within_one_fetch(server, catalogue, cache_dir, image):
    server.state.drop_after[IMAGE_PATH] = 1000
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert [r.range for r in server.requests_for(IMAGE_PATH)] == [None, "bytes=1000-"]
    assert path.name == f"{image.xz_sha256}.qcow2"


def test_server_ignoring_range_restarts_from_zero_and_still_verifies(server, catalogue, cache_dir, image):
    server.state.drop_after[IMAGE_PATH] = 5000
    server.state.ignore_range = True
    with pytest.raises(DownloadError):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False, retries=0)
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False, retries=0)
    records = server.requests_for(IMAGE_PATH)
    assert [(r.range, r.status) for r in records] == [(None, 200), ("bytes=5000-", 200)]
    assert path.is_file()


def test_complete_partial_from_an_interrupted_run_is_verified_not_refetched(
    server, catalogue, cache_dir, image
):
    part = ImageCache(cache_dir).part_path(IMAGE_NAME)
    part.write_bytes(image.xz)  # e.g. killed between download and verification
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert [(r.range, r.status) for r in server.requests_for(IMAGE_PATH)] == [
        (f"bytes={len(image.xz)}-", 416)
    ]
    assert path.is_file()


def test_offline_uses_the_cache_without_network(server, catalogue, cache_dir, image):
    online = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    n_requests = len(server.state.log)
    assert fetch(RELEASE, cache=cache_dir, catalogue=catalogue, offline=True) == online
    assert len(server.state.log) == n_requests


def test_offline_miss_says_what_is_missing_and_how_to_get_it(server, catalogue, cache_dir):
    with pytest.raises(NotCachedError) as excinfo:
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, offline=True)
    message = str(excinfo.value)
    assert "offline" in message and "14.3-BASIC-CI" in message
    assert str(cache_dir) in message
    assert "fbsd-hil images fetch 14.3" in message
    assert server.url + IMAGE_PATH in message
    assert server.state.log == []


def test_404_names_the_url_and_status(server, catalogue, cache_dir):
    del server.state.files[IMAGE_PATH]
    with pytest.raises(DownloadError) as excinfo:
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert excinfo.value.status == 404
    assert f"{server.url}{IMAGE_PATH}: HTTP 404" in str(excinfo.value)
    assert len(server.requests_for(IMAGE_PATH)) == 1, "HTTP errors are answers, not retried"


def test_missing_checksum_file_is_a_clear_error(server, catalogue, cache_dir):
    del server.state.files[CHECKSUM_PATH]
    with pytest.raises(DownloadError, match=r"CHECKSUM\.SHA256: HTTP 404"):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert server.requests_for(IMAGE_PATH) == [], "never download what cannot be verified"


def test_checksum_file_without_our_image(server, catalogue, cache_dir):
    server.state.files[CHECKSUM_PATH] = bsd_checksum_line("something-else.raw.xz", b"x").encode()
    with pytest.raises(ChecksumFileError, match=f"does not list {IMAGE_NAME}.*something-else"):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)


def test_connection_refused_names_the_url(cache_dir):
    from images_http_server import ImageHTTPServer

    with ImageHTTPServer() as srv:
        url = srv.url
    catalogue = Catalogue.load(mirror=url)
    with pytest.raises(DownloadError, match=f"{url}.*cannot connect"):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)


def _pinned_catalogue(server_url: str, sha256: str) -> Catalogue:
    return Catalogue.from_mapping(
        {
            "base_url": server_url,
            "images": [{"release": RELEASE, "flavour": "BASIC-CI", "sha256": sha256}],
            "flavours": {
                "BASIC-CI": {
                    "path": IMAGE_PATH.lstrip("/").replace("14.3", "{version}"),
                    "checksum_file": "CHECKSUM.SHA256",
                }
            },
        },
        source="test catalogue",
    )


def test_pinned_digest_needs_no_checksum_file_and_works_offline_after(server, cache_dir, image):
    catalogue = _pinned_catalogue(server.url, image.xz_sha256.upper())
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert server.requests_for(CHECKSUM_PATH) == []
    assert fetch(RELEASE, cache=cache_dir, catalogue=catalogue, offline=True) == path


def test_wrong_pin_fails_even_when_the_published_file_agrees_with_the_server(server, cache_dir, image):
    pin = hashlib.sha256(b"what we expect").hexdigest()
    catalogue = _pinned_catalogue(server.url, pin)
    with pytest.raises(ChecksumMismatchError, match="pinned in the catalogue"):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert not ImageCache(cache_dir).part_path(IMAGE_NAME).exists()


def test_verified_but_corrupt_xz_is_a_conversion_error_and_caches_nothing(server, catalogue, cache_dir):
    broken = make_image(seed=7).xz[:-200]  # a truncated xz stream, published with its own digest
    server.state.files[IMAGE_PATH] = broken
    server.state.files[CHECKSUM_PATH] = bsd_checksum_line(IMAGE_NAME, broken).encode()
    with pytest.raises(ConversionError, match="cannot decompress"):
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert not list((cache_dir / "base").iterdir())


def test_checksum_unreachable_with_a_cached_image_points_to_offline_mode(server, catalogue, cache_dir):
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    del server.state.files[CHECKSUM_PATH]
    with pytest.raises(DownloadError) as excinfo:
        fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert "HTTP 404" in str(excinfo.value) and str(path) in str(excinfo.value)
    assert "--offline" in str(excinfo.value)


def test_cache_write_failure_is_reported_as_such_and_not_retried(server, cache_dir):
    """A real EFBIG (RLIMIT_FSIZE in a child process) while writing the .part file: the error says
    which file could not be written at which byte, and is not mistaken for a network problem."""
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import resource, signal, sys
        from images import fetch
        from images.catalogue import load_catalogue
        from images.errors import CacheWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            fetch({RELEASE!r}, cache={str(cache_dir)!r}, catalogue=load_catalogue(mirror={server.url!r}),
                  progress=False)
        except CacheWriteError as exc:
            print(exc)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"cannot write {cache_dir / 'downloads' / (IMAGE_NAME + '.part')} at byte" in proc.stdout
    assert "File too large" in proc.stdout
    assert len(server.requests_for(IMAGE_PATH)) == 1


def test_stale_partial_longer_than_the_server_file_is_discarded_and_refetched(server, catalogue, cache_dir,
                                                                              image):
    part = ImageCache(cache_dir).part_path(IMAGE_NAME)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"x" * (len(image.xz) + 100))  # left by an older, bigger image
    path = fetch(RELEASE, cache=cache_dir, catalogue=catalogue, progress=False)
    assert [(r.range, r.status) for r in server.requests_for(IMAGE_PATH)] == [
        (f"bytes={len(image.xz) + 100}-", 416), (None, 200)]
    assert path.name == f"{image.xz_sha256}.qcow2"

"""Fixtures for the image tests: generated small disk images served by a real local HTTP server."""

from __future__ import annotations

from pathlib import Path

import pytest
from images_http_server import ImageHTTPServer
from images_testlib import (
    CHECKSUM_PATH,
    IMAGE_NAME,
    IMAGE_PATH,
    GeneratedImage,
    bsd_checksum_line,
    make_image,
)

from images.catalogue import Catalogue, load_catalogue


@pytest.fixture(scope="session")
def image() -> GeneratedImage:
    return make_image()


@pytest.fixture
def server(image: GeneratedImage):
    """Serves the generated image and a correct BSD-style CHECKSUM.SHA256 beside it."""
    with ImageHTTPServer() as srv:
        srv.state.files[IMAGE_PATH] = image.xz
        srv.state.files[CHECKSUM_PATH] = (
            bsd_checksum_line("FreeBSD-14.3-RELEASE-amd64-BASIC-CI-ufs.raw.xz", b"other")
            + bsd_checksum_line(IMAGE_NAME, image.xz)
        ).encode()
        yield srv


@pytest.fixture
def catalogue(server: ImageHTTPServer) -> Catalogue:
    """The real shipped catalogue, pointed at the local server as a mirror."""
    return load_catalogue(mirror=server.url)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"

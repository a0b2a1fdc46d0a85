"""Helpers for the image tests: generated small disk images and checksum lines."""

from __future__ import annotations

import hashlib
import lzma
import random
from dataclasses import dataclass
from pathlib import Path

RELEASE = "14.3"
IMAGE_DIR = "/releases/CI-IMAGES/14.3-RELEASE/amd64/Latest"
IMAGE_NAME = "FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz"
IMAGE_PATH = f"{IMAGE_DIR}/{IMAGE_NAME}"
CHECKSUM_PATH = f"{IMAGE_DIR}/CHECKSUM.SHA256"


@dataclass
class GeneratedImage:
    """A small raw 'disk' (data blocks between long zero runs, like a real image) and its .xz."""

    raw: bytes
    xz: bytes

    @property
    def xz_sha256(self) -> str:
        return hashlib.sha256(self.xz).hexdigest()

    def write_raw(self, path: Path) -> Path:
        path.write_bytes(self.raw)
        return path


def make_image(seed: int = 1, size: int = 4 << 20) -> GeneratedImage:
    rng = random.Random(seed)
    raw = bytearray(size)
    for _ in range(12):
        start = rng.randrange(0, size - 65536) & ~511
        raw[start : start + 65536] = rng.randbytes(65536)
    raw[:512] = b"fbsd-hil test disk seed=%d" % seed + bytes(512 - len(b"fbsd-hil test disk seed=%d" % seed))
    return GeneratedImage(bytes(raw), lzma.compress(bytes(raw), preset=1))


def bsd_checksum_line(name: str, data: bytes) -> str:
    return f"SHA256 ({name}) = {hashlib.sha256(data).hexdigest()}\n"

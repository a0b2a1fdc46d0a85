"""Published checksum files: BSD style (``SHA256 (name) = hex``, FreeBSD's ``sha256``) and GNU style
(``hex  name`` or ``hex *name``, coreutils' ``sha256sum``)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from images.errors import ChecksumFileError

_BSD = re.compile(r"^SHA256 \((?P<name>.+)\) = (?P<hex>[0-9a-fA-F]{64})$")
_GNU = re.compile(r"^(?P<hex>[0-9a-fA-F]{64}) [ *](?P<name>.+)$")


def parse_checksum_file(text: str, *, source: str = "<checksum file>") -> dict[str, str]:
    """Map file name -> lower-case hex digest; lines that are neither style are an error."""
    digests: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _BSD.match(line) or _GNU.match(line)
        if not match:
            raise ChecksumFileError(
                f"{source}:{lineno}: not a SHA-256 checksum line (expected 'SHA256 (name) = hex' "
                f"or 'hex  name'): {line[:120]!r}"
            )
        name = match["name"]
        if name.startswith("./"):
            name = name[2:]
        digest = match["hex"].lower()
        if name in digests and digests[name] != digest:
            raise ChecksumFileError(f"{source}:{lineno}: {name} listed twice with different digests")
        digests[name] = digest
    return digests


def digest_for(text: str, filename: str, *, source: str) -> str:
    """The digest the checksum file publishes for ``filename``."""
    digests = parse_checksum_file(text, source=source)
    try:
        return digests[filename]
    except KeyError:
        listed = ", ".join(sorted(digests)[:10]) or "(nothing)"
        raise ChecksumFileError(f"{source} does not list {filename}; it lists: {listed}") from None


def sha256_file(path: Path, *, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()

"""Where fbsd-hil keeps downloaded, converted and prepared images, and how it locks them.

Layout under the cache root (``$FBSD_HIL_CACHE``, else ``$XDG_CACHE_HOME/fbsd-hil``, else
``~/.cache/fbsd-hil``)::

    downloads/<file>.part        a transfer in progress (kept for resuming with HTTP Range)
    base/<sha256>.qcow2          read-only base image, keyed by the SHA-256 of the downloaded file
    base/<sha256>.json           where it came from (release, URL, digests, sizes)
    index/<release>.json         the digest last fetched for a release (offline lookups)
    prepared/<name>.qcow2        prepared images (see images.prepare)
    grub/<sha256>/i386-pc        patched GRUB module directories (see images.grub_iso)
    keys/                        the SSH key pair fbsd-hil installs in prepared guests
    locks/                       one lock file per item, so two runs never write the same file
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "FBSD_HIL_CACHE"


def default_cache_dir() -> Path:
    """The cache root from the environment (FBSD_HIL_CACHE, XDG_CACHE_HOME, HOME)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fbsd-hil"


class ImageCache:
    """Paths inside one cache root; creates directories on first use."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"ImageCache({str(self.root)!r})"

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def downloads(self) -> Path:
        return self._dir("downloads")

    @property
    def base_dir(self) -> Path:
        return self._dir("base")

    @property
    def prepared_dir(self) -> Path:
        return self._dir("prepared")

    @property
    def grub_dir(self) -> Path:
        return self._dir("grub")

    @property
    def keys_dir(self) -> Path:
        return self._dir("keys")

    def part_path(self, filename: str) -> Path:
        return self.downloads / f"{filename}.part"

    def base_image(self, sha256: str) -> Path:
        return self.base_dir / f"{sha256}.qcow2"

    def base_meta(self, sha256: str) -> Path:
        return self.base_dir / f"{sha256}.json"

    def index_path(self, key: str) -> Path:
        return self._dir("index") / f"{key}.json"

    def read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[Path]:
        """Exclusive lock for one cache item (blocks while another process holds it)."""
        path = self._dir("locks") / f"{name}.lock"
        with open(path, "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def make_read_only(path: Path) -> None:
    """Cached bases are shared by many overlays: nobody may write them by accident."""
    path.chmod(0o444)

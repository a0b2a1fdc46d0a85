"""The catalogue of official FreeBSD images: data in ``catalogue.toml``, looked up by release.

Kept as data so that a new release is one line, and so that tests (and users with a local
mirror) can point the same code at another server with ``FBSD_HIL_MIRROR``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from images.errors import CatalogueError, UnknownReleaseError

DEFAULT_CATALOGUE_PATH = Path(__file__).with_name("catalogue.toml")
MIRROR_ENV = "FBSD_HIL_MIRROR"
_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class CatalogueImage:
    """One downloadable image: where it is, how its digest is known, how to log in and mount root."""

    release: str
    flavour: str
    url: str
    checksum_url: str
    sha256: str | None
    login: str
    password: str
    root: str
    default: bool = False

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        return f"{self.release}-{self.flavour}"


class Catalogue:
    """Images by release; ``lookup("14.3")`` or ``lookup("14.3-BASIC-CI")``."""

    def __init__(self, images: list[CatalogueImage], source: str) -> None:
        self.images = images
        self.source = source

    @classmethod
    def load(cls, path: Path | None = None, *, mirror: str | None = None) -> Catalogue:
        """Read a catalogue file; ``mirror`` (default: ``$FBSD_HIL_MIRROR``) replaces its base URL."""
        path = Path(path) if path is not None else DEFAULT_CATALOGUE_PATH
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise CatalogueError(f"cannot read image catalogue {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise CatalogueError(f"image catalogue {path} is not valid TOML: {exc}") from exc
        if mirror is None:
            mirror = os.environ.get(MIRROR_ENV) or None
        return cls.from_mapping(data, source=str(path), mirror=mirror)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str, mirror: str | None = None) -> Catalogue:
        base = (mirror or _require(data, "base_url", source)).rstrip("/")
        flavours = data.get("flavours", {})
        if not isinstance(flavours, Mapping):
            raise CatalogueError(f"{source}: [flavours] must be a table")
        images: list[CatalogueImage] = []
        for index, entry in enumerate(_require(data, "images", source)):
            where = f"{source}: images[{index}]"
            if not isinstance(entry, Mapping):
                raise CatalogueError(f"{where}: expected a table like {{ release = \"14.3\", ... }}")
            release = str(_require(entry, "release", where))
            flavour_name = str(_require(entry, "flavour", where))
            flavour = flavours.get(flavour_name)
            if not isinstance(flavour, Mapping):
                raise CatalogueError(f"{where}: unknown flavour {flavour_name!r} (known: {sorted(flavours)})")
            fwhere = f"{source}: [flavours.{flavour_name}]"
            path = str(_require(flavour, "path", fwhere)).format(version=release)
            url = f"{base}/{path}"
            checksum_name = str(_require(flavour, "checksum_file", fwhere)).format(version=release)
            sha256 = entry.get("sha256")
            if sha256 is not None:
                sha256 = str(sha256).lower()
                if len(sha256) != 64 or not set(sha256) <= _SHA256_HEX:
                    raise CatalogueError(f"{where}: sha256 {sha256!r} is not 64 hex digits")
            images.append(
                CatalogueImage(
                    release=release,
                    flavour=flavour_name,
                    url=url,
                    checksum_url=url.rsplit("/", 1)[0] + "/" + checksum_name,
                    sha256=sha256,
                    login=str(entry.get("login", flavour.get("login", "root"))),
                    password=str(entry.get("password", flavour.get("password", ""))),
                    root=str(entry.get("root", flavour.get("root", "ufs:/dev/gpt/rootfs"))),
                    default=bool(entry.get("default", False)),
                )
            )
        keys = [i.key for i in images]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise CatalogueError(f"{source}: duplicate images {dupes}")
        return cls(images, source)

    def __iter__(self) -> Iterator[CatalogueImage]:
        return iter(self.images)

    def lookup(self, release: str) -> CatalogueImage:
        """Find an image by ``X.Y`` (first flavour listed wins) or ``X.Y-FLAVOUR``."""
        for image in self.images:
            if release in (image.key, image.release):
                return image
        known = ", ".join(i.key for i in self.images) or "(none)"
        raise UnknownReleaseError(
            f"no FreeBSD image {release!r} in the catalogue {self.source}; known: {known} "
            f"(add one line to its `images` list to support another release)"
        )

    def default(self) -> CatalogueImage:
        for image in self.images:
            if image.default:
                return image
        if not self.images:
            raise CatalogueError(f"{self.source}: the catalogue lists no images")
        return self.images[0]


def _require(table: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise CatalogueError(f"{where}: missing required key {key!r}")
    return table[key]


def load_catalogue(path: Path | None = None, *, mirror: str | None = None) -> Catalogue:
    """The catalogue (default file, ``$FBSD_HIL_MIRROR`` applied)."""
    return Catalogue.load(path, mirror=mirror)

"""The shipped catalogue, its lookup rules, and checksum-file parsing (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from images.cache import ImageCache, default_cache_dir
from images.catalogue import Catalogue, load_catalogue
from images.checksums import digest_for, parse_checksum_file
from images.errors import CatalogueError, ChecksumFileError, UnknownReleaseError

HEX_A = "a" * 64
HEX_B = "0123456789abcdef" * 4


def test_shipped_catalogue_lists_basic_ci_for_13_14_15(monkeypatch):
    monkeypatch.delenv("FBSD_HIL_MIRROR", raising=False)
    catalogue = load_catalogue()
    majors = {image.release.split(".")[0] for image in catalogue}
    assert {"13", "14", "15"} <= majors
    image = catalogue.lookup("14.3")
    assert image.url == (
        "https://download.freebsd.org/releases/CI-IMAGES/14.3-RELEASE/amd64/Latest/"
        "FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz"
    )
    assert image.checksum_url == "https://download.freebsd.org/releases/CI-IMAGES/14.3-RELEASE/amd64/Latest/CHECKSUM.SHA256"
    assert (image.login, image.password, image.root) == ("root", "", "ufs:/dev/gpt/rootfs")
    assert catalogue.lookup("14.3-BASIC-CI") is image
    assert catalogue.default().release == "14.3"


def test_unknown_release_lists_known_ones():
    with pytest.raises(UnknownReleaseError, match=r"'9\.9'.*known: .*14\.3-BASIC-CI"):
        load_catalogue().lookup("9.9")


def test_one_line_extends_the_catalogue(tmp_path: Path):
    text = Path(load_catalogue().source).read_text()
    extended = text.replace('images = [\n', 'images = [\n    { release = "16.0", flavour = "BASIC-CI" },\n')
    path = tmp_path / "catalogue.toml"
    path.write_text(extended)
    image = Catalogue.load(path, mirror="http://mirror.example/pub/FreeBSD").lookup("16.0")
    assert image.url == (
        "http://mirror.example/pub/FreeBSD/releases/CI-IMAGES/16.0-RELEASE/amd64/Latest/"
        "FreeBSD-16.0-RELEASE-amd64-BASIC-CI.raw.xz"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"images": []}, "missing required key 'base_url'"),
        ({"base_url": "x", "images": [{"release": "1.0", "flavour": "nope"}]}, "unknown flavour 'nope'"),
        (
            {"base_url": "x", "flavours": {"F": {"path": "p", "checksum_file": "c"}},
             "images": [{"release": "1.0", "flavour": "F", "sha256": "xyz"}]},
            "not 64 hex digits",
        ),
        (
            {"base_url": "x", "flavours": {"F": {"path": "p", "checksum_file": "c"}},
             "images": [{"release": "1.0", "flavour": "F"}, {"release": "1.0", "flavour": "F"}]},
            "duplicate images",
        ),
    ],
)
def test_malformed_catalogue_is_a_clear_error(data, message):
    with pytest.raises(CatalogueError, match=message):
        Catalogue.from_mapping(data, source="t.toml")


def test_invalid_toml_names_the_file(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("images = [\n")
    with pytest.raises(CatalogueError, match=f"{path} is not valid TOML"):
        Catalogue.load(path)


def test_checksum_file_bsd_and_gnu_styles():
    text = (
        f"SHA256 (FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz) = {HEX_A.upper()}\n"
        f"{HEX_B}  ./other.raw.xz\n"
        f"{HEX_A} *binary-mode.img\n"
        "\n# comment\n"
    )
    assert parse_checksum_file(text) == {
        "FreeBSD-14.3-RELEASE-amd64-BASIC-CI.raw.xz": HEX_A,
        "other.raw.xz": HEX_B,
        "binary-mode.img": HEX_A,
    }
    assert digest_for(text, "other.raw.xz", source="u") == HEX_B


def test_checksum_file_garbage_and_conflicts_are_errors():
    with pytest.raises(ChecksumFileError, match=r"CHECKSUM:2: not a SHA-256 checksum line"):
        parse_checksum_file(f"{HEX_A}  a\nMD5 (a) = 1234\n", source="CHECKSUM")
    with pytest.raises(ChecksumFileError, match="listed twice"):
        parse_checksum_file(f"{HEX_A}  a\n{HEX_B}  a\n")


def test_cache_location_follows_environment(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("FBSD_HIL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fbsd-hil"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "fbsd-hil"
    monkeypatch.setenv("FBSD_HIL_CACHE", str(tmp_path / "explicit"))
    assert ImageCache().root == tmp_path / "explicit"

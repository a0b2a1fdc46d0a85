"""`fbsd-hil images ...` through the real dispatcher (harness.cli.main), against the local server."""

from __future__ import annotations

import json
import shutil

import pytest
from images_testlib import RELEASE

from harness.cli.main import main


def test_list_fetch_path(server, cache_dir, image, capsys):
    common = ["images", "--cache", str(cache_dir), "--mirror", server.url]

    assert main([*common, "path", RELEASE]) == 1
    err = capsys.readouterr().err
    assert "fbsd-hil images: offline: FreeBSD 14.3-BASIC-CI is not in the cache" in err

    assert main([*common, "fetch", RELEASE, "--no-progress"]) == 0
    fetched = capsys.readouterr().out.strip()
    assert fetched.endswith(f"{image.xz_sha256}.qcow2")

    assert main([*common, "path", RELEASE]) == 0
    assert capsys.readouterr().out.strip() == fetched

    assert main([*common, "list", "--json"]) == 0
    rows = {row["release"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["14.3-BASIC-CI"]["cached"] == fetched and rows["14.3-BASIC-CI"]["default"]
    assert rows["15.0-BASIC-CI"]["cached"] is None
    assert rows["15.0-BASIC-CI"]["url"].startswith(server.url + "/releases/CI-IMAGES/15.0-RELEASE/")

    assert main([*common, "list"]) == 0
    assert "14.3-BASIC-CI" in capsys.readouterr().out


def test_cache_and_mirror_also_after_the_action(server, cache_dir, image, capsys):
    """docs/images.md writes `images fetch --mirror URL 14.3`: the options work on either side."""
    after = ["--cache", str(cache_dir), "--mirror", server.url]
    assert main(["images", "fetch", *after, RELEASE, "--no-progress"]) == 0
    fetched = capsys.readouterr().out.strip()
    assert fetched.endswith(f"{image.xz_sha256}.qcow2")
    # given before the action and not after it, the value before still counts
    assert main(["images", "--cache", str(cache_dir), "--mirror", server.url, "path", RELEASE]) == 0
    assert capsys.readouterr().out.strip() == fetched
    assert main(["images", "--cache", "/nonexistent-cache", "path", *after, RELEASE]) == 0
    assert capsys.readouterr().out.strip() == fetched


def test_unknown_release_is_one_clear_line(cache_dir, capsys):
    assert main(["images", "--cache", str(cache_dir), "fetch", "9.9", "--offline"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fbsd-hil images: no FreeBSD image '9.9' in the catalogue")
    assert "Traceback" not in err


@pytest.mark.skipif(shutil.which("grub-mkrescue") is None, reason="needs grub-mkrescue")
def test_iso_subcommand(tmp_path, capsys):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF placeholder; grub-mkrescue does not parse it")
    out = tmp_path / "k.iso"
    argv = ["images", "--cache", str(tmp_path / "cache"), "iso", "--kernel", str(kernel),
            "--kenv", "dumpdev=/dev/vtbd1", "--kenv", "debug.minidump=0", "-o", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    cfg = json.loads((tmp_path / "k.iso.json").read_text())["grub_cfg"]
    assert "set kFreeBSD.debug.minidump='0'" in cfg and "set kFreeBSD.dumpdev='/dev/vtbd1'" in cfg
    assert main(argv) == 1, "never overwrites"
    assert "refusing to overwrite" in capsys.readouterr().err

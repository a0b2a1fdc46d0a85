"""One GRUB ISO per kernel + kernel environment, reused by every run that boots the same pair.

The ISO is a pure function of the kernel file, the kernel environment and the ISO builder
(`images.grub_iso`), so it is cached under the user's cache directory by the sha256 of all three and
booted from there: a run directory keeps no copy (it was ~1 GiB of ISOs over a matrix run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import images.grub_iso
from images.cache import default_cache_dir

CACHE_SUBDIR = "boot-iso"


def iso_key(
    kernel: Path, kenv: Mapping[str, str], *, root_image: Path | None = None, boot_flags: str = "-h"
) -> str:
    """sha256 over the kernel's bytes, the environment (sorted), the boot flags and root image, the ISO
    builder's and this cache's own source, the GRUB fixes it applies (``$FBSD_HIL_GRUB_FIXES``) and the
    host's GRUB modules they patch."""
    h = hashlib.sha256()
    with open(kernel, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(b"\0kenv\0" + json.dumps(dict(kenv), sort_keys=True).encode())
    if root_image is not None or boot_flags != "-h":
        h.update(b"\0flags\0" + boot_flags.encode() + b"\0root image\0")
        if root_image is not None:
            with open(root_image, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    h.update(b"\0builder\0" + Path(images.grub_iso.__file__).read_bytes())
    h.update(b"\0cache\0" + Path(__file__).read_bytes())  # how the cache keeps an ISO and its record
    h.update(b"\0fixes\0" + ",".join(images.grub_iso.selected_fixes()).encode())
    for module, _patch in images.grub_iso.GRUB_FIXES.values():
        with contextlib.suppress(OSError):  # no GRUB here: the build itself says so
            data = (images.grub_iso.SYSTEM_GRUB_DIR / module).read_bytes()
            h.update(b"\0" + module.encode() + b"\0" + data)
    return h.hexdigest()


def cached_kernel_iso(
    kernel: Path,
    kenv: Mapping[str, str],
    *,
    cache_dir: Path | None = None,
    build: Callable[..., Path] | None = None,
    root_image: Path | None = None,
    boot_flags: str = "-h",
) -> tuple[Path, bool]:
    """(the ISO booting `kernel` with `kenv`, whether it was built now). Built once into a private
    temporary name next to its final one and renamed into place, so concurrent runs never see half an
    ISO; a racing run that built the same ISO simply replaces it with identical bytes."""
    build = build or images.grub_iso.build_kernel_iso
    root = (cache_dir or default_cache_dir()) / CACHE_SUBDIR
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = root / f"{iso_key(kernel, kenv, root_image=root_image, boot_flags=boot_flags)}.iso"
    if path.is_file():
        return path, False
    tmp = root / f".{path.stem}.{os.getpid()}.tmp.iso"
    try:
        extra = {} if root_image is None else {"root_image": root_image, "boot_flags": boot_flags}
        built = Path(build(kernel, dict(kenv), tmp, **extra))
        os.chmod(built, 0o600)
        # the builder's record of what the ISO boots (kernel, kenv, GRUB fixes, the kernel type GRUB
        # registers) travels with it: a silent kernel's diagnosis reads it (harness.freebsd.handover)
        record = Path(str(built) + ".json")
        if record.is_file():
            os.replace(record, Path(str(path) + ".json"))
        os.replace(built, path)
    finally:
        for leftover in (tmp, Path(str(tmp) + ".json")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return path, True

"""Turn a verified download into a qcow2 base: stream-decompress ``.xz`` into a sparse raw file
with bounded memory, then ``qemu-img convert`` it (qcow2 is what overlays are layered on)."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from images.errors import ConversionError

CHUNK = 1 << 20
_SPARSE_BLOCK = 64 << 10
_ZERO = bytes(_SPARSE_BLOCK)


def _write_sparse(out, data: bytes) -> None:
    """Write ``data``, seeking over all-zero blocks: disk images are mostly empty."""
    view = memoryview(data)
    for start in range(0, len(view), _SPARSE_BLOCK):
        block = view[start : start + _SPARSE_BLOCK]
        if block == _ZERO[: len(block)]:
            out.seek(len(block), os.SEEK_CUR)
        else:
            out.write(block)


def decompress_xz(src: Path, dst: Path, *, on_progress: Callable[[int], None] | None = None) -> int:
    """Decompress ``src`` (.xz, possibly multi-stream) to a sparse ``dst``; return its size.

    Memory stays bounded by CHUNK: lzma's file reader feeds the decoder piecewise.
    ``on_progress`` is called with the number of compressed bytes consumed so far.
    """
    size = 0
    try:
        with open(src, "rb") as raw_in, lzma.open(raw_in, "rb") as xz_in, open(dst, "wb") as out:
            while block := xz_in.read(CHUNK):
                _write_sparse(out, block)
                size += len(block)
                if on_progress is not None:
                    on_progress(raw_in.tell())
            out.truncate(size)
    except (lzma.LZMAError, EOFError) as exc:
        dst.unlink(missing_ok=True)
        raise ConversionError(
            f"cannot decompress {src}: {exc} (after {size} bytes of output; "
            f"compressed size {src.stat().st_size})"
        ) from exc
    return size


def qemu_img_convert(src: Path, dst: Path, *, src_format: str = "raw") -> None:
    """``qemu-img convert -O qcow2``: fails with the command line and qemu-img's own words."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise ConversionError("qemu-img not found: install Debian package qemu-utils")
    cmd = [qemu_img, "convert", "-f", src_format, "-O", "qcow2", str(src), str(dst)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        dst.unlink(missing_ok=True)
        raise ConversionError(
            f"`{' '.join(cmd)}` failed with status {proc.returncode}: "
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )


def qemu_img_info(path: Path) -> dict:
    """``qemu-img info --output=json`` (virtual size, format, backing file)."""
    import json

    cmd = ["qemu-img", "info", "--output=json", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConversionError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def source_format(filename: str) -> tuple[bool, str]:
    """(is xz-compressed, qemu format of the payload) from the published file name."""
    name = filename
    compressed = name.endswith(".xz")
    if compressed:
        name = name[: -len(".xz")]
    fmt = "qcow2" if name.endswith(".qcow2") else "vmdk" if name.endswith(".vmdk") else "raw"
    return compressed, fmt

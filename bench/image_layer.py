"""Image layer figures: verify, decompress, convert, GRUB ISO build, GRUB -> kernel handover (TCG).

Prints one figure per line (``name: value unit``). Uses a generated 256 MiB disk image (12 % data,
like a fresh FreeBSD image: mostly zeros) served by the test suite's local HTTP server, and the
tiny freestanding kernel the tests build.
"""

from __future__ import annotations

import lzma
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "images"))

from images_http_server import ImageHTTPServer  # noqa: E402
from images_tiny_kernel import MARKER, build_tiny_kernel  # noqa: E402

from images.cache import ImageCache  # noqa: E402
from images.checksums import sha256_file  # noqa: E402
from images.convert import decompress_xz, qemu_img_convert  # noqa: E402
from images.download import download  # noqa: E402
from images.grub_iso import build_kernel_iso  # noqa: E402

MIB = 1 << 20


def disk_image(size: int) -> bytes:
    rng = random.Random(1)
    raw = bytearray(size)
    for offset in range(0, size, MIB):
        if rng.random() < 0.12:
            raw[offset : offset + MIB] = rng.randbytes(MIB)
    return bytes(raw)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-images.") as tmp:
        work = Path(tmp)
        raw = disk_image(256 * MIB)
        xz_bytes = lzma.compress(raw, preset=1)
        with ImageHTTPServer() as server:
            server.state.files["/img.raw.xz"] = xz_bytes
            part = work / "img.raw.xz.part"
            t = time.perf_counter()
            download(server.url + "/img.raw.xz", part, progress=False)
            print(f"download_loopback_http: {len(xz_bytes) / (time.perf_counter() - t) / MIB:.0f} MiB/s")
        t = time.perf_counter()
        sha256_file(part)
        print(f"sha256_verify: {len(xz_bytes) / (time.perf_counter() - t) / MIB:.0f} MiB/s")
        t = time.perf_counter()
        size = decompress_xz(part, work / "img.raw")
        print(f"xz_decompress_sparse: {size / (time.perf_counter() - t) / MIB:.0f} MiB/s")
        t = time.perf_counter()
        qemu_img_convert(work / "img.raw", work / "img.qcow2")
        print(f"qemu_img_convert_256MiB_to_qcow2: {time.perf_counter() - t:.2f} s")

        if shutil.which("grub-mkrescue") is None:
            print("grub_iso: skipped (grub-mkrescue missing)")
            return 0
        kernel = build_tiny_kernel(work)
        cache = ImageCache(work / "cache")
        t = time.perf_counter()
        iso = build_kernel_iso(kernel, {}, work / "a.iso", cache=cache)
        print(f"grub_iso_build_with_module_patch: {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        build_kernel_iso(kernel, {}, work / "b.iso", cache=cache)
        print(f"grub_iso_build_cached_modules: {time.perf_counter() - t:.2f} s")
        serial = work / "serial.log"
        t = time.perf_counter()
        subprocess.run(
            ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-display", "none", "-monitor", "none",
             "-no-reboot", "-serial", f"file:{serial}", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
             "-cdrom", str(iso), "-boot", "d"],
            timeout=120, check=False,
        )
        elapsed = time.perf_counter() - t
        if MARKER not in serial.read_text(errors="replace"):
            print("tcg_firmware_grub_to_kernel_line: FAILED (no marker)")
            return 1
        print(f"tcg_firmware_grub_to_kernel_line: {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

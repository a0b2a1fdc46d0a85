"""Container-layer throughput: savecore-style extraction and payload decoding, printed as figures.

Builds (in a temporary directory) a 1 GiB sparse raw dump device whose payload has one page in four
filled with data, the rest zero (roughly what a minidump of a lightly used guest looks like), then
measures `reader.device.extract` and `reader.source.open_payload` on it, and zstd/gzip decoding of
a kernel-compressed payload. One figure per line, `name: value unit`.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reader import device, source  # noqa: E402
from tests.dumpwriter import containers as cw  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20
PAGE = 4096


def _payload_file(path: Path, size: int, every: int = 4) -> int:
    """A sparse payload: `minidump` magic, then one pseudo-random page out of `every`; returns data bytes."""
    rng = np.random.default_rng(1)
    pattern = rng.integers(0, 256, size=MiB, dtype=np.uint8).tobytes()
    written = 0
    with open(path, "wb") as f:
        f.truncate(size)
        for off in range(0, size, every * PAGE):
            page = pattern[(off // PAGE) % 256 * PAGE :][:PAGE]
            if off == 0:
                page = b"minidump FreeBSD/amd64\0\0" + page[24:]
            f.seek(off)
            f.write(page)
            written += PAGE
    return written


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_extract(tmp: Path) -> list[str]:
    media = GiB
    payload_size = media - cw.SIZEOF_METADATA - 2 * 512 - 16 * MiB
    pf = tmp / "payload"
    data_bytes = _payload_file(pf, payload_size)
    img = tmp / "dump.img"
    cw.write_device_image(img, pf, media_size=media)
    pf.unlink()

    out = tmp / "crash"
    t_extract = _timed(lambda: device.extract(img, out))
    vmcore = out / "vmcore.0"
    disk = vmcore.stat().st_blocks * 512

    def read_all() -> None:
        with source.open_payload(img) as p:
            a = np.frombuffer(p.buffer, dtype=np.uint64)
            int(a[:: PAGE // 8].sum())  # touch one word per page
            del a

    t_open = _timed(read_all)
    return [
        f"extract_1gib_device_logical: {payload_size / MiB / t_extract:.0f} MiB/s",
        f"extract_1gib_device_seconds: {t_extract:.2f} s",
        f"extract_1gib_device_data_written: {disk / MiB:.0f} MiB (of {data_bytes / MiB:.0f} MiB non-zero)",
        f"open_payload_1gib_device_touch_every_page: {payload_size / MiB / t_open:.0f} MiB/s",
    ]


def bench_decompress(tmp: Path) -> list[str]:
    size = 256 * MiB
    rng = np.random.default_rng(2)
    pattern = rng.integers(0, 16, size=MiB, dtype=np.uint8).tobytes()  # compressible, not trivially
    chunks = []
    zero = bytes(PAGE)
    for i in range(size // PAGE):
        chunks.append(pattern[(i % 256) * PAGE :][:PAGE] if i % 4 == 0 else zero)
    raw = b"".join(chunks)
    lines = []
    for name, comp, maker in (("zstd", cw.COMP_ZSTD, cw.kernel_zstd), ("gzip", cw.COMP_GZIP, cw.kernel_gzip)):
        blob = maker(raw)
        img = tmp / f"{name}.img"
        cw.write_device_image(img, blob, compression=comp, dumpextent=len(raw))

        def decode(img: Path = img) -> None:
            with source.open_payload(img) as p:
                assert len(p.buffer) == len(raw)

        t = _timed(decode)
        lines.append(f"decode_{name}_device_payload_256mib: {size / MiB / t:.0f} MiB/s")
        img.unlink()
    return lines


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-reader-containers-") as d:
        tmp = Path(d)
        for line in bench_extract(tmp) + bench_decompress(tmp):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

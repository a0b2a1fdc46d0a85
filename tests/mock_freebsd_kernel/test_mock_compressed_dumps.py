"""gzip and zstd kernel dumps end to end on the MockFreeBSDKernel (a STAND-IN, NOT FreeBSD).

`fbsd-hil repro --kernel MOCK --root-image IMG --compression gzip|zstd`: the single-user shell runs
`dumpon -v -z|-Z /dev/vtbd0`, the mock kernel compresses its minidump / full dump with its own encoders
(src/mock_compress.h: fixed-Huffman deflate in a gzip member, zstd raw/RLE blocks with the XXH64
checksum) and places it as FreeBSD 12's dump_start()/dump_finish() do (data from the start of the
extent reserved for the uncompressed size, `dumplength` rewritten to the compressed size); the host
extracts it from the dump disk, the reader decompresses it (zlib / zstandard check CRC-32 / XXH64) and
the result is verified against live memory. Root images are real UFS2 images made by Debian's makefs.
"""

from __future__ import annotations

import functools
import operator
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from mock_runs import ROOT, last_run_dir, libvirt_or_skip, repro_with_root_image

MAGIC = {"gzip": b"\x1f\x8b\x08", "zstd": b"\x28\xb5\x2f\xfd"}
COMPRESSION_FIELD = {"gzip": 1, "zstd": 2}
FLAG = {"gzip": "-z", "zstd": "-Z"}

pytestmark = pytest.mark.vm


@pytest.fixture(autouse=True)
def _libvirt() -> None:
    libvirt_or_skip()


def _repro(kernel: Path, image: Path, tmp_path: Path, *args: str):
    """`fbsd-hil repro` with the sysctl trigger: (exit, report, stderr, console, run directory)."""
    rc, got, stderr, console = repro_with_root_image(kernel, image, tmp_path, "--trigger", "sysctl", *args)
    return rc, got, stderr, console, last_run_dir(tmp_path)


def _trailer(disk: Path) -> tuple[int, bytes]:
    """(device size, the last sector: the trailer kerneldumpheader)."""
    with disk.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(size - 512)
        return size, f.read(512)


@pytest.mark.parametrize("minidump", ["1", "0"], ids=["mini", "full"])
@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_compressed_dump_is_extracted_decompressed_and_verified(
    mock_kernel, root_image, tmp_path, kind, minidump
):
    rc, report, stderr, console, run_dir = _repro(
        mock_kernel, root_image, tmp_path, "--compression", kind, "--minidump", minidump
    )
    assert rc == 0 and report is not None, stderr[-4000:]
    assert report["passed"] is True and report["dump_kind"] == ("mini" if minidump == "1" else "full")
    assert report["pages_differing_unexplained"] == 0 and report["missing_pages"] == 0
    assert f"dumpon -v {FLAG[kind]} /dev/vtbd0" in console and "kernel dumps on /dev/vtbd0" in console
    assert "Dump complete" in console
    comp = report["compression"]
    assert comp["kind"] == kind
    # zero pages shrink: the encoders are real compressors, not stored blocks
    assert comp["compressed_bytes"] * 10 < comp["uncompressed_bytes"], comp
    checks = {c["what"]: c for c in report["crosschecks"]}
    for what in (
        "compression: kerneldumpheader",
        "compressed size: header `dumplength`",
        "decoded size vs `dumpextent`",
        "decoded size vs the console",
    ):
        hit = [c for w, c in checks.items() if w.startswith(what)]
        assert hit and all(c["ok"] for c in hit), (what, report["crosschecks"])
    assert f"{kind}-compressed" in stderr  # the summary says so

    # on the device: FreeBSD 12's placement for a compressed dump
    size, trailer = _trailer(run_dir / "dump-disk.raw")
    assert functools.reduce(operator.xor, struct.unpack("<128I", trailer)) == 0, "trailer parity"
    dumplength = struct.unpack(">Q", trailer[40:48])[0]
    dumpextent = struct.unpack(">Q", trailer[496:504])[0]
    assert trailer[495] == COMPRESSION_FIELD[kind]
    assert dumplength == comp["compressed_bytes"] and dumpextent == comp["uncompressed_bytes"]
    with (run_dir / "dump-disk.raw").open("rb") as f:
        f.seek(size - 1024 - dumpextent)
        assert f.read(512) == trailer, "the leader sits right before the uncompressed extent"
        assert f.read(4).startswith(MAGIC[kind]), "the stream starts at the extent's first byte"


def test_a_corrupted_compressed_payload_on_the_dump_disk_is_one_clear_line(mock_kernel, root_image, tmp_path):
    rc, report, stderr, _, run_dir = _repro(mock_kernel, root_image, tmp_path, "--compression", "gzip")
    assert rc == 0 and report is not None and report["passed"], stderr[-4000:]
    disk = tmp_path / "corrupted-dump-disk.raw"
    subprocess.run(["cp", "--sparse=always", str(run_dir / "dump-disk.raw"), str(disk)], check=True)
    size, trailer = _trailer(disk)
    dumplength = struct.unpack(">Q", trailer[40:48])[0]
    dumpextent = struct.unpack(">Q", trailer[496:504])[0]
    start = size - 512 - dumpextent
    with disk.open("r+b") as f:
        f.seek(start + dumplength // 2)
        chunk = f.read(256)
        f.seek(start + dumplength // 2)
        f.write(bytes(b ^ 0x5A for b in chunk))
    proc = subprocess.run(
        [sys.executable, "-m", "reader", "info", str(disk)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert line.startswith(f"fbsd-vmcore: {disk}, offset 0x") and "field gzip data" in line, line
    assert "corrupt gzip stream" in line and "(expected a valid deflate stream" in line, line
    offset = int(line.split("offset ")[1].split(",")[0], 16)
    assert start <= offset < start + dumplength, (hex(start), line)


def test_a_kernel_without_gzio_zstdio_refuses_with_the_guests_words(mock_kernel, root_image, tmp_path):
    """`mock.no_compression=1`: a kernel built without GZIO/ZSTDIO; `dumpon -Z` fails, the run stops as
    unsupported and quotes dumpon."""
    rc, report, stderr, console, _ = _repro(
        mock_kernel, root_image, tmp_path, "--compression", "zstd", "--kenv", "mock.no_compression=1"
    )
    assert rc != 0 and report is None
    line = stderr.strip().splitlines()[-1]
    assert "this guest cannot write zstd-compressed dumps: `dumpon -v -Z /dev/vtbd0` exited 71" in line, line
    assert "dumpon: ioctl(DIOCSKERNELDUMP): Invalid argument" in line


def test_a_compressed_dump_that_does_not_fit_is_incomplete_never_verified(mock_kernel, root_image, tmp_path):
    """A 1 MiB dump disk: the extent is cut to the device (dump_start()), the ~2 MB zstd stream of a
    128 MiB full dump still overflows it: "Compressed dump failed to fit in device boundaries."."""
    rc, report, stderr, console, _ = _repro(
        mock_kernel, root_image, tmp_path, "--compression", "zstd", "--minidump", "0", "--dump-disk-mib", "1"
    )
    assert rc == 2 and report is None, stderr[-4000:]
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("fbsd-hil repro: FAILED at dump: dump incomplete: "), line
    assert "Compressed dump failed to fit in device boundaries." in line, line
    assert "** DUMP FAILED (ERROR 28) **" in console and "Dump complete" not in console

"""Reader speed: kernel-page iteration, random reads, opening a 1 TiB minidump, crash analysis.

Generates its synthetic dumps (tests/dumpwriter) in a temporary directory and prints one
`name: value unit` line per figure. Page-cache warm, single process.

Crash analysis (issue 11): `crashinfo_512mib_full_dump` (target < 2 s) runs on the full dump given
with `--full-dump VMCORE --kernel KERNEL` (e.g. the mock kernel's dump from `fbsd-hil repro --kernel
MOCK --memory 512 --minidump 0`), else on a synthetic 512 MiB full dump; `backtraces_lldb_amd64_minidump`
(target < 0.5 s) opens LLDB's real amd64 minidump (tests/data/lldb-freebsd) and unwinds every thread.
"""

from __future__ import annotations

import argparse
import bz2
import lzma
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reader  # noqa: E402
from tests.dumpwriter import Mapping, write_amd64_minidump  # noqa: E402

K2 = 0xFFFFFE0000000000
MB2 = 2 << 20
TIB = 1 << 40


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def make_kernel_dump(d: Path, n2m: int = 480, n4k: int = 16384) -> Path:
    """~1 GiB of kernel pages: `n2m` 2 MiB mappings plus `n4k` scattered 4 KiB mappings."""
    pages = {}
    mappings = []
    for i in range(n2m):
        pa = (i + 1) * MB2
        mappings.append(Mapping(K2 + i * MB2, pa, MB2))
        for off in range(0, MB2, 4096):
            pages[pa + off] = None
    base_pa = (n2m + 2) * MB2
    base_va = K2 + (n2m + 8) * MB2
    for j in range(n4k):
        pa = base_pa + j * 4096
        pages[pa] = None
        mappings.append(Mapping(base_va + 2 * j * 4096, pa))
    spec = write_amd64_minidump(d / "vmcore.big", pages, mappings, version=3)
    return spec.path


def bench_pages(path: Path) -> None:
    with reader.open_vmcore(path) as vm:
        t0 = time.perf_counter()
        n = 0
        for _va, _pa, data in vm.iter_kernel_page_data(as_bytes=True):
            n += len(data) >> 12
        dt = time.perf_counter() - t0
        print(f"# {n} kernel pages (480 x 2 MiB + 16384 x 4 KiB mappings), page cache warm")
        print(f"kernel_pages_read: {n / dt:.0f} pages/s")
        t0 = time.perf_counter()
        for _va, _pa, view in vm.iter_kernel_page_data():
            view[0]  # noqa: B018 - touch the zero-copy view
        dt = time.perf_counter() - t0
        print(f"kernel_pages_view_zero_copy: {n / dt:.0f} pages/s")
        t0 = time.perf_counter()
        n = sum(1 for _ in vm.kernel_pages())
        dt = time.perf_counter() - t0
        print(f"kernel_pages_iterate: {n / dt:.0f} pages/s")
        m = vm.kernel_page_map()
        vas = m.va.tolist()
        rng = random.Random(1)
        sample = [rng.choice(vas) + 8 * rng.randrange(512) for _ in range(300_000)]
        read = vm.read
        t0 = time.perf_counter()
        for va in sample:
            read(va, 8)
        dt = time.perf_counter() - t0
        print(f"random_read_8: {len(sample) / dt:.0f} reads/s")


_OPEN_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import reader

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")   # reset the peak-RSS mark (VmHWM)
base = status("VmHWM:")
t0 = time.perf_counter()
vm = reader.open_vmcore({path!r})
dt = time.perf_counter() - t0
assert vm.read_phys(0x1000, 8)
print(dt, (status("VmHWM:") - base) / 1024, status("VmRSS:") / 1024)
"""


def bench_open_1tib(d: Path) -> None:
    pages = {0x1000: None, TIB // 2: None, TIB - 4096: None}
    spec = write_amd64_minidump(d / "vmcore.1tib", pages, [Mapping(K2, 0x1000)], version=3,
                                dump_avail=[(0, TIB)], pt_pages_at=0x2000)
    _warm(spec.path)
    out = subprocess.run([sys.executable, "-c", _OPEN_CHILD.format(repo=str(REPO), path=str(spec.path))],
                         check=True, capture_output=True, text=True).stdout.split()
    dt, mib, rss = float(out[0]), float(out[1]), float(out[2])
    bm = spec.header["bitmapsize"] / (1 << 20)
    print(f"# minidump header describing 1 TiB of RAM, bitmap {bm:.0f} MiB; memory = peak RSS growth "
          "during open (mapped file pages included)")
    print(f"open_1tib_minidump: {dt * 1000:.1f} ms")
    print(f"open_1tib_peak_memory: {mib:.1f} MiB")
    print(f"open_1tib_process_rss: {rss:.1f} MiB")


def _crashinfo_once(vmcore: Path, kernel: Path | None) -> tuple[float, int]:
    from reader.crashinfo import build_crashinfo, format_crashinfo

    t0 = time.perf_counter()
    with reader.open_vmcore(vmcore, kernel) as vm:
        lines = format_crashinfo(build_crashinfo(vm, vm.info))
    return time.perf_counter() - t0, len(lines)


def bench_crashinfo(d: Path, full_dump: Path | None, kernel: Path | None) -> None:
    if full_dump is None:
        from tests.dumpwriter.elf import write_amd64_full_dump, write_kernel_elf

        size = 512 << 20
        pages = dict.fromkeys(range(0, size - (16 << 20), 4096))   # page tables go above
        spec = write_amd64_full_dump(d / "vmcore.full", pages, [], ranges=[(0, size)])
        full_dump = spec.path
        kernel = write_kernel_elf(d / "kernel.full", spec.symbols)
        what = "synthetic 512 MiB full dump (no process list: info, page-table bootstrap, summary)"
    else:
        what = f"{full_dump} ({os.path.getsize(full_dump) >> 20} MiB)"
    _warm(full_dump)
    dt, n = _crashinfo_once(full_dump, kernel)
    print(f"# crashinfo (open + summary, {n} lines) of {what}")
    print(f"crashinfo_512mib_full_dump: {dt:.3f} s")
    if full_dump.parent == d:
        full_dump.unlink()      # ours: free the disk before the next figures


def bench_lldb_backtraces(d: Path) -> None:
    src = REPO / "tests" / "data" / "lldb-freebsd"
    vmcore, kernel = d / "vmcore-amd64-minidump", d / "kernel-amd64.elf"
    with bz2.open(src / "vmcore-amd64-minidump.bz2") as f, open(vmcore, "wb") as out:
        while block := f.read(1 << 20):
            out.write(block)
    with lzma.open(src / "kernel-amd64.elf.xz") as f:
        kernel.write_bytes(f.read())
    t0 = time.perf_counter()
    with reader.open_vmcore(vmcore, kernel, zero_fill=True) as vm:
        threads = vm.threads()
        frames = sum(len(t.backtrace()) for t in threads)
    dt = time.perf_counter() - t0
    print(f"# LLDB's real amd64 minidump: open + thread list + backtraces of {len(threads)} threads "
          f"({frames} frames)")
    print(f"backtraces_lldb_amd64_minidump: {dt:.3f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-dump", type=Path, help="a real ~512 MiB full dump for the crashinfo figure")
    ap.add_argument("--kernel", type=Path, help="its kernel")
    ap.add_argument("--only-crash-analysis", action="store_true", help="only the two issue-11 figures")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        d = Path(tmp)
        bench_lldb_backtraces(d)
        bench_crashinfo(d, args.full_dump, args.kernel)
        if args.only_crash_analysis:
            return 0
        t0 = time.perf_counter()
        big = make_kernel_dump(d)
        print(f"# synthetic minidump of {os.path.getsize(big) >> 20} MiB")
        print(f"generate_dump: {time.perf_counter() - t0:.1f} s")
        _warm(big)
        bench_pages(big)
        big.unlink()
        bench_open_1tib(d)
    print(f"bench_peak_rss: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

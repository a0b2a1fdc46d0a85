"""`repro --textdump`: a fresh boot to checked textdump, and the same from a restored booted guest.

    python bench/textdump.py [--kernel PATH] [--memory 128] [--runs 3] [--keep DIR]

Runs the textdump chain (`run_repro` with ``ReproConfig.textdump``: boot, NMI into ddb, show msgbuf/panic,
textdump set, capture on, show panic/registers, bt, ps, textdump dump, the host reads textdump.tar.N off
the dump disk, member checks) ``--runs`` times on fresh boots, then once from a saved boot. Default kernel:
the mock FreeBSD kernel (built with gcc and cached). Needs libvirtd and QEMU (TCG here). Figures: one per
line, ``name: value unit``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.run import ReproConfig, run_repro  # noqa: E402
from harness.run.saved_boot import save_booted  # noqa: E402


def _kernel(path: str | None) -> Path:
    if path:
        return Path(path).resolve()
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    return build_mock_freebsd_kernel()


def _run(cfg: ReproConfig) -> tuple[float, dict]:
    """(seconds to the written verdict, the run's step timings); exits if the checks did not hold."""
    t = time.monotonic()
    outcome = run_repro(cfg, progress=lambda _msg: None)
    if not outcome.passed:
        raise SystemExit(f"the textdump did not check out: {outcome.report.summary()}")
    return time.monotonic() - t, dict(outcome.report.timings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="a FreeBSD kernel file (default: the mock kernel)")
    ap.add_argument("--memory", type=int, default=128, help="guest MiB (default 128)")
    ap.add_argument("--runs", type=int, default=3, help="fresh runs (default 3)")
    ap.add_argument("--keep", type=Path, help="keep the run directories and the saved boot here")
    args = ap.parse_args(argv)
    kernel = _kernel(args.kernel)
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-bench-textdump-") as tmp:
        root = args.keep or Path(tmp)
        cfg = ReproConfig(kernel=kernel, memory_mib=args.memory, accel="tcg", artifacts=root / "runs",
                          boot_seconds=300, textdump=True)
        totals = []
        for n in range(args.runs):
            total, timings = _run(cfg)
            totals.append(total)
            steps = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if v is not None)
            print(f"fresh_boot_to_checked_textdump_run{n + 1}: {total:.2f} s (steps: {steps})")
        print(f"fresh_boot_to_checked_textdump_median: {statistics.median(totals):.2f} s")
        saved = save_booted(ReproConfig(kernel=kernel, memory_mib=args.memory, accel="tcg",
                                        artifacts=root / "runs", boot_seconds=300),
                            root / "saved", progress=lambda _msg: None)
        total, timings = _run(saved.config(artifacts=root / "runs", textdump=True))
        steps = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if v is not None)
        print(f"restored_to_checked_textdump: {total:.2f} s (steps: {steps}; boot = the restore)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

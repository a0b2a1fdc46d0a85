"""`repro` from a restored booted guest to a verified minidump, and a fresh boot to root_wait.

    python bench/repro.py [--kernel PATH] [--memory 128] [--runs 3] [--keep DIR]

Boots the kernel (default: the mock FreeBSD kernel, built with gcc and cached) once with the run's own
source and boot steps to ``root_wait`` and saves the guest (`harness.run.saved_boot.save_booted`);
then restores it ``--runs`` times and runs the rest of the chain on each (enter -> dump -> live images
-> retrieve -> verify: `run_repro` with ``ReproConfig.saved_boot``), and once more a whole fresh run
for comparison. Needs libvirtd and QEMU (TCG here). Figures: one per line, ``name: value unit``.
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


def _quiet(_msg: str) -> None:
    pass


def _kernel(path: str | None) -> Path:
    if path:
        return Path(path).resolve()
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    return build_mock_freebsd_kernel()


def _timed_run(cfg: ReproConfig) -> tuple[float, float, dict]:
    """(seconds to the verdict - the report written -, seconds including the guest's teardown, timings)."""
    t, wall_start = time.monotonic(), time.time()
    outcome = run_repro(cfg, progress=_quiet)
    total = time.monotonic() - t
    if not outcome.passed:
        raise SystemExit(f"the run did not verify: {outcome.report.summary()}")
    verdict = (outcome.artifacts / "report.json").stat().st_mtime - wall_start
    return verdict, total, dict(outcome.report.timings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="a FreeBSD kernel file (default: the mock kernel)")
    ap.add_argument("--memory", type=int, default=128, help="guest MiB (default 128)")
    ap.add_argument("--runs", type=int, default=3, help="restored runs (default 3)")
    ap.add_argument("--keep", type=Path, help="keep the saved boot and run directories here")
    args = ap.parse_args(argv)
    kernel = _kernel(args.kernel)
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-bench-repro-") as tmp:
        root = args.keep or Path(tmp)
        cfg = ReproConfig(kernel=kernel, memory_mib=args.memory, accel="tcg", artifacts=root / "runs",
                          boot_seconds=300)
        t = time.monotonic()
        saved = save_booted(cfg, root / "saved", progress=_quiet)
        print(f"fresh_boot_to_root_wait: {saved.boot_seconds:.2f} s")
        print(f"fresh_boot_and_save: {time.monotonic() - t:.2f} s (save {saved.state.saved_in:.2f} s)")
        verdicts = []
        for n in range(args.runs):
            verdict, total, timings = _timed_run(saved.config(artifacts=root / "runs"))
            verdicts.append(verdict)
            steps = ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if v is not None)
            print(f"restored_to_verified_minidump_run{n + 1}: {verdict:.2f} s (with the guest's teardown "
                  f"{total:.2f} s; steps: {steps}; boot = the restore)")
        print(f"restored_to_verified_minidump_median: {statistics.median(verdicts):.2f} s")
        verdict, total, _ = _timed_run(cfg)
        print(f"fresh_boot_to_verified_minidump: {verdict:.2f} s (with the guest's teardown {total:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

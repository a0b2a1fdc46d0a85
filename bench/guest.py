"""Guest-layer figures on the tiny Linux test guest (real libvirtd + QEMU), one per line.

Prints: domain start to first console byte, start to shell prompt, NMI round trip, physical read
throughput per method (memoryPeek vs pmemsave), save time and restore-from-saved-state time for a
512 MiB guest (target < 3 s). Run: ``python bench/guest.py`` (or ``python bench/run_all.py guest``).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from linux_guest.builder import PROMPT_RE, ensure_test_guest  # noqa: E402
from linux_guest.session import linux_spec, prompt_again, wait_ready  # noqa: E402

from harness.util.deadline import Deadline  # noqa: E402
from harness.vm import savestate  # noqa: E402
from harness.vm.guest import Guest  # noqa: E402
from harness.vm.libvirt_conn import LibvirtUnavailable, connect  # noqa: E402

MiB = 1 << 20


def figure(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.3f} {unit}", flush=True)


def main() -> int:
    try:
        connect().close()
    except LibvirtUnavailable as exc:
        print(f"guest benchmarks skipped: {str(exc).splitlines()[0]}")
        return 0
    files = ensure_test_guest()
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        with Guest(linux_spec(files, memory_mib=512, shared_memory=True), work) as g:
            print(f"guest accel: {g.accel}", flush=True)
            figure("domain create (paused) + console attach + resume", g.resumed_at - t0, "s")
            wait_ready(g)
            figure("domain start to first console byte", g.console.first_byte_at - g.started_at, "s")
            figure("guest start to shell prompt", time.monotonic() - g.started_at, "s")

            rtts = []
            for _ in range(5):
                g.console.discard_pending()
                t = time.monotonic()
                g.inject_nmi()
                g.console.expect({"nmi": r"NMI received for unknown reason"}, Deadline(60, "nmi"))
                rtts.append(time.monotonic() - t)
            nmi_ms = statistics.median(rtts) * 1000
            figure("NMI round trip (inject to console message, median of 5)", nmi_ms, "ms")
            prompt_again(g)

            size = 64 * MiB
            t = time.monotonic()
            g.read_phys(0, size)
            dt = time.monotonic() - t
            figure("physical read memoryPeek (4 MiB calls, 64 MiB)", size / MiB / dt, "MiB/s")
            g.pause()
            t = time.monotonic()
            img = g.memory_image(work / "ram.img", pause=False)
            dt = time.monotonic() - t
            g.resume()
            figure("physical read pmemsave (whole RAM, 512 MiB)", img.size / MiB / dt, "MiB/s")
            figure("whole-RAM image time (512 MiB, pmemsave)", dt, "s")
            img.close()
            (work / "ram.img").unlink()

            with g.live_memory() as live:
                t = time.monotonic()
                for pa in range(0, live.size, 64 * MiB):
                    live.read(pa, 64 * MiB)
                dt = time.monotonic() - t
            rate = live.size / MiB / dt
            figure("physical read live RAM file (shared memory mmap, whole RAM)", rate, "MiB/s")

            g.console.run("echo bench > /tmp/marker", prompt=PROMPT_RE, deadline=30)
            t = time.monotonic()
            saved = savestate.save(g, work / "saved")
            figure("save running 512 MiB guest (libvirt save, in-place continue)", time.monotonic() - t, "s")
            figure("libvirt save alone", saved.saved_in, "s")

            times, prompts = [], []
            for _ in range(3):
                t = time.monotonic()
                with savestate.restore(saved, work) as r:
                    times.append(time.monotonic() - t)
                    prompt_again(r)
                    prompts.append(time.monotonic() - t)
            name = "restore 512 MiB guest from saved state"
            figure(f"{name} (to running, median of 3)", statistics.median(times), "s")
            figure(f"{name} (to shell prompt, median of 3)", statistics.median(prompts), "s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The panic flow's dump-device attribution on a real QEMU guest (`-m vm`, a few seconds).

No FreeBSD kernel without ddb exists here, so the guest is the MockFreeBSDKernel stand-in (NOT FreeBSD,
``tests/mock_freebsd_kernel/``): booted by GRUB, it writes a real minidump through its virtio-blk queue
from ddb. Verifying that dump with ``flow="panic"`` and no live image from before the dump is exactly
the panic flow's situation: the virtqueue the dump went through changed after the pages holding it
were dumped. QEMU's facts about the dump device (`DumpDeviceState.from_qemu`) must name those
differences; with the image taken before the dump started (the run takes it right before the panic
trigger) it passes.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mock_kernel() -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc) to build the mock kernel")
    path = ROOT / "tests" / "mock_freebsd_kernel" / "mock_freebsd_kernel.py"
    spec = importlib.util.spec_from_file_location("mock_freebsd_kernel_for_verify", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_mock_freebsd_kernel()


@pytest.mark.vm
def test_virtqueue_of_the_dump_is_named_as_dump_device_state(tmp_path):
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable: {exc}")
    import reader
    from harness.freebsd.enter import enter_ddb
    from harness.freebsd.retrieve import from_dump_disk
    from harness.freebsd.stages import Stage, wait_for_stage
    from harness.run.config import ReproConfig
    from harness.run.rundir import make_dump_disk as _make_dump_disk
    from harness.run.sources.bare_kernel import bare_kernel_kenv
    from harness.verify.dumpdevice import DumpDeviceState
    from harness.verify.engine import verify_dump
    from harness.vm.domain_xml import ExtraDisk, GuestSpec, IsoBoot
    from harness.vm.guest import Guest
    from images.grub_iso import build_kernel_iso

    kernel = _mock_kernel()
    cfg = ReproConfig(kernel=kernel, memory_mib=128)
    iso = build_kernel_iso(kernel, bare_kernel_kenv(cfg), tmp_path / "boot.iso")
    disk = _make_dump_disk(tmp_path / "dump.raw", cfg.memory_mib)
    spec = GuestSpec(memory_mib=128, boot=IsoBoot(iso), disks=(ExtraDisk(disk),), on_reboot="destroy")
    with Guest(spec, tmp_path) as guest:
        wait_for_stage(guest.console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], 120, guest=guest)
        ddb = enter_ddb(guest.console, "nmi", guest=guest, memory_mib=128).ddb
        before = guest.memory_image(tmp_path / "before.raw")  # the pipeline's "right before the trigger"
        assert ddb.dump().ok
        after = guest.memory_image(tmp_path / "after.raw")
        state = DumpDeviceState.from_qemu(guest.qmp)
        got = from_dump_disk(disk, tmp_path / "crash", guest=guest, kernel=kernel)
    assert state.queues, state.describe()
    (dev, queue), *_ = state.queues
    assert dev.name == "virtio-blk" and queue.num > 0 and queue.desc
    with reader.open_vmcore(got.vmcore, kernel=kernel) as vm:
        bare = verify_dump(vm, after, kernel=kernel, flow="panic", ddb_values={}, ddb_registers=None)
        named = verify_dump(
            vm, after, kernel=kernel, flow="panic", ddb_values={}, ddb_registers=None, device_state=state
        )
    device_kinds = {"dump-device-state", "dump-device-unnamed"}
    io = [d for d in named.differences if d.kind in device_kinds]
    assert io, named.summary()
    assert all(d.explained for d in io if d.kind == "dump-device-state"), named.summary()
    # without QEMU's facts nothing names these pages as the device's
    same = {d.address for d in io}
    assert {d.kind for d in bare.differences if d.address in same}.isdisjoint(device_kinds)
    # with the image from before the trigger too, the whole dump is judged right
    with reader.open_vmcore(got.vmcore, kernel=kernel) as vm:
        full = verify_dump(
            vm, after, kernel=kernel, flow="panic", ddb_values={}, ddb_registers=None, device_state=state,
            before=before,
        )
    bad = [(hex(d.address), d.attribution, d.reason) for d in full.differences if not d.explained]
    assert full.flow == "panic" and full.passed, (full.summary(), bad)
    assert len([d for d in named.differences if not d.explained]) <= len(
        [d for d in bare.differences if not d.explained]
    )


@pytest.mark.vm
def test_repro_dumps_twice_and_verifies_both(tmp_path):
    """`fbsd-hil repro --dump-twice` on the mock kernel (NOT FreeBSD): a minidump, `write/l do_minidump 0`,
    a full dump, both verified against live memory; a passing run keeps reports and vmcores only, all of
    it private to the caller."""
    import json
    import stat
    import subprocess
    import sys

    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable: {exc}")
    kernel = _mock_kernel()
    art = tmp_path / "art"
    art.mkdir(mode=0o700)
    cmd = [
        sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--memory", "128",
        "--accel", "tcg", "--artifacts", str(art), "--boot-timeout", "120", "--dump-twice",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    (run,) = list(art.iterdir())
    first, second = (json.loads((run / n).read_text()) for n in ("report.json", "report-2.json"))
    assert (first["dump_kind"], second["dump_kind"]) == ("mini", "full")
    for report in (first, second):
        bad = [d for d in report["differences"] if not d["explained"]]
        assert report["passed"] and not bad and report["missing_pages"] == 0, bad
    assert any("write/l do_minidump 0" in n for n in second["notes"]), second["notes"]
    assert second["pages_compared"] > 30000 > first["pages_compared"]
    assert (run / "crash" / "vmcore.0").is_file() and (run / "crash-2" / "vmcore.0").is_file()
    assert not [p.name for p in run.iterdir() if p.suffix == ".raw"], "bulk files kept after a pass"
    assert "removed after the pass" in r.stderr and "report-2.json" in r.stderr
    assert stat.S_IMODE(art.stat().st_mode) == 0o700
    for p in [run, *run.rglob("*")]:
        if not p.is_symlink():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p

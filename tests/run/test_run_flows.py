"""The run's FreeBSD decisions without a guest: the bare-kernel environment, the flow choice
and the panic flow's dump step, driven by replays of EDITED copies of the real 12.1 console recordings
(`harness.freebsd.replay`, ``tests/data/transcripts/freebsd-edited/``: no real kernel without ddb exists
here), and the savecore-vs-host payload check on synthetic dumps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.freebsd.panicdump import ALT_PANIC_SEQUENCE, PANIC_FLOW_KENV, DumpFlow, PanicMethod, select_flow
from harness.freebsd.replay import RecordedTranscript, ReplayConsoleSpawn
from harness.freebsd.stages import Stage, wait_for_stage
from harness.run.boot import Booted
from harness.run.config import ReproConfig
from harness.run.context import RunContext
from harness.run.dump import enter_and_dump
from harness.run.retrieve.after_reboot import same_payload
from harness.run.sources.bare_kernel import bare_kernel_kenv
from harness.vm.console import Console

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts"


def make_dump(guest, choice, *, memory_mib, run_dir, timings, progress, on_step, panic_before_image=True):
    """The run's enter and dump steps on `guest` (what `run_repro` does between boot and after image)."""
    cfg = ReproConfig(memory_mib=memory_mib, panic_before_image=panic_before_image)
    ctx = RunContext(cfg, run_dir, progress, timings, on_step=on_step)
    return enter_and_dump(ctx, Booted(guest), choice)


class ReplayGuest:
    """Stands in for harness.vm.guest.Guest around a replayed console (a replay double, not a VM).

    It has no ``memory_image``: a flow that tried to take a live image would fail loudly."""

    def __init__(self, console: Console, spawn: ReplayConsoleSpawn) -> None:
        self.console, self.spawn = console, spawn
        self.ssh_port = None

    def inject_nmi(self) -> None:
        self.spawn.inject_nmi()

    def send_break(self) -> None:
        self.spawn.send_break()

    def log_tail(self) -> str:
        return ""


@pytest.fixture
def replay():
    consoles: list[Console] = []

    def make(directory: str, name: str) -> tuple[Console, ReplayConsoleSpawn]:
        spawn = ReplayConsoleSpawn(RecordedTranscript.load(TRANSCRIPTS / directory, name))
        console = Console(spawn, name=f"replay:{name}")
        consoles.append(console)
        return console, spawn

    yield make
    for c in consoles:
        c.close()


def test_bare_kernel_kenv_has_the_panic_flow_knobs_and_the_user_wins():
    kenv = bare_kernel_kenv(ReproConfig(kernel=Path("k"), minidump=False))
    assert kenv["dumpdev"] == "/dev/vtbd0" and kenv["debug.minidump"] == "0"
    for key, value in PANIC_FLOW_KENV.items():
        assert kenv[key] == value
    mine = bare_kernel_kenv(
        ReproConfig(kernel=Path("k"), kenv={"kern.panic_reboot_wait_time": "30", "debug.minidump": "1"})
    )
    assert mine["kern.panic_reboot_wait_time"] == "30" and mine["debug.minidump"] == "1"
    assert mine["debug.kdb.alt_break_to_debugger"] == "1"


class ImagingReplayGuest(ReplayGuest):
    """The replay double plus a stand-in ``memory_image`` that records what had been typed when it ran."""

    def __init__(self, console: Console, spawn: ReplayConsoleSpawn) -> None:
        super().__init__(console, spawn)
        self.images: list[tuple[Path, bytes]] = []

    def memory_image(self, path: Path) -> Path:
        path.write_bytes(b"stand-in image")
        self.images.append((path, bytes(self.spawn.sent)))
        return path


def test_panic_flow_takes_the_before_image_right_before_the_trigger(replay, tmp_path):
    console, spawn = replay("freebsd-edited", "edited-noddb-altpanic")
    wait_for_stage(console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], 10)
    choice = select_flow(console, "alt_break", kenv=bare_kernel_kenv(ReproConfig(kernel=Path("k"))))
    guest = ImagingReplayGuest(console, spawn)
    steps: list[str] = []
    crash = make_dump(
        guest, choice, memory_mib=512, run_dir=tmp_path, timings={}, progress=lambda _m: None,
        on_step=steps.append,
    )
    assert [(p.name, typed) for p, typed in guest.images] == [("live-before.raw", b"")]  # nothing typed yet
    assert crash.before == crash.before_path == tmp_path / "live-before.raw"
    assert steps == ["panic dump", "live image (before the panic trigger)", "panic dump"]
    assert crash.result.ok and crash.result.held and "right before the panic trigger" in crash.notes[0]


def test_kernel_without_ddb_takes_the_panic_flow_and_no_before_image(replay, tmp_path):
    """What `run_repro` does after the boot of a bare kernel without ddb, up to the held kernel
    (``panic_before_image=False``: exactly what the dump alone can be checked against)."""
    console, spawn = replay("freebsd-edited", "edited-noddb-altpanic")
    kenv = bare_kernel_kenv(ReproConfig(kernel=Path("k")))
    wait_for_stage(console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], 10)
    choice = select_flow(console, "alt_break", kenv=kenv)
    assert choice.flow == DumpFlow.PANIC and choice.method == PanicMethod.ALT_PANIC
    assert choice.describe().startswith("dump flow: panic (no ddb backend")
    timings: dict[str, float | None] = {"ddb": None, "dump": None}
    said: list[str] = []
    steps: list[str] = []
    crash = make_dump(
        ReplayGuest(console, spawn), choice, memory_mib=512, run_dir=tmp_path, timings=timings,
        progress=said.append, on_step=steps.append, panic_before_image=False,
    )
    assert crash.result.ok and crash.result.held and crash.result.flow == "panic"
    assert (crash.result.kind, crash.result.dump_mb) == ("mini", 42)
    assert crash.before is None and crash.before_path is None and crash.registers is None
    assert crash.values == {} and crash.ddb is None
    assert steps == ["panic dump"] and timings["ddb"] is None and timings["dump"] is not None
    assert bytes(spawn.sent) == ALT_PANIC_SEQUENCE.encode() + b"\r"  # the panic sequence, then the key
    assert "no live image before the dump" in crash.notes[0]
    assert any("held at 'Press a key'" in s and "Panic sequence on console" in s for s in said)
    assert not list(tmp_path.iterdir())  # no live image written


def test_kernel_with_ddb_keeps_the_ddb_flow(replay):
    console, _ = replay("freebsd-12.1-amd64", "trial-waitnmi-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    kenv = bare_kernel_kenv(ReproConfig(kernel=Path("k")))
    choice = select_flow(console, "nmi", kenv=kenv)
    assert choice.flow == DumpFlow.DDB and choice.trigger.value == "nmi"


def _full_dump(path: Path, fill: int) -> Path:
    from tests.dumpwriter.elf import write_amd64_full_dump

    write_amd64_full_dump(path, {0x200000: bytes([fill]) * 4096}, [])
    return path


def test_savecore_copy_is_compared_with_the_host_extraction(tmp_path):
    from tests.dumpwriter.containers import kernel_gzip

    host = _full_dump(tmp_path / "host.vmcore", 0x11)
    same = tmp_path / "savecore.vmcore.gz"
    same.write_bytes(kernel_gzip(host.read_bytes()))  # savecore keeps the kernel's gzip stream
    ok, detail = same_payload(same, host)
    assert ok is True and "sha256" in detail
    other = _full_dump(tmp_path / "other.vmcore", 0x22)
    ok, detail = same_payload(other, host)
    assert ok is False and " vs " in detail
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a dump" * 100)
    ok, detail = same_payload(junk, host)
    assert ok is None and str(junk) in detail


class _Ram:
    """A few physical bytes for descriptor-table parsing (a stand-in for a live image)."""

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)

    def read(self, pa: int, size: int) -> bytes:
        if pa + size > len(self.buf):
            raise ValueError("outside")
        return bytes(self.buf[pa : pa + size])


def test_request_buffers_never_name_the_dumped_data():
    """Following the ring QEMU reports names request headers, status bytes and indirect tables, never the
    data buffers (those are the dumped pages themselves)."""
    import struct

    from harness.verify.dumpdevice import DumpDeviceState, QueueFacts, VirtioDeviceFacts
    from harness.verify.dumpdevice.images import ImageSet
    from harness.verify.dumpdevice.rings import gather

    ram = _Ram(0x10000)
    desc = [
        (0x5000, 16, 1, 1),  # request header (NEXT)
        (0x200000, 65536, 1, 2),  # data: a dumped page range, never named
        (0x5010, 1, 2, 0),  # status byte (WRITE)
        (0x6000, 48, 4, 0),  # indirect table of 3 descriptors
        (0, 0, 0, 0),
    ]
    for i, d in enumerate(desc):
        struct.pack_into("<QIHH", ram.buf, 0x1000 + 16 * i, *d)
    for i, d in enumerate([(0x7000, 16, 1, 1), (0x300000, 4096, 1, 2), (0x7010, 1, 2, 0)]):
        struct.pack_into("<QIHH", ram.buf, 0x6000 + 16 * i, *d)
    queue = QueueFacts(index=0, num=len(desc), desc=0x1000, avail=0x2000, used=0x3000)
    disk = VirtioDeviceFacts("/machine/peripheral/virtio-disk0/virtio-backend", "virtio-blk", (queue,))
    state = DumpDeviceState([disk])
    got = gather(state, ImageSet(ram.read, ram.read, ram.read))
    assert got.tables == {0x6000: 3}
    assert got.headers == {0x5000, 0x7000} and got.statuses == {0x5010, 0x7010}
    named = set(got.tables) | got.headers | got.statuses
    assert not named & {0x200000, 0x300000}
    assert got.queue_of[0x6000] == "virtio-disk0 queue 0"


class _Shell:
    """Stands in for the console shell: answers `sysctl -n debug.kdb.available` from a table."""

    def __init__(self, status: int, output: str) -> None:
        self.status, self.output, self.commands = status, output, []

    def run(self, command: str, deadline: float = 0.0):
        from types import SimpleNamespace

        self.commands.append(command)
        return SimpleNamespace(status=self.status, output=self.output)


def test_image_flow_uses_the_kernels_own_backend_list(replay):
    """With a shell the backends come from the kernel (sysctl), not from a banner that may have scrolled."""
    from harness.run.enter import kernel_facts_with_shell

    console, _ = replay("freebsd-12.1-amd64", "trial-waitnmi-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    assert kernel_facts_with_shell(console, None) is None
    banner = kernel_facts_with_shell(console, _Shell(1, "sysctl: unknown oid"))
    assert banner.has_ddb is True  # the banner of the real 12.1 kernel: ddb
    none = kernel_facts_with_shell(console, _Shell(0, "\r\n"))
    assert none.has_ddb is False and none.backends == ()
    gdb_only = kernel_facts_with_shell(console, _Shell(0, "gdb\r\n"))
    assert gdb_only.has_ddb is False
    c = select_flow(console, "sysctl", shell=_Shell(0, "1"), facts=none)
    assert c.flow == DumpFlow.PANIC and c.method == PanicMethod.SYSCTL_PANIC


def test_images_boot_prepared_with_ssh_forwarded(monkeypatch, tmp_path):
    """--image/--release boot what images.prepare returns (a stand-in record here: no FreeBSD image exists
    on this machine), the dump disk on the same bus, SSH forwarded; savecore retrieval must survive the
    reboot (the domain restarts instead of going away)."""
    import images
    from harness.run.sources import SOURCES, disk_image
    from harness.vm.domain_xml import DiskImageBoot, UserNetwork

    asked = []

    class PreparedStandIn:
        image = tmp_path / "prepared.qcow2"
        disk_bus = "sata"
        dump_device = "/dev/ada1"

    def prepare(what, **kw):
        asked.append((what, kw))
        return PreparedStandIn()

    monkeypatch.setattr(images, "prepare", prepare)
    said: list[str] = []
    for retrieve, on_reboot in (("disk", "destroy"), ("ssh", "restart")):
        cfg = ReproConfig(release="14.3", retrieve=retrieve, offline=True)
        assert SOURCES[cfg.source_kind()] is disk_image.build
        src = disk_image.build(RunContext(cfg, tmp_path, said.append), tmp_path / "dump.raw")
        assert src.spec.boot == DiskImageBoot(image=PreparedStandIn.image, format="qcow2", bus="sata")
        assert src.spec.disks[0].bus == "sata" and src.dump_dev == "/dev/ada1"
        assert src.spec.network == UserNetwork() and src.spec.on_reboot == on_reboot
        assert src.kernel is None and src.kenv is None and isinstance(src.prepared, PreparedStandIn)
        assert src.userland and src.dump_disk == tmp_path / "dump.raw"
    assert asked[0][0] == "14.3" and asked[0][1]["offline"] is True
    assert said[0] == "preparing 14.3 for the harness (cached after the first time)"


def test_summary_shows_the_bad_page_even_after_many_good_ones():
    from harness.verify.report import Difference, VerificationReport

    r = VerificationReport(pages_compared=20, pages_identical=10)
    r.differences = [Difference(0x1000 * i, "msgbuf", "msgbuf", 0, 1, True) for i in range(9)]
    r.differences.append(Difference(0x99000, "unattributed", "unattributed", 0x10, 3, False, "wrong"))
    lines = r.summary().splitlines()
    assert any(line.startswith("  BAD 0x000000099000 +0x010 (3 B) unattributed - wrong") for line in lines)
    assert "  ... 2 more differing pages in the JSON report" in lines


def test_kernel_with_a_root_image_boots_single_user_from_an_iso_with_the_image(tmp_path, monkeypatch):
    """--kernel K --root-image IMG: the ISO carries a copy of the image as a type=mfs_root module and
    boots -s; --retrieve savecore adds an empty crash disk and lets the domain restart."""
    import harness.run.sources.kernel_root_image as source_module
    from harness.run.sources import SOURCES

    kernel, image = tmp_path / "kernel", tmp_path / "root.ufs"
    kernel.write_bytes(b"\x7fELF kernel stand-in")
    image.write_bytes(b"UFS image stand-in")
    built = []

    def build(k, kenv, out, **kw):
        built.append((k, kenv, kw))
        Path(out).write_bytes(b"iso")
        return Path(out)

    original = source_module.cached_kernel_iso

    def cached(k, kenv, **kw):
        return original(k, kenv, cache_dir=tmp_path / "cache", build=build, **kw)

    monkeypatch.setattr(source_module, "cached_kernel_iso", cached)
    assert SOURCES["kernel_root_image"] is source_module.build
    for retrieve, disks, on_reboot in (("disk", 1, "destroy"), ("savecore", 2, "restart")):
        cfg = ReproConfig(kernel=kernel, root_image=image, retrieve=retrieve, trigger="sysctl")
        assert cfg.source_kind() == "kernel_root_image"
        run_dir = tmp_path / retrieve
        run_dir.mkdir()
        src = source_module.build(RunContext(cfg, run_dir, lambda _m: None), run_dir / "dump.raw")
        assert src.single_user and src.has_shell and not src.userland
        assert len(src.spec.disks) == disks and src.spec.on_reboot == on_reboot
        assert (src.crash_disk is not None) == (retrieve == "savecore")
        assert src.kenv["vfs.root.mountfrom"] == "ufs:/dev/md0" and "dumpdev" not in src.kenv
    assert built[0][2] == {"root_image": image, "boot_flags": "-s -h"}
    assert image.read_bytes() == b"UFS image stand-in"


def test_grub_cfg_loads_the_root_image_as_mfs_root():
    from images.grub_iso import grub_cfg

    cfg = grub_cfg("kernel", {}, boot_flags="-s -h", root_image="mfsroot.ufs")
    assert "    kfreebsd /boot/kernel/kernel -s -h" in cfg
    assert "    kfreebsd_module /boot/mfsroot.ufs type=mfs_root" in cfg
    assert "set kFreeBSD.vfs.root.mountfrom='ufs:/dev/md0'" in cfg


def test_savecore_retrieval_onto_a_crash_disk_wiring(tmp_path, monkeypatch):
    """`--retrieve savecore` after the dump: reboot single-user, savecore in the guest (the real 12.1
    boot 2, replayed), the crash disk read on the host. The crash disk here is a makefs UFS2 image holding
    what savecore would have written (the replay has no disk), the host's own copy a file with the same
    bytes; a copy that differs must stop the run."""
    import shutil
    import subprocess

    from harness.freebsd.replay_shell import ReplayShellSpawn, parse_single_user_log
    from harness.run.config import ReproError
    from harness.run.retrieve import RETRIEVALS, base, savecore_ufs
    from harness.run.sources.base import GuestSource

    if shutil.which("makefs") is None:
        pytest.skip("needs Debian's makefs")
    log = Path(__file__).resolve().parents[1] / "data/transcripts/freebsd-12.1-mfsroot/boot-test.console.log"
    boot2 = parse_single_user_log(log.read_bytes())[1]
    payload = b"minidump FreeBSD/amd64\0" + bytes(range(256)) * 64
    for tamper, expect_pass in ((False, True), (True, False)):
        work = tmp_path / ("bad" if tamper else "good")
        (work / "fs").mkdir(parents=True)
        (work / "fs" / "vmcore.0").write_bytes(payload)
        (work / "fs" / "info.0").write_text("  Dump Status: good\n")
        crash_disk = work / "crash-disk.raw"
        makefs = ["makefs", "-t", "ffs", "-o", "version=2", "-s", "4m", str(crash_disk), str(work / "fs")]
        subprocess.run(makefs, check=True, stdout=subprocess.DEVNULL)
        host_copy = work / "host-vmcore.0"
        host_copy.write_bytes(payload if not tamper else payload[:-1] + b"X")
        monkeypatch.setattr(
            savecore_ufs, "retrieve_from_dump_disk",
            lambda ctx, booted, crash, outdir="crash", hc=host_copy: base.Retrieved(hc, None, "k"),
        )

        class Guest:
            console = Console(ReplayShellSpawn(boot2), name="replay:boot-test-2")
            paused = 0

            def resume(self):
                pass

            def pause(self):
                Guest.paused += 1

        class Ddb:  # the replay starts at the next boot: `reset` has nothing to type
            active = True

            def reset(self):
                pass

        source = GuestSource(spec=None, dump_dev="/dev/vtbd0", kernel=None, kernel_source="k",
                             single_user=True, crash_disk=crash_disk)
        booted = Booted(Guest(), source)
        ctx = RunContext(ReproConfig(retrieve="savecore"), work, lambda _m: None)
        crash = type("Crash", (), {"ddb": Ddb()})()
        assert RETRIEVALS["savecore"] is savecore_ufs
        if expect_pass:
            got = savecore_ufs.retrieve(ctx, booted, crash)
            assert got.vmcore.read_bytes() == payload and Guest.paused == 1
            assert any("hold the same payload" in n for n in got.notes), got.notes
        else:
            with pytest.raises(ReproError, match="differs from the host's extraction"):
                savecore_ufs.retrieve(ctx, booted, crash)
        Guest.console.close()

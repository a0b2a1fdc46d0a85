"""The guest layer against real libvirtd + QEMU (TCG), with the tiny Linux guest from tests/linux_guest.

One guest is booted for the session (`booted_guest`) and saved once (`saved_ready`); tests that break
their guest (panic, poweroff, hang) restore a private copy from that state in about a second.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from linux_guest.builder import PROMPT_RE
from linux_guest.session import PANIC_RE, linux_spec, prompt_again, wait_ready

from harness.util.deadline import Deadline
from harness.vm import savestate
from harness.vm.console import ConsoleClosed, ConsoleFailure, ConsoleTimeout
from harness.vm.domain_xml import DiskImageBoot, ExtraDisk, GuestSpec, UserNetwork
from harness.vm.guest import Guest, GuestLaunchError
from harness.vm.libvirt_conn import connect
from harness.vm.reaper import REGISTRY_DIR, reap

pytestmark = pytest.mark.vm
REPO = Path(__file__).resolve().parents[2]
PAGE = 4096


def sh(guest: Guest, command: str, seconds: float = 60) -> str:
    result = guest.console.run(command, prompt=PROMPT_RE, deadline=Deadline(seconds, f"guest: {command}"))
    assert result.status == 0, result
    return result.output


def domain_exists(uri: str, name: str) -> bool:
    import libvirt

    conn = connect(uri)
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


@pytest.fixture
def tiny_base(tmp_path: Path) -> Path:
    """A small qcow2 base image (not bootable: SeaBIOS just waits), made read-only like a cache."""
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    base.chmod(0o444)
    return base


# --------------------------------------------------------------------------- console on a real guest
def test_boot_and_command_round_trips(booted_guest):
    assert sh(booted_guest, "echo hello from $(uname -s)") == "hello from Linux\n"
    assert booted_guest.console.run("false", prompt=PROMPT_RE, deadline=30).status == 1
    assert booted_guest.console.run("sh -c 'exit 7'", prompt=PROMPT_RE, deadline=30).status == 7
    out = sh(booted_guest, "seq 1 300")
    assert out.split() == [str(i) for i in range(1, 301)]
    assert "MemTotal" in sh(booted_guest, "head -1 /proc/meminfo")


def test_transcript_has_every_byte_from_the_first(booted_guest):
    """Our transcript equals libvirt's serial <log> files byte for byte (start paused, then attach)."""
    sh(booted_guest, "echo transcript-check")
    logs = booted_guest.console_logs
    deadline = time.monotonic() + 15
    while True:
        logged = b"".join(p.read_bytes() for p in logs if p.exists())
        ours = booted_guest.transcript_path.read_bytes()
        if logged == ours or time.monotonic() > deadline:
            break
        time.sleep(0.3)  # virtlogd writes asynchronously
    assert len(ours) > 10_000
    assert logged == ours
    assert b"Linux version" in ours[:4096]  # the kernel's very first lines are there


def test_nmi_is_delivered(booted_guest):
    booted_guest.console.discard_pending()
    booted_guest.inject_nmi()
    nmi = r"NMI received for unknown reason[^\r\n]*\r?\n"
    m = booted_guest.console.expect({"nmi": nmi}, Deadline(60, "NMI"))
    assert "CPU" in m.match.group(0)
    prompt_again(booted_guest)
    assert sh(booted_guest, "echo alive") == "alive\n"


def test_serial_break_is_a_sysrq(booted_guest):
    sh(booted_guest, "echo 1 > /proc/sys/kernel/sysrq")
    booted_guest.console.discard_pending()
    booted_guest.send_break()
    time.sleep(0.3)
    booted_guest.console.send("h")  # the key after a BREAK is the sysrq command: h = help
    booted_guest.console.expect({"help": r"sysrq: HELP"}, Deadline(60, "sysrq help after BREAK"))
    prompt_again(booted_guest)


def test_send_keys_reaches_the_keyboard(booted_guest):
    booted_guest.console.discard_pending()
    booted_guest.send_keys(["alt", "sysrq", "h"])
    booted_guest.console.expect({"help": r"sysrq: HELP"}, Deadline(60, "sysrq help from the keyboard"))
    with pytest.raises(ValueError, match="unknown key name"):
        booted_guest.send_keys("ctrl+nosuchkey")
    prompt_again(booted_guest)


def test_pause_resume_qmp_hmp(booted_guest):
    booted_guest.pause()
    try:
        assert booted_guest.state() == "paused"
        assert booted_guest.qmp("query-status")["status"] == "paused"
        regs = booted_guest.hmp("info registers")
        assert "RIP=" in regs and "CR3=" in regs
        booted_guest.console.sendline("echo while-paused")
        with pytest.raises(ConsoleTimeout) as info:
            booted_guest.console.expect({"out": r"\nwhile-paused"}, Deadline(2, "paused guest"))
        assert info.value.phase == "paused guest"
    finally:
        booted_guest.resume()
    booted_guest.console.expect({"out": r"\nwhile-paused"}, Deadline(30, "resumed guest"))
    prompt_again(booted_guest)
    assert booted_guest.state() == "running"
    with pytest.raises(Exception, match="no-such-qmp-command"):
        booted_guest.qmp("no-such-qmp-command")
    assert "qemu" in booted_guest.log_tail().lower()


# --------------------------------------------------------------------------- live memory
def pattern_physical_pages(guest: Guest, pattern: str) -> list[tuple[int, int, int]]:
    """Put `pattern` into a guest process's memory; return [(pa, offset in pattern, length)].

    The pattern is the only environment string of a sleeping process, so it sits at the process's
    env_start (field 50 of /proc/PID/stat) + len("FBHPAT="); /proc/PID/pagemap gives the frame.
    """
    out = sh(guest, f"env -i FBHPAT={pattern} sleep 100000 & echo PID=$!")
    pid = int(re.search(r"PID=(\d+)", out).group(1))
    assert sh(guest, f"cat /proc/{pid}/environ") == f"FBHPAT={pattern}\x00"
    va = int(sh(guest, f"cut -d' ' -f50 /proc/{pid}/stat").strip()) + len("FBHPAT=")
    pieces = []
    pos = 0
    while pos < len(pattern):
        page_va = (va + pos) // PAGE * PAGE
        n = min(len(pattern) - pos, page_va + PAGE - (va + pos))
        entry_hex = sh(
            guest, f"dd if=/proc/{pid}/pagemap bs=8 skip={page_va // PAGE} count=1 2>/dev/null | od -An -tx8"
        )
        entry = int(entry_hex.split()[0], 16)
        assert entry >> 63 == 1, f"page {page_va:#x} not present: {entry:#x}"
        pfn = entry & ((1 << 55) - 1)
        pieces.append((pfn * PAGE + (va + pos) % PAGE, pos, n))
        pos += n
    return pieces


def test_physical_read_equals_the_guests_own_memory(booted_guest):
    pattern = "FBHP" + secrets.token_hex(30)
    pieces = pattern_physical_pages(booted_guest, pattern)
    for pa, off, n in pieces:
        assert booted_guest.read_phys(pa, n) == pattern[off : off + n].encode()
    # a multi-chunk read (> 4 MiB, several memoryPeek calls) lines up with single reads
    big = booted_guest.read_phys(0x100000, 9 * 1024 * 1024)
    assert big[5 * 1024 * 1024 : 5 * 1024 * 1024 + 4096] == booted_guest.read_phys(0x600000, 4096)
    from harness.vm.memory import MemoryRangeError

    with pytest.raises(MemoryRangeError, match="not inside guest RAM"):
        booted_guest.read_phys(512 * 1024 * 1024 - 16, 32)


def test_whole_ram_image_equals_memory_peek(booted_guest, tmp_path):
    pattern = "FBHI" + secrets.token_hex(30)
    pieces = pattern_physical_pages(booted_guest, pattern)
    booted_guest.pause()
    try:
        image = booted_guest.memory_image(tmp_path / "ram.img", pause=False)
        with image:
            assert image.ranges == [(0, 512 * 1024 * 1024, 0)]
            assert image.path.stat().st_size == 512 * 1024 * 1024
            for pa, off, n in pieces:
                assert image.read(pa, n) == pattern[off : off + n].encode()
            chunk = 4 * 1024 * 1024
            for rpa, rsize, _off in image.ranges:
                for pa in range(rpa, rpa + rsize, chunk):
                    n = min(chunk, rpa + rsize - pa)
                    assert image.read(pa, n) == booted_guest.read_phys(pa, n), f"differs at {pa:#x}"
    finally:
        booted_guest.resume()
    with pytest.raises(FileExistsError):
        booted_guest.memory_image(tmp_path / "ram.img")
    prompt_again(booted_guest)


def test_live_memory_is_the_guests_ram_in_place(booted_guest):
    live = booted_guest.live_memory()
    with live:
        assert live.ranges == [(0, 512 * 1024 * 1024, 0)]
        first = "FBHL" + secrets.token_hex(30)
        for pa, off, n in pattern_physical_pages(booted_guest, first):
            assert live.read(pa, n) == first[off : off + n].encode()
            assert booted_guest.read_phys(pa, n) == live.read(pa, n)
        # no copy: the same mapping shows what the running guest writes next
        second = "FBHM" + secrets.token_hex(30)
        for pa, off, n in pattern_physical_pages(booted_guest, second):
            assert live.read(pa, n) == second[off : off + n].encode()


def test_live_memory_needs_shared_memory(libvirt_uri, tiny_base, tmp_path):
    from harness.vm.guest import GuestError

    spec = GuestSpec(memory_mib=64, accel="tcg", boot=DiskImageBoot(tiny_base), uri=libvirt_uri)
    with Guest(spec, tmp_path) as g, pytest.raises(GuestError, match="shared_memory=True"):
        g.live_memory()


# --------------------------------------------------------------------------- saved state
def test_restore_starts_from_the_saved_state(saved_ready, booted_guest, guest_workdir):
    assert sh(booted_guest, "cat /tmp/marker") == "saved-state-marker\n"
    sh(booted_guest, "echo changed-after-save > /tmp/marker")
    restore = savestate.restore
    with restore(saved_ready, guest_workdir) as a, restore(saved_ready, guest_workdir) as b:
        for g in (a, b):
            prompt_again(g)
            assert sh(g, "cat /tmp/marker") == "saved-state-marker\n"
        sh(a, "echo only-a > /tmp/marker")
        assert sh(b, "cat /tmp/marker") == "saved-state-marker\n"
        assert a.name != b.name
    assert sh(booted_guest, "cat /tmp/marker") == "changed-after-save\n"
    again = savestate.SavedState.load(saved_ready.dir)
    assert again.state_file == saved_ready.state_file


# --------------------------------------------------------------------------- guests that misbehave
def test_hanging_guest_ends_with_deadline_and_tail(fresh_guest):
    with pytest.raises(ConsoleTimeout) as info:
        fresh_guest.console.run(
            "echo about-to-hang; sleep 3600", prompt=PROMPT_RE, deadline=Deadline(4, "hang")
        )
    err = info.value
    assert err.phase == "hang"
    assert "about-to-hang" in err.tail
    assert "console tail" in str(err)


def test_panicking_guest_ends_the_wait_with_evidence(fresh_guest):
    fresh_guest.console.arm_failure("kernel-panic", PANIC_RE)
    t0 = time.monotonic()
    with pytest.raises(ConsoleFailure) as info:
        fresh_guest.console.run(
            "echo c > /proc/sysrq-trigger", prompt=PROMPT_RE, deadline=Deadline(300, "panic")
        )
    assert time.monotonic() - t0 < 120
    err = info.value
    assert err.name == "kernel-panic"
    assert "sysrq triggered crash" in err.matched
    assert "Trigger a crash" in err.tail


def test_powered_off_guest_closes_the_console(fresh_guest):
    fresh_guest.console.sendline("poweroff -f")
    with pytest.raises(ConsoleClosed) as info:
        fresh_guest.console.expect({"never": "never-printed"}, Deadline(120, "poweroff"))
    assert "poweroff -f" in info.value.tail
    fresh_guest.wait_gone(60)
    assert fresh_guest.state() in ("gone", "shutoff")


def test_launch_failure_carries_xml_and_qemu_log(libvirt_uri, linux_guest_files, tmp_path):
    spec = linux_spec(linux_guest_files, uri=libvirt_uri, extra_qemu_args=("-device", "fbh-no-such-device"))
    guest = Guest(spec, tmp_path)
    with pytest.raises(GuestLaunchError) as info:
        guest.start()
    text = str(info.value)
    assert "fbh-no-such-device" in text
    assert "<domain" in info.value.domain_xml
    assert "fbh-no-such-device" in info.value.qemu_log
    assert not domain_exists(libvirt_uri, guest.name)
    assert not guest.registry.exists()


# --------------------------------------------------------------------------- cleanup and reaping
def test_cleanup_after_exception_and_keyboard_interrupt(libvirt_uri, tiny_base, tmp_path):
    digest = hashlib.sha256(tiny_base.read_bytes()).hexdigest()
    for exc_type in (RuntimeError, KeyboardInterrupt):
        spec = GuestSpec(memory_mib=64, accel="tcg", boot=DiskImageBoot(tiny_base), uri=libvirt_uri)
        with pytest.raises(exc_type), Guest(spec, tmp_path) as g:
            assert domain_exists(libvirt_uri, g.name)
            assert g.overlay.is_file() and g.registry.is_file()
            raise exc_type("boom")
        assert not domain_exists(libvirt_uri, g.name)
        assert not g.overlay.exists()
        assert not g.registry.exists()
    assert hashlib.sha256(tiny_base.read_bytes()).hexdigest() == digest  # the base is never written


KILLED_RUN = """
import sys, time
from pathlib import Path
from harness.vm.guest import Guest
from harness.vm.domain_xml import GuestSpec, DiskImageBoot
spec = GuestSpec(memory_mib=64, accel="tcg", boot=DiskImageBoot(Path(sys.argv[1])), uri=sys.argv[3])
g = Guest(spec, sys.argv[2]).start()
print(g.name, g.overlay, flush=True)
time.sleep(600)
"""


def test_reaper_removes_what_a_sigkilled_run_left(libvirt_uri, tiny_base, tmp_path, booted_guest):
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(tiny_base), str(tmp_path), libvirt_uri],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        name, overlay = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert domain_exists(libvirt_uri, name) and Path(overlay).exists()
    report = reap(libvirt_uri)
    assert name in report.destroyed
    assert overlay in report.removed_files
    assert booted_guest.name in report.kept  # a live owner's guest is never touched
    assert not domain_exists(libvirt_uri, name)
    assert not Path(overlay).exists()
    assert not (REGISTRY_DIR / f"{name}.json").exists()
    assert domain_exists(libvirt_uri, booted_guest.name)


# --------------------------------------------------------------------------- q35, disks, networking
def test_q35_guest_with_extra_disks_and_port_forward(libvirt_uri, linux_guest_files, tmp_path):
    virtio_disk, sata_disk = tmp_path / "virtio.raw", tmp_path / "sata.raw"
    for d in (virtio_disk, sata_disk):
        with open(d, "wb") as f:
            f.truncate(8 * 1024 * 1024)
    spec = linux_spec(
        linux_guest_files,
        uri=libvirt_uri,
        machine="q35",
        memory_mib=256,
        disks=[ExtraDisk(virtio_disk, bus="virtio"), ExtraDisk(sata_disk, bus="sata")],
        network=UserNetwork(),
    )
    with Guest(spec, tmp_path) as g:
        wait_ready(g)
        assert "127.0.0.1" in g.hmp("info usernet")
        tag = secrets.token_hex(8)
        for dev in ("vda", "sda"):
            sh(g, f"echo FBHDISK-{dev}-{tag} | dd of=/dev/{dev} bs=512 seek=8 conv=fsync 2>/dev/null")
        assert virtio_disk.read_bytes()[4096:4096 + 30].startswith(f"FBHDISK-vda-{tag}".encode())
        assert sata_disk.read_bytes()[4096:4096 + 30].startswith(f"FBHDISK-sda-{tag}".encode())
        sh(g, f"nc -l -p 22 -e echo hello-{tag} &")
        got = b""
        end = time.monotonic() + 60
        while not got and time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", g.ssh_port), timeout=10) as s:
                    got = s.recv(100)
            except OSError:
                time.sleep(0.5)
        assert got.strip() == f"hello-{tag}".encode()

        saved = savestate.save(g, tmp_path / "saved")
        assert g.disk_paths()["vda"] == virtio_disk  # the saved guest keeps writing its own disks
        sh(g, f"echo AFTER-SAVE-{tag} | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null")
        assert virtio_disk.read_bytes()[4096:4096 + 30].startswith(f"AFTER-SAVE-{tag}".encode())
        with savestate.restore(saved, tmp_path) as r:
            prompt_again(r)
            paths = r.disk_paths()
            assert paths["vda"] not in (virtio_disk, saved.dir / "disk-vda.raw")  # a private copy
            assert paths["vda"].read_bytes()[4096:4096 + 30].startswith(f"FBHDISK-vda-{tag}".encode())
            seen = sh(r, "dd if=/dev/sda bs=512 skip=8 count=1 2>/dev/null | head -c 28")
            assert seen == f"FBHDISK-sda-{tag}"
            assert r.ssh_port != g.ssh_port
    assert os.path.exists(virtio_disk)  # extra disks are the caller's: never removed


# --------------------------------------------------------------------------- RAM above 4 GiB
def qemu_ram_ranges(guest: Guest) -> list[tuple[int, int]]:
    """Guest RAM as QEMU itself maps it (HMP `info mtree -f`, address space "memory")."""
    text = guest.hmp("info mtree -f")
    ranges: list[tuple[int, int]] = []
    in_memory = False
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if ranges:
                break
            in_memory = False
        if line.startswith(" AS ") and '"memory"' in line:
            in_memory = True
        m = re.match(r"\s+([0-9a-f]+)-([0-9a-f]+) \(prio \d+, ram\): pc\.ram", line)
        if in_memory and m:
            start, end = int(m.group(1), 16), int(m.group(2), 16) + 1
            if ranges and ranges[-1][0] + ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end - ranges[-1][0])
            else:
                ranges.append((start, end - start))
    return ranges


@pytest.mark.parametrize(("machine", "mib"), [("pc", 4096), ("q35", 2816)])
def test_ram_layout_matches_qemu_above_4g(libvirt_uri, tiny_base, tmp_path, machine, mib):
    boot = DiskImageBoot(tiny_base)
    spec = GuestSpec(machine=machine, memory_mib=mib, accel="tcg", boot=boot, uri=libvirt_uri)
    with Guest(spec, tmp_path) as g:
        ours = g.ram_ranges()
        assert len(ours) == 2 and ours[1][0] == 4 * 1024**3
        qemu = qemu_ram_ranges(g)
        assert qemu, "no pc.ram ranges in `info mtree -f`"
        assert qemu[-1] == ours[1]  # RAM above 4 GiB: same start and size
        low_end = max(s + n for s, n in qemu if s < 4 * 1024**3)
        assert low_end == ours[0][1]  # RAM below the PCI hole ends where we think it does
        for s, n in qemu:  # every piece QEMU maps as RAM lies inside our ranges
            assert any(a <= s and s + n <= a + b for a, b in ours), (hex(s), hex(n))
        assert len(g.read_phys(ours[1][0] + ours[1][1] - 4096, 4096)) == 4096
        if machine == "q35":
            g.pause()
            with g.memory_image(tmp_path / "ram.img", pause=False) as img:
                assert [r[:2] for r in img.ranges] == ours
                assert img.path.stat().st_size == mib * 1024 * 1024
                for pa in (ours[0][1] - 1024 * 1024, ours[1][0], ours[1][0] + ours[1][1] - 65536):
                    assert img.read(pa, 65536) == g.read_phys(pa, 65536)
            (tmp_path / "ram.img").unlink()


# --------------------------------------------------------------------------- console over a libvirt stream
def test_console_through_virsh_stream(libvirt_uri, linux_guest_files, tmp_path):
    """The console path used for remote URIs (qemu+ssh://): `virsh console`, here on the local URI."""
    spec = linux_spec(linux_guest_files, uri=libvirt_uri, console="virsh", memory_mib=256)
    with Guest(spec, tmp_path) as g:
        assert g.console_via == "virsh"
        wait_ready(g)
        assert sh(g, "echo via-stream") == "via-stream\n"
        deadline = time.monotonic() + 15
        while g.transcript_path.read_bytes() != g.console_log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert g.transcript_path.read_bytes() == g.console_log.read_bytes()
        savestate.save(g, tmp_path / "saved")  # the stream is re-attached to the restored domain
        prompt_again(g)
        assert sh(g, "echo after-restore") == "after-restore\n"


# --------------------------------------------------------------------------- ISO boot
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_iso_boot(libvirt_uri, tmp_path, machine):
    """An El Torito (no emulation) CD whose boot sector prints a banner on COM1: the CD is the boot
    device, and the console sees its first bytes."""
    from harness.vm.accel import BOOT_BANNER, probe_boot_sector
    from harness.vm.domain_xml import IsoBoot

    root = tmp_path / "iso"
    root.mkdir()
    (root / "boot.img").write_bytes(probe_boot_sector())
    iso = tmp_path / "boot.iso"
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-b", "boot.img", "-no-emul-boot", "-boot-load-size", "1",
         "-o", str(iso), str(root)],
        check=True, capture_output=True,
    )  # fmt: skip
    spec = GuestSpec(machine=machine, memory_mib=64, accel="tcg", boot=IsoBoot(iso), uri=libvirt_uri)
    with Guest(spec, tmp_path) as g:
        g.console.expect({"banner": BOOT_BANNER.decode()}, Deadline(60, "boot sector on the CD"))


def test_kept_guest_survives_its_owner_and_the_reaper(libvirt_uri, tiny_base, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pathlib import Path\n"
         "from harness.vm.guest import Guest, GuestSpec, DiskImageBoot\n"
         f"g = Guest(GuestSpec(memory_mib=64, accel='tcg', boot=DiskImageBoot(Path({str(tiny_base)!r})),"
         f" uri={libvirt_uri!r}), {str(tmp_path)!r}, keep=True)\n"
         "with g: print(g.name, g.overlay)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    name, overlay = proc.stdout.split()
    try:
        assert domain_exists(libvirt_uri, name)  # the owner exited, the domain was kept
        report = reap(libvirt_uri)
        assert name in report.kept and name not in report.destroyed
        assert Path(overlay).exists()
    finally:
        conn = connect(libvirt_uri)
        try:
            conn.lookupByName(name).destroy()
        finally:
            conn.close()
    report = reap(libvirt_uri)  # domain gone: the registry entry goes, the kept files stay
    assert not (REGISTRY_DIR / f"{name}.json").exists()
    assert Path(overlay).exists()

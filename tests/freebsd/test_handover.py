"""Boot failures and silent kernels, offline: replayed console texts (real SeaBIOS / GRUB output recorded
under QEMU here), the mock kernel files and QEMU log texts.

* a firmware / GRUB / loader(8) failure ends a boot wait at once with `BootFailed` quoting its error
  lines (before: the wait ran out its whole deadline, 600 s in ``repro``);
* "GRUB handed over and the kernel printed nothing" names what QEMU saw, how long after the hand-over,
  and what the kernel file expects (`harness.freebsd.handover`, `harness.freebsd.kernelfile`);
* boot progress: the milestones on the way, with seconds.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.freebsd.handover import condensed_log, explain_silence, qemu_verdict
from harness.freebsd.kernelfile import KernelFileError, inspect_kernel_file
from harness.freebsd.replay import RecordedTranscript, _derive_gates
from harness.freebsd.stages import (
    BootFailed,
    GuestPanicked,
    Stage,
    StageConsoleClosed,
    StageTimeout,
    wait_for_stage,
)

# Recorded with `build_kernel_iso(<1 MiB of random bytes>)` booted by harness.vm.guest.Guest (QEMU 7.2 TCG,
# SeaBIOS on COM1 via graphics=off): GRUB cannot load the kernel, waits at "Press any key" ~15 s, gives up.
GRUB_GARBAGE_KERNEL = (
    b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    b"Machine UUID 3fd0e71a-cf89-402f-99b8-065634c9d449\r\nBooting from DVD/CD...\r\n"
    b"\x1b[0;30;47mWelcome to GRUB!\x1b[04;16H\r\n\n\x1b[H\x1b[J\x1b[1;1H\x1b[H\x1b[J\x1b[1;1H"
    b"  Booting `fbsd-hil: FreeBSD kernel garbage flags=-h'\n\r\n\rGRUB: loading FreeBSD kernel\n\r"
    b"error: invalid a.out header.\n\rGRUB: booting\n\r\n\rPress any key to continue...\n\r\n\r"
    b"  Failed to boot both default and fallback entries.\n\r"
)
# The same run's GRUB failure as issue 12 describes it (a kernel GRUB's relocator cannot size)
GRUB_UNDERFLOW = GRUB_GARBAGE_KERNEL.replace(
    b"invalid a.out header.", b"underflow detected while determining size of kernel for relocator."
)
# A raw file that is not a disk image, booted as DiskImageBoot (recorded the same way)
SEABIOS_NOT_A_DISK = (
    b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n"
    b"Machine UUID ffc0038e-2021-427c-97e5-09160f55394a\r\nBooting from Hard Disk...\r\n"
    b"Boot failed: not a bootable disk\r"
)
# Not recorded (no FreeBSD image here): loader(8)'s texts from stand/lua/config.lua (MSG_KERNFAIL) and
# stand/common/boot.c, in the order a lua loader prints them when /boot/kernel/kernel is missing.
LOADER_NO_KERNEL = (
    b"Consoles: serial port  \r\nBIOS drive C: is disk0\r\n\r\nFreeBSD/x86 bootstrap loader, Revision 1.1\r\n"
    b"Loading /boot/defaults/loader.conf\r\nERROR: cannot open /boot/kernel/kernel: no such file\r\n"
    b"Failed to load kernel 'kernel'\r\n\r\n"
    b"Type '?' for a list of commands, 'help' for more detailed help.\r\n"
    b"OK "
)
GRUB_THEN_SILENCE = GRUB_GARBAGE_KERNEL.split(b"error:")[0] + b"GRUB: booting\n\r"
TRIPLE_FAULT_LOG = """2026-12-04 16:40:15.171+0000: starting up libvirt version: 9.0.0
char device redirected to /dev/pts/1 (label charserial0)
CPU Reset (CPU 0)
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
ES =0000 00000000 0000ffff 00009300
CR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000
XMM00=0000000000000000 0000000000000000 XMM01=0000000000000000 0000000000000000
Triple fault
2026-12-04T16:40:15.820760Z qemu-system-x86_64: terminating on signal 15 from pid 3727 (/usr/sbin/libvirtd)
"""


GRUB_FAILED = "GRUB could not boot the kernel"


def transcript(name: str, serial: bytes) -> RecordedTranscript:
    return RecordedTranscript(name, serial, _derive_gates(serial, []))


@pytest.mark.parametrize(
    ("serial", "who", "said"),
    [
        (GRUB_GARBAGE_KERNEL, GRUB_FAILED, "error: invalid a.out header."),
        (GRUB_UNDERFLOW, GRUB_FAILED, "error: underflow detected while determining size"),
        (SEABIOS_NOT_A_DISK, "the firmware (SeaBIOS) found nothing", "Boot failed: not a bootable disk"),
        (LOADER_NO_KERNEL, "FreeBSD's loader(8) could not load the kernel", "Failed to load kernel 'kernel'"),
    ],
)
def test_boot_failures_end_the_wait_at_once(replay, serial, who, said):
    console, _ = replay(transcript("boot-failure", serial))
    targets = [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT, Stage.LOGIN]
    with pytest.raises(BootFailed) as exc:
        wait_for_stage(console, targets, 30)
    msg = str(exc.value)
    assert msg.startswith(who), msg
    assert said in msg.splitlines()[0], msg
    assert "waiting for root_wait/mountroot_prompt/login" in msg
    assert not isinstance(exc.value, GuestPanicked)
    if serial is LOADER_NO_KERNEL:
        assert "ERROR: cannot open /boot/kernel/kernel: no such file" in msg.splitlines()[0]


def test_a_panic_is_still_a_panic_and_boot_failures_stay_armed_with_allow_panic(replay):
    console, _ = replay(transcript("panic", b"KDB: debugger backends: ddb\r\npanic: boom\r\ncpuid = 0\r\n"))
    with pytest.raises(GuestPanicked, match="boom"):
        wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    console, _ = replay(transcript("grub", GRUB_GARBAGE_KERNEL))
    with pytest.raises(BootFailed):
        wait_for_stage(console, [Stage.PANIC], 10, allow_panic=True)


def test_boot_progress_names_each_milestone_once(replay):
    from tests.freebsd.conftest import load

    console, _ = replay(load("trial-altbreak-1"))
    seen: list[str] = []
    event = wait_for_stage(console, [Stage.ROOT_WAIT], 30, progress=seen.append)
    assert event.stage == Stage.ROOT_WAIT and event.value == "/dev/nosuchdisk"
    assert [s.split(" after ")[0] for s in seen] == [
        "boot: firmware", "boot: grub", "boot: kernel", "boot: root_wait"
    ], seen
    assert all(s.endswith("s") and float(s.split(" after ")[1][:-1]) >= 0 for s in seen)


def test_qemu_log_verdict_and_condensed_tail():
    verdict = qemu_verdict(TRIPLE_FAULT_LOG)
    assert verdict.triple_faults == 1 and verdict.stopped_by_libvirt and verdict.logged_resets
    assert verdict.describe() == "QEMU logged a triple fault (CPU reset)"
    short = condensed_log(TRIPLE_FAULT_LOG)
    assert "Triple fault" in short and "terminating on signal 15" in short
    assert "EAX=" not in short and "XMM00" not in short and "CR0=" not in short
    assert qemu_verdict("char device redirected to /dev/pts/1\n").describe().endswith("(no -d cpu_reset)")
    # only the last start of a reused log counts
    restart = "2026-12-04 16:41:00.000+0000: starting up libvirt version: 9.0.0\nCPU Reset (CPU 0)\n"
    again = TRIPLE_FAULT_LOG + restart
    assert qemu_verdict(again).triple_faults == 0


# ----------------------------------------------------------------------------- the kernel file
@pytest.fixture(scope="module")
def mock_kernels() -> dict[str, Path]:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc)")
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    return {"12": build_mock_freebsd_kernel(), "current": build_mock_freebsd_kernel(current_kernel=True)}


def test_kernel_file_facts_from_note_types_and_panic_string(mock_kernels):
    old = inspect_kernel_file(mock_kernels["12"])
    assert old.abi_tag_version == 1201000 and old.release == "12.1" and old.machine == "amd64"
    assert old.preload_types == ("elf kernel", "elf64 kernel") and old.accepts_only_elf_kernel is False
    assert old.is_freebsd and old.evidence[0].startswith("FreeBSD ABI tag note")
    new = inspect_kernel_file(mock_kernels["current"])
    assert new.abi_tag_version == 1500000 and new.release == "15.0"
    assert new.preload_types == ("elf kernel",) and new.panics_without_elf_kernel
    assert new.accepts_only_elf_kernel is True
    assert 'the panic "unable to find kernel metadata"' in new.describe()


def _elf64(osabi: int, note: bytes = b"") -> bytes:
    """A minimal ELF64 executable header (+ one PT_NOTE program header when `note` is given)."""
    phnum = 1 if note else 0
    ehdr = b"\x7fELF" + bytes([2, 1, 1, osabi]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0xFFFFFFFF80200000, 64 if phnum else 0, 0, 0, 64, 56,
                        phnum, 64, 0, 0)
    if not note:
        return ehdr
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(note), len(note), 4)
    return ehdr + phdr + note


def test_a_derivative_is_recognised_by_note_and_osabi_not_by_its_version_string(tmp_path):
    note = struct.pack("<III", 8, 4, 1) + b"FreeBSD\0" + struct.pack("<I", 1402000)
    renamed = tmp_path / "truenas-kernel"
    renamed.write_bytes(_elf64(9, note) + b"\0TrueNAS 14.2-RELEASE\0")
    facts = inspect_kernel_file(renamed)
    assert facts.is_freebsd and facts.abi_tag_version == 1402000 and facts.release == "14.2"
    only_osabi = tmp_path / "osabi-only"
    only_osabi.write_bytes(_elf64(9))
    assert inspect_kernel_file(only_osabi).evidence == ("ELF OS/ABI 9 (FreeBSD)",)
    linux = tmp_path / "vmlinux"
    linux.write_bytes(_elf64(0) + b"\0FreeBSD\0")  # the word alone proves nothing
    assert not inspect_kernel_file(linux).is_freebsd


def test_bad_kernel_files_give_one_line_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(KernelFileError, match=r"notes.txt: offset 0: not an ELF file .*expected 7f 45 4c 46"):
        inspect_kernel_file(text)
    with pytest.raises(KernelFileError, match="cannot read the kernel file"):
        inspect_kernel_file(tmp_path / "missing")
    cut = tmp_path / "cut"
    note = struct.pack("<III", 8, 4, 1) + b"FreeBSD\0" + struct.pack("<I", 1402000)
    cut.write_bytes(_elf64(9, note)[:-8])
    with pytest.raises(KernelFileError, match=r"cut: offset 0x78: note region of 24 bytes runs past the end"):
        inspect_kernel_file(cut)


# ----------------------------------------------------------------------------- the diagnosis
def _iso_guest(tmp_path: Path, kernel: Path, *, amd64_type: str, fixes: list[str], log: str):
    """A stand-in guest: a boot ISO path whose ``.json`` record says what build_kernel_iso made."""
    iso = tmp_path / "boot.iso"
    record = {"kernel": str(kernel), "kenv": {}, "grub_fixes": fixes, "amd64_kernel_type": amd64_type,
              "grub_cfg": "set kFreeBSD.hw.uart.console='io:1016,br:115200'\n"}
    Path(str(iso) + ".json").write_text(json.dumps(record))
    return SimpleNamespace(spec=SimpleNamespace(boot=SimpleNamespace(iso=iso)), log_tail=lambda: log)


def test_silence_of_a_current_kernel_behind_an_unfixed_grub_names_the_type_string(mock_kernels, tmp_path):
    guest = _iso_guest(tmp_path, mock_kernels["current"], amd64_type="elf64 kernel", fixes=["relocator"],
                       log=TRIPLE_FAULT_LOG)
    msg = explain_silence(waiting_for="root_wait", seconds=3, guest=guest, handover_at=10.0, now=10.4,
                          closed="end of file on the console")
    first = msg.splitlines()[0]
    assert first.startswith("GRUB handed over but the kernel printed nothing before the console closed")
    assert "QEMU logged a triple fault (CPU reset) 0.40 s after the hand-over" in first
    assert 'only under the module type "elf kernel"' in first and '"elf64 kernel"' in first
    assert "kernel-type" in first
    assert "__FreeBSD_version 1500000 (15.0, ABI note)" in msg
    assert "hw.uart.console=io:1016,br:115200" in msg, "the ISO gave it a console: that is ruled out"


def test_silence_diagnosis_depends_on_the_evidence(mock_kernels, tmp_path):
    fixed = _iso_guest(tmp_path, mock_kernels["current"], amd64_type="elf kernel",
                       fixes=["relocator", "kernel-type"], log=TRIPLE_FAULT_LOG)
    first = explain_silence(waiting_for="root_wait", seconds=3, guest=fixed, closed="eof").splitlines()[0]
    assert "faulted before its console existed" in first and 'GRUB registered it as "elf kernel"' in first
    unpatched = _iso_guest(tmp_path, mock_kernels["12"], amd64_type="elf64 kernel", fixes=[],
                           log=TRIPLE_FAULT_LOG)
    first = explain_silence(waiting_for="root_wait", seconds=3, guest=unpatched, closed="eof").splitlines()[0]
    assert "lack the relocator fix" in first
    running = _iso_guest(tmp_path, mock_kernels["12"], amd64_type="elf kernel",
                         fixes=["relocator", "kernel-type"], log="CPU Reset (CPU 0)\n")
    first = explain_silence(waiting_for="root_wait", seconds=600, guest=running).splitlines()[0]
    assert first.startswith("GRUB handed over but the kernel printed nothing in 600 s")
    assert "QEMU logged no triple fault" not in first and "uart" in first


def test_wait_for_stage_uses_the_diagnosis_when_the_console_closes(mock_kernels, replay, tmp_path):
    console, spawn = replay(transcript("grub-silence", GRUB_THEN_SILENCE))
    console.expect({"grub": r"GRUB: booting"}, 5)
    spawn.close()
    guest = _iso_guest(tmp_path, mock_kernels["current"], amd64_type="elf64 kernel", fixes=["relocator"],
                       log=TRIPLE_FAULT_LOG)
    with pytest.raises(StageConsoleClosed) as exc:
        wait_for_stage(console, [Stage.ROOT_WAIT], 10, guest=guest)
    assert 'only under the module type "elf kernel"' in str(exc.value).splitlines()[0]
    assert exc.value.last_stage == Stage.GRUB


def test_a_timeout_after_grub_is_still_a_stage_timeout(replay):
    console, _ = replay(transcript("grub-silence", GRUB_THEN_SILENCE))
    with pytest.raises(StageTimeout) as exc:
        wait_for_stage(console, [Stage.ROOT_WAIT], 0.5)
    assert str(exc.value).startswith("GRUB handed over but the kernel printed nothing in ")


def test_a_derivative_banner_gives_its_version_and_name():
    from harness.freebsd.kernel import kernel_facts

    text = (
        "KDB: debugger backends: ddb\r\nKDB: current backend: ddb\r\n---<<BOOT>>---\r\n"
        "Copyright (c) 2013-2024 The HardenedBSD Project.\r\nCopyright (c) 1992-2024 The FreeBSD Project.\r\n"
        "FreeBSD is a registered trademark of The FreeBSD Foundation.\r\n"
        "HardenedBSD 14.0-STABLE #0 hardened/14-stable/master-n0: Mon Jan  1 00:00:00 UTC 2024\r\n"
    )
    facts = kernel_facts(text)
    assert (facts.os_name, facts.version, facts.major) == ("HardenedBSD", "14.0-STABLE", 14)
    assert facts.has_ddb is True
    assert facts.describe().startswith("HardenedBSD 14.0-STABLE")

"""Kernels without ddb: backend detection from the boot banner, route selection, and the panic-dump flow
(panic -> the kernel's own dump -> key press -> held at "Press a key on the console to reboot").

Replays of EDITED copies of the real 12.1 recordings (``tests/data/transcripts/freebsd-edited/``, made by
``make_edited.py``, listed in PROVENANCE.md): no real kernel without ddb exists here. Plus in-memory
transcripts (real `Console`, replay spawn) for the failure texts.
"""

from __future__ import annotations

import time

import pytest

from harness.freebsd.ddb import Ddb, DumpFailed
from harness.freebsd.kernel import kernel_facts
from harness.freebsd.machine import FreeBSDMachine
from harness.freebsd.panicdump import (
    ALT_PANIC_SEQUENCE,
    DumpFlow,
    PanicDumpError,
    PanicMethod,
    choose_flow,
    panic_dump,
)
from harness.freebsd.replay import RecordedTranscript, _derive_gates
from harness.freebsd.stages import (
    FreeBSDStageError,
    Stage,
    StageTimeout,
    recognise,
    wait_for_stage,
)
from harness.vm.console import ConsoleTimeout
from tests.data.transcripts import make_edited
from tests.freebsd.conftest import ALL_RUNS, TRANSCRIPTS, load

EDITED = TRANSCRIPTS.parent / "freebsd-edited"


def edited(name: str) -> RecordedTranscript:
    return RecordedTranscript.load(EDITED, name)


def in_memory(name: str, serial: bytes, markers: list[tuple[int, str]] = ()) -> RecordedTranscript:
    """A transcript made in the test (for failure texts); gates derived exactly as for recordings."""
    return RecordedTranscript(name, serial, _derive_gates(serial, list(markers)))


class ReplayGuest:
    """Stands in for harness.vm.guest.Guest around a replayed console (NMI/BREAK go to the replay)."""

    def __init__(self, console, spawn, log: str = "") -> None:
        self.console, self.spawn, self.log = console, spawn, log
        self.ssh_port = None

    def inject_nmi(self):
        self.spawn.inject_nmi()

    def send_break(self):
        self.spawn.send_break()

    def log_tail(self) -> str:
        return self.log


# ----------------------------------------------------------------------------- the edited data
def test_edited_transcripts_are_reproducible_and_consistent():
    for name, make in make_edited.EDITS.items():
        driver = make()
        assert (EDITED / f"{name}.driver.log").read_bytes() == driver, f"rerun make_edited.py ({name})"
        t = edited(name)  # load() checks: driver minus markers == serial, byte for byte
        assert t.serial == make_edited.strip_markers(driver)
    assert "edited" in (TRANSCRIPTS.parent / "PROVENANCE.md").read_text()


# ----------------------------------------------------------------------------- kernel facts
@pytest.mark.parametrize("name", ALL_RUNS)
def test_real_kernels_have_ddb(name):
    facts = kernel_facts(load(name).text())
    assert facts.has_ddb is True and facts.backends == ("ddb",) and facts.current_backend == "ddb"
    if name != "trial-bootd-1":  # -d stops in ddb before the copyright banner
        assert (facts.version, facts.major, facts.ident, facts.machine) == (
            "12.1-STABLE", 12, "DUMPTEST", "amd64"
        )


def test_show_msgbuf_is_not_a_second_boot():
    # mini.serial.log replays the boot messages (without the KDB lines) inside `show msgbuf`
    text = load("mini").text()
    assert text.count("Copyright (c) 1992-2020") == 2
    assert kernel_facts(text).has_ddb is True


def test_edited_kernel_has_no_backend():
    facts = kernel_facts(edited("edited-noddb-altpanic").text())
    assert facts.banner_seen and facts.backends == () and facts.has_ddb is False
    assert "no KDB debugger backend" in facts.describe()


def test_banner_not_seen_is_unknown():
    facts = kernel_facts("mountroot: waiting for device /dev/nosuchdisk...\r\n")
    assert facts.has_ddb is None and "unknown" in facts.describe()


def test_newer_version_lines():
    text = (
        "---<<BOOT>>---\r\nCopyright (c) 1992-2024 The FreeBSD Project.\r\n"
        "FreeBSD 14.1-RELEASE releng/14.1-n267679-10e31f0946d8 GENERIC amd64\r\n"
    )
    f = kernel_facts(text)
    assert (f.version, f.major, f.ident, f.machine, f.has_ddb) == (
        "14.1-RELEASE", 14, "GENERIC", "amd64", False
    )
    f = kernel_facts(
        "Copyright (c) 1992-2025 The FreeBSD Project.\r\nFreeBSD 13.4-RELEASE-p2 GENERIC amd64\r\n"
    )
    assert (f.version, f.ident) == ("13.4-RELEASE-p2", "GENERIC")


# ----------------------------------------------------------------------------- flow selection
NO_DDB = kernel_facts(edited("edited-noddb-altpanic").text())
WITH_DDB = kernel_facts(load("mini").text())
UNKNOWN = kernel_facts("")


def test_ddb_kernel_keeps_the_ddb_flow():
    for facts in (WITH_DDB, UNKNOWN):
        c = choose_flow(facts, "nmi", has_shell=False)
        assert c.flow == DumpFlow.DDB and c.method is None and not c.cannot
    assert "unknown" in choose_flow(UNKNOWN, "nmi", has_shell=False).why


def test_no_ddb_nmi_says_it_cannot_work_and_falls_back():
    c = choose_flow(NO_DDB, "nmi", has_shell=False, alt_break_enabled=True)
    assert c.flow == DumpFlow.PANIC and (c.method, c.fallback) == (PanicMethod.NMI, PanicMethod.ALT_PANIC)
    assert len(c.cannot) == 1 and "kdb_trap()" in c.cannot[0] and "\n" not in c.cannot[0]
    assert c.describe().splitlines()[0].startswith("dump flow: panic (no ddb backend")
    with_shell = choose_flow(NO_DDB, "nmi", has_shell=True)
    assert with_shell.fallback == PanicMethod.SYSCTL_PANIC


def test_no_ddb_route_table():
    assert choose_flow(NO_DDB, "panic", has_shell=True).method == PanicMethod.SYSCTL_PANIC
    c = choose_flow(NO_DDB, "sysctl", has_shell=True)
    assert c.method == PanicMethod.SYSCTL_PANIC and "kdb_enter()" in c.cannot[0]
    c = choose_flow(NO_DDB, "break", has_shell=False, alt_break_enabled=True)
    assert c.method == PanicMethod.ALT_PANIC and "BREAK" in c.cannot[0]
    c = choose_flow(NO_DDB, "alt_break", has_shell=False, alt_break_enabled=True)
    assert c.method == PanicMethod.ALT_PANIC and not c.cannot and not c.needs
    c = choose_flow(NO_DDB, "alt_break", has_shell=False)  # knob unknown: said, not refused
    assert c.needs and "alt_break_to_debugger" in c.needs[0]
    c = choose_flow(NO_DDB, "nmi", has_shell=False, state=Stage.MOUNTROOT_PROMPT)
    assert c.fallback == PanicMethod.MOUNTROOT_EMPTY
    with pytest.raises(FreeBSDStageError, match="alt_break_to_debugger=1"):
        choose_flow(NO_DDB, "alt_break", has_shell=False, alt_break_enabled=False)
    forced = choose_flow(WITH_DDB, "panic", has_shell=False, state=Stage.MOUNTROOT_PROMPT, force="panic")
    assert forced.flow == DumpFlow.PANIC and forced.method == PanicMethod.MOUNTROOT_EMPTY


# ----------------------------------------------------------------------------- the panic flow, replayed
def test_panic_dump_alt_panic_held(replay):
    console, spawn = replay(edited("edited-noddb-altpanic"))
    m = FreeBSDMachine(ReplayGuest(console, spawn), memory_mib=512,
                       kenv={"debug.kdb.alt_break_to_debugger": "1"})
    m.wait_for(Stage.ROOT_WAIT, deadline=10)
    assert m.facts.has_ddb is False
    choice = m.select_flow("alt_break")
    assert choice.flow == DumpFlow.PANIC and choice.method == PanicMethod.ALT_PANIC
    result = m.panic_dump("alt_break", choice=choice, deadline=30)
    assert result.ok and result.flow == "panic" and result.held
    assert (result.kind, result.dump_mb, result.physical_mb, result.progress) == ("mini", 42, 500, [38, 76])
    assert (result.panic, result.uptime) == ("Panic sequence on console", "5s")
    assert bytes(spawn.sent) == ALT_PANIC_SEQUENCE.encode() + b"\r" and spawn.finished
    assert any("pressed a key during the 15 s" in n for n in result.notes)


def test_panic_dump_without_countdown(replay):
    console, spawn = replay(edited("edited-noddb-altpanic-nowait"))
    m = FreeBSDMachine(ReplayGuest(console, spawn), memory_mib=512,
                       kenv={"debug.kdb.alt_break_to_debugger": "1"})
    m.wait_for(Stage.ROOT_WAIT, deadline=10)
    result = m.panic_dump("alt_break", deadline=30)
    assert result.ok and result.held and bytes(spawn.sent) == ALT_PANIC_SEQUENCE.encode()


def test_panic_dump_nmi_falls_back_to_alt_panic(replay):
    console, spawn = replay(edited("edited-noddb-nmi"))
    m = FreeBSDMachine(ReplayGuest(console, spawn), memory_mib=512,
                       kenv={"debug.kdb.alt_break_to_debugger": "1"})
    m.wait_for(Stage.ROOT_WAIT, deadline=10)
    choice = m.select_flow("nmi")
    t = time.monotonic()
    result = panic_dump(console, choice, guest=m.guest, memory_mib=512, deadline=60, nmi_probe_seconds=30)
    # the kernel said at once that it ignored the NMI ("going to debugger" without a backend): no probe wait
    assert time.monotonic() - t < 10
    assert result.ok and result.held and spawn.nmis_injected == 1
    notes = "\n".join(result.notes)
    assert "NMI did not panic the kernel: it printed 'going to debugger' and went on at once" in notes
    assert "falling back to alt_panic" in notes and notes.splitlines()[1].startswith("cannot work: route nmi")
    assert bytes(spawn.sent).startswith(ALT_PANIC_SEQUENCE.encode())  # then the key that holds it


def test_nmi_panic_right_after_going_to_debugger_is_not_answered_by_the_fallback(replay):
    """A kernel whose kdb_trap() finds no backend may still panic on the unclaimed NMI right after its
    "going to debugger" line (machdep.panic_on_nmi): that panic is the one taken, and no fallback keys are
    typed into a kernel that is already panicking (they would answer its "Press a key")."""
    nmi_panic = PANIC_TEXT.replace(b"Panic sequence on console", b"NMI indicates hardware failure")
    serial = WAITING + b"NMI ISA 20, EISA ff\r\nNMI/cpu0 ... going to debugger\r\n" + nmi_panic
    serial += make_edited.MINIDUMP + make_edited.COUNTDOWN
    markers = [(len(WAITING), "monitor: (qemu) nmi"), (len(serial), "sending key CR")]
    console, spawn = replay(in_memory("nmi-panics", serial + make_edited.HELD, markers))
    m = FreeBSDMachine(ReplayGuest(console, spawn), memory_mib=512,
                       kenv={"debug.kdb.alt_break_to_debugger": "1"})
    console.expect({"wait": r"waiting for device"}, 5)
    choice = choose_flow(NO_DDB, "nmi", has_shell=False, alt_break_enabled=True)
    result = panic_dump(console, choice, guest=m.guest, memory_mib=512, deadline=30)
    assert result.ok and result.held and result.panic == "NMI indicates hardware failure"
    assert ALT_PANIC_SEQUENCE.encode() not in bytes(spawn.sent)
    assert not any("falling back" in n for n in result.notes)


def test_panic_dump_on_a_ddb_kernel_continues_from_ddb(replay):
    console, spawn = replay(edited("edited-ddb-panic-continue"))
    m = FreeBSDMachine(ReplayGuest(console, spawn), memory_mib=512)
    m.wait_for(Stage.MOUNTROOT_PROMPT, deadline=10)
    assert m.facts.has_ddb is True and m.select_flow("panic").flow == DumpFlow.DDB
    choice = m.select_flow("panic", force="panic")
    assert choice.method == PanicMethod.MOUNTROOT_EMPTY
    result = m.panic_dump(choice=choice, deadline=30)
    assert result.ok and result.held and result.panic == "mountroot: unable to (re-)mount root."
    assert any("stopped in ddb" in n for n in result.notes) and result.uptime == "4s"


# ----------------------------------------------------------------------------- panic flow failures
PANIC_TEXT = make_edited.PANIC_NO_DDB
WAITING = b"mountroot: waiting for device /dev/nosuchdisk...\r\n"


def _alt_panic_run(replay, after_panic: bytes, *, key_gate_before: bytes | None = None):
    serial = WAITING + PANIC_TEXT + after_panic
    markers = [(len(WAITING), "sending ALT panic CR ~ ^P")]
    if key_gate_before is not None:
        markers.append((serial.index(key_gate_before) + len(key_gate_before), "sending key CR"))
    console, spawn = replay(in_memory("failure", serial, markers))
    choice = choose_flow(NO_DDB, "alt_break", has_shell=False, alt_break_enabled=True)
    console.expect({"wait": r"waiting for device"}, 5)
    return console, spawn, choice


def test_no_dump_device_is_a_clear_failure(replay):
    console, spawn, choice = _alt_panic_run(
        replay, make_edited.COUNTDOWN + make_edited.HELD, key_gate_before=make_edited.COUNTDOWN
    )
    with pytest.raises(PanicDumpError, match="no dump was written.*dumpdev") as exc:
        panic_dump(console, choice, memory_mib=512, deadline=20)
    assert exc.value.result.panic == "Panic sequence on console" and exc.value.result.flow == "panic"
    assert exc.value.result.held  # the key was still pressed: the guest stays for evidence


def test_rebooted_before_the_key(replay):
    console, spawn, choice = _alt_panic_run(replay, make_edited.MINIDUMP + b"Rebooting...\r\n")
    with pytest.raises(PanicDumpError, match="kern.panic_reboot_wait_time=-1") as exc:
        panic_dump(console, choice, memory_mib=512, deadline=20)
    assert exc.value.result.ok and not exc.value.result.held


def test_alt_panic_that_does_not_panic_names_the_knob(replay):
    serial = WAITING + b"\r\n"
    console, spawn = replay(in_memory("quiet", serial, [(len(serial), "sending ALT panic CR ~ ^P")]))
    choice = choose_flow(NO_DDB, "alt_break", has_shell=False, alt_break_enabled=True)
    with pytest.raises(PanicDumpError, match="alt_panic did not panic.*alt_break_to_debugger=1"):
        panic_dump(console, choice, memory_mib=512, deadline=20, panic_seconds=0.5)


def test_dump_that_stops_printing_ends_early(replay):
    serial = WAITING + PANIC_TEXT + b"Dumping 42 out of 500 MB:..38%"
    console, spawn = replay(in_memory("stall", serial, [(len(WAITING), "sending ALT panic CR ~ ^P")]))
    console.expect({"wait": r"waiting for device"}, 5)
    choice = choose_flow(NO_DDB, "alt_break", has_shell=False, alt_break_enabled=True)
    t = time.monotonic()
    with pytest.raises(
        PanicDumpError, match=r"no console output for 0.5 s\); last progress: minidump of 42 MB, 38%"
    ):
        panic_dump(console, choice, memory_mib=4096, stall_seconds=0.5)
    assert time.monotonic() - t < 10


def test_ddb_dump_stall_ends_early_naming_progress(replay):
    serial = (
        b"db> set $lines 0\r\ndb> dump\r\nDumping 511 MB (2 chunks)\r\n"
        b"  chunk 0: 1MB (159 pages) ... ok\r\n  chunk 1: 511MB (130775 pages) 495 479"
    )
    console, spawn = replay(in_memory("ddbstall", serial))
    ddb = Ddb(console, memory_mib=4096)
    t = time.monotonic()
    with pytest.raises(
        DumpFailed, match=r"db>: no console output for 0.5 s.*full dump of 511 MB, chunk 1 of 2, 479 MB left"
    ):
        ddb.dump(stall_seconds=0.5)
    assert time.monotonic() - t < 10


def test_dump_deadline_for_a_4gib_guest_under_tcg():
    from harness.freebsd.ddb import DUMP_STALL_SECONDS, dump_deadline_seconds

    # measured 200-400 MiB/s full dump under TCG here: 4 GiB takes ~10-20 s; the deadline is ~50x that
    assert dump_deadline_seconds(4096) == 1144 and dump_deadline_seconds(None) == 1144
    assert dump_deadline_seconds(512) > DUMP_STALL_SECONDS


# ----------------------------------------------------------------------------- stage texts & timeouts
def test_reboot_wait_texts_old_and_new():
    new = "--> Press a key on the console to reboot,\r\n--> or switch off the system now.\r\n"
    old = "--> Press a key on the console to reboot <--\r\n"
    for text in (new, old):
        assert [e.stage for e in recognise(text)] == [Stage.REBOOT_WAIT]
    countdown = "Automatic reboot in 15 seconds - press a key on the console to abort\r\n"
    assert recognise(countdown)[0].value == "15"


def _cut(name: str, after: bytes) -> RecordedTranscript:
    t = load(name)
    i = t.serial.index(after) + len(after)
    return in_memory(name + "-cut", t.serial[:i])


def test_silent_kernel_after_grub(replay):
    console, spawn = replay(_cut("trial-altbreak-1", b"GRUB: booting\n"))
    guest = ReplayGuest(console, spawn, log="KVM internal error / triple fault at rip=0x...")
    with pytest.raises(StageTimeout) as exc:
        wait_for_stage(console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], 0.5, guest=guest)
    msg = str(exc.value)
    assert msg.startswith("GRUB handed over but the kernel printed nothing in ")
    assert "hw.uart.console=io:1016,br:115200" in msg and "triple fault" in msg
    assert "GRUB: booting" in exc.value.tail and isinstance(exc.value, ConsoleTimeout)
    assert exc.value.last_stage == Stage.GRUB


def test_timeout_names_last_stage(replay):
    console, spawn = replay(_cut("trial-altbreak-1", b"Launching APs: 1\r\n"))
    with pytest.raises(StageTimeout, match=r"no root_wait within 0 s; last stage seen: kernel"):
        wait_for_stage(console, [Stage.ROOT_WAIT], 0.3)


def test_grub_iso_default_kenv_speaks_on_com1():
    from images.grub_iso import DEFAULT_KENV

    assert DEFAULT_KENV["hw.uart.console"] == "io:1016,br:115200"
    assert DEFAULT_KENV["debug.kdb.alt_break_to_debugger"] == "1"


def test_enter_ddb_refuses_in_one_line_before_trying(replay):
    from harness.freebsd.enter import NoDdbBackend, enter_ddb

    console, spawn = replay(edited("edited-noddb-nmi"))
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    t = time.monotonic()
    with pytest.raises(NoDdbBackend) as exc:
        enter_ddb(console, "nmi", guest=ReplayGuest(console, spawn), deadline=30)
    assert time.monotonic() - t < 2 and spawn.nmis_injected == 0  # nothing was tried
    first = str(exc.value).splitlines()[0]
    assert first.startswith("route nmi cannot reach ddb: ") and "panic_dump" in first


def test_select_flow_from_the_console_alone(replay):
    """What the pipeline calls: facts, state and the ALT knob (from the kenv it booted with)."""
    from harness.freebsd.panicdump import select_flow

    console, spawn = replay(edited("edited-noddb-altpanic"))
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    c = select_flow(console, "nmi", kenv={"debug.kdb.alt_break_to_debugger": "1"})
    assert (c.flow, c.method, c.fallback) == (DumpFlow.PANIC, PanicMethod.NMI, PanicMethod.ALT_PANIC)
    assert not c.needs
    with pytest.raises(FreeBSDStageError, match="alt_break_to_debugger=1"):
        select_flow(console, "alt_break", kenv={"debug.kdb.alt_break_to_debugger": "0"})
    ddb_console, _ = replay("trial-waitnmi-1")
    wait_for_stage(ddb_console, [Stage.ROOT_WAIT], 10)
    assert select_flow(ddb_console, "nmi").flow == DumpFlow.DDB


def test_console_login_timeout_names_the_last_stage(replay):
    from harness.freebsd.session import ConsoleShell

    console, spawn = replay("trial-waitnmi-1")  # a bare kernel: waits for root, never a login prompt
    with pytest.raises(StageTimeout, match=r"no console login \(.*\) within 1 s; last stage seen: root_wait"):
        ConsoleShell(console).login(1.0)


def test_forced_panic_flow_on_a_ddb_kernel_never_uses_a_route_that_only_enters_ddb():
    c = choose_flow(WITH_DDB, "nmi", has_shell=False, alt_break_enabled=True, force="panic")
    assert c.method == PanicMethod.ALT_PANIC and c.fallback is None
    assert c.cannot == ["route nmi: on a kernel with ddb it enters ddb without a panic; using alt_panic"]
    assert choose_flow(WITH_DDB, "sysctl", has_shell=True, force="panic").method == PanicMethod.SYSCTL_PANIC


def test_guest_gone_after_grub(replay):
    """A triple fault at the hand-over resets the guest; with on_reboot=destroy the console closes."""
    from harness.freebsd.stages import StageConsoleClosed

    console, spawn = replay(_cut("trial-altbreak-1", b"GRUB: booting\n"))
    console.expect({"grub": r"GRUB: booting"}, 5)
    spawn.close()
    with pytest.raises(StageConsoleClosed) as exc:
        wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    msg = str(exc.value)
    assert msg.startswith("GRUB handed over but the kernel printed nothing before the console closed")

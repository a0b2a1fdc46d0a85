"""The replay double itself: faithful bytes, gates where the recording acted, strict about what is sent."""

from __future__ import annotations

import time

import pytest

from harness.freebsd.replay import ALT_BREAK, RecordedTranscript, ReplayMismatch
from harness.vm.console import ConsoleClosed, ConsoleTimeout
from tests.freebsd.conftest import ALL_RUNS, TRANSCRIPTS, load


@pytest.mark.parametrize("name", ALL_RUNS)
def test_driver_log_without_markers_is_the_serial_log(name):
    t = load(name)  # raises if the reconstruction differs by one byte
    assert t.serial == (TRANSCRIPTS / f"{name}.serial.log").read_bytes()
    assert t.timeline and all(a[1] <= b[1] for a, b in zip(t.timeline, t.timeline[1:], strict=False))


def test_gates_are_what_the_recording_did():
    mini = load("mini")
    assert [(g.kind, g.expect) for g in mini.gates][:4] == [
        ("nmi", b""),
        ("line", b"set $lines 0"),
        ("line", b"show registers"),
        ("line", b"bt"),
    ]
    assert [g.expect for g in mini.gates if g.kind == "line"][-5:] == [
        b"dump",
        b"write/l do_minidump 0",
        b"x/lx do_minidump",
        b"dump",
        b"show msgbuf",
    ]
    full = load("full")
    assert full.gates[0].kind == "bytes" and full.gates[0].expect == ALT_BREAK
    panic = load("panic")
    # the empty answer at mountroot> is a gate; "mountroot> panic:" inside show msgbuf is not
    assert [g.note for g in panic.gates].count("mountroot>") == 1
    bootd = load("trial-bootd-1")
    assert [g.kind for g in bootd.gates] == ["line", "line", "line", "line", "nmi", "line"]


def test_output_stops_at_a_gate_until_the_client_acts(replay):
    console, spawn = replay("trial-waitnmi-1")
    console.expect({"wait": r"mountroot: waiting for device"}, 5)
    with pytest.raises(ConsoleTimeout):
        console.expect({"nmi": r"NMI/cpu"}, 0.5)
    spawn.inject_nmi()
    console.expect({"nmi": r"NMI/cpu\d \.\.\. going to debugger"}, 5)


def test_sending_something_not_recorded_is_a_mismatch(replay):
    console, spawn = replay("trial-waitnmi-1")
    spawn.inject_nmi()
    console.expect({"db": r"\ndb> $"}, 5)
    with pytest.raises(ReplayMismatch, match="recording typed b'set \\$lines 0'"):
        console.sendline("show registers")


def test_typed_ahead_mismatch_closes_the_console_with_the_reason(replay):
    console, spawn = replay("trial-waitnmi-1")
    console.sendline("bogus")  # typed before the recording reaches its prompt
    spawn.inject_nmi()
    with pytest.raises(ConsoleClosed):
        console.expect({"never": r"will not appear"}, 5)
    assert "the recording typed b'set $lines 0', the client sent b'bogus'" in str(spawn.error)


def test_recorded_pace_is_followed(replay):
    t = load("trial-panic-1")  # kernel console up at 0.75 s, mountroot> at 3.21 s
    console, _ = replay(t, pace=0.1)
    start = time.monotonic()
    console.expect({"prompt": r"mountroot> $"}, 30)
    assert time.monotonic() - start >= 0.1 * 3.0


def test_end_of_recording_is_silence_not_eof(replay):
    console, spawn = replay("trial-altbreak-1")
    console.send(ALT_BREAK)
    console.expect({"db": r"\ndb> $"}, 5)
    console.sendline("set $lines 0")
    console.expect({"db": r"\ndb> $"}, 5)
    assert spawn.finished
    with pytest.raises(ConsoleTimeout):
        console.expect({"more": r"."}, 0.3)


def test_load_refuses_a_driver_log_that_does_not_match(tmp_path):
    (tmp_path / "x.serial.log").write_bytes(b"hello\r\nworld\r\n")
    (tmp_path / "x.driver.log").write_bytes(b"hello\r\n\n[qdrv    1.00s] mark\nw0rld\r\n")
    with pytest.raises(ValueError, match="differs from x.serial.log at byte 8"):
        RecordedTranscript.load(tmp_path, "x")

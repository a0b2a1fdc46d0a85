"""A dump that cannot finish ends within seconds of the evidence, never as a wait for the size-based
deadline: the guest hangs mid-dump (no console output and no write to the dump disk), the guest resets
or dies (the console closes), the dump disk is too small (the kernel says so). Replays of the real 12.1
minidump session, cut in the middle of the dump or with the failure text the kernel prints."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from harness.freebsd.ddb import Ddb, DumpFailed, NoProgress, dump_disk_witness
from harness.freebsd.replay import RecordedTranscript
from tests.freebsd.conftest import TRANSCRIPTS, load


def _mini_cut_at(marker: bytes, tail: bytes = b"") -> RecordedTranscript:
    """The recorded minidump session up to `marker` in the dump's output, then `tail` (and nothing more)."""
    mini = load("mini")
    cut = mini.serial.index(marker)
    return RecordedTranscript(
        "mini-cut", mini.serial[:cut] + tail, [g for g in mini.gates if g.offset < cut], mini.timeline
    )


def _in_ddb(replay, transcript):
    console, spawn = replay(transcript)
    spawn.inject_nmi()
    ddb = Ddb(console, memory_mib=512)
    ddb.wait_prompt(10)
    ddb.show_registers(), ddb.bt(), ddb.ps(), ddb.x_gx("dumper"), ddb.x("do_minidump", "lx")
    return ddb, console, spawn


def test_a_guest_that_hangs_mid_dump_fails_after_the_hang_window(replay):
    ddb, _console, _spawn = _in_ddb(replay, _mini_cut_at(b"..76%"))
    t = time.monotonic()
    with pytest.raises(DumpFailed) as info:
        ddb.dump(deadline=120, witness=lambda: "disk untouched", hang_seconds=1.0)
    waited = time.monotonic() - t
    assert waited < 60  # the hang window, not the 120 s deadline nor the 180 s stall
    assert isinstance(info.value.__cause__, NoProgress)
    message = str(info.value).splitlines()[0]
    assert "the guest hung (no console output and no write to the dump disk for 1 s)" in message
    assert "last progress: minidump of 42 MB, 38%" in message
    assert "Dumping 42 out of 500 MB" in info.value.tail  # the evidence: where the console stopped


def test_a_dump_disk_still_being_written_is_not_a_hang(replay):
    """Console silent but the disk keeps changing (a slow device): wait on, up to the deadline."""
    ddb, _console, _spawn = _in_ddb(replay, _mini_cut_at(b"..76%"))
    writes = itertools.count()
    with pytest.raises(DumpFailed) as info:
        ddb.dump(deadline=3.0, witness=lambda: next(writes), hang_seconds=1.0)
    assert "did not return to db> within 3 s" in str(info.value)
    assert not isinstance(info.value.__cause__, NoProgress)


def test_a_guest_that_resets_mid_dump_ends_the_wait_at_once(replay):
    ddb, _console, spawn = _in_ddb(replay, _mini_cut_at(b"..76%"))
    threading.Timer(0.5, spawn.close).start()  # what libvirt's on_reboot=destroy does to the console
    t = time.monotonic()
    with pytest.raises(DumpFailed) as info:
        ddb.dump(deadline=120)
    assert time.monotonic() - t < 60
    message = str(info.value).splitlines()[0]
    assert "the console closed (the guest reset, crashed or was destroyed mid-dump)" in message
    assert "last progress: minidump of 42 MB" in message


def test_a_dump_disk_too_small_is_reported_as_the_kernel_says(replay):
    too_small = b"\r\nDump failed. Partition too small (about 42MB were needed this time).\r\ndb> "
    ddb, _console, _spawn = _in_ddb(replay, _mini_cut_at(b"Dumping 42 out of", too_small))
    with pytest.raises(DumpFailed) as info:
        ddb.dump(deadline=30)
    assert str(info.value).startswith(
        "ddb dump failed: Dump failed. Partition too small (about 42MB were needed this time)."
    )
    assert info.value.result.complete is False


def test_dump_disk_witness_follows_the_host_file(tmp_path):
    disk = tmp_path / "dump.raw"
    disk.write_bytes(bytes(4096))
    witness = dump_disk_witness(disk)
    before = witness()
    with open(disk, "r+b") as f:
        f.seek(1 << 20)
        f.write(b"x" * 512)
    assert witness() != before
    assert dump_disk_witness(None) is None
    assert dump_disk_witness(tmp_path / "gone")() is None


def test_a_guest_that_hangs_during_its_own_dump_after_a_panic(replay):
    """The panic flow (a kernel without ddb dumps by itself): the same hang rule, while waiting for the
    kernel's own dump to end (edited 12.1 recording, cut after the dump's first percentage)."""
    from harness.freebsd.panicdump import PanicDumpError, panic_dump, select_flow

    full = RecordedTranscript.load(TRANSCRIPTS.parent / "freebsd-edited", "edited-noddb-altpanic")
    cut = full.serial.index(b"..76%")
    hung = RecordedTranscript(
        "noddb-hung", full.serial[:cut], [g for g in full.gates if g.offset < cut], full.timeline
    )
    console, _spawn = replay(hung)
    console.expect({"wait": r"mountroot: waiting for device"}, 10)
    choice = select_flow(console, "alt_break", kenv={"debug.kdb.alt_break_to_debugger": "1"})
    t = time.monotonic()
    with pytest.raises(PanicDumpError) as info:
        panic_dump(console, choice, memory_mib=512, deadline=120, witness=lambda: 0, hang_seconds=1.0)
    assert time.monotonic() - t < 60
    message = str(info.value).splitlines()[0]
    assert "no reboot countdown after the panic (the guest hung: no console output and no write to the " \
        "dump disk for 1 s)" in message
    assert "last progress: minidump of 42 MB, 38%" in message

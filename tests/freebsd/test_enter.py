"""Entering ddb by each route, replayed from the real recordings (the replay answers NMI / ALT break /
typed lines exactly where the recording did), including the mountroot> prompt where routes fail."""

from __future__ import annotations

import time

import pytest

from harness.freebsd.enter import (
    ALT_BREAK_SEQUENCE,
    ROUTES,
    DdbEntryError,
    DdbRoute,
    MountrootPromptError,
    current_stage,
    enter_ddb,
    panic_at_mountroot,
)
from harness.freebsd.stages import Stage, wait_for_stage
from harness.vm.console import CommandResult


def test_nmi_in_the_waiting_state(replay):
    console, spawn = replay("trial-waitnmi-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    assert current_stage(console) == Stage.ROOT_WAIT
    entry = enter_ddb(console, "nmi", guest=spawn, deadline=10)
    assert (entry.route, entry.why, entry.pid, entry.tid) == (DdbRoute.NMI, "NMI", 10, 100002)
    assert entry.stopped_at.startswith("acpi_cpu_c1+0x6:") and entry.attempts == 1 and not entry.notes


def test_alt_break_is_typed_with_delays_and_reaches_ddb(replay):
    console, spawn = replay("trial-altbreak-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    start = time.monotonic()
    entry = enter_ddb(console, DdbRoute.ALT_BREAK, deadline=10)
    assert time.monotonic() - start >= 0.2  # three characters, 0.1 s apart
    assert bytes(spawn.sent) == ALT_BREAK_SEQUENCE.encode()
    assert (entry.why, entry.pid, entry.tid) == ("Break to debugger", 10, 100003)
    assert current_stage(console) == Stage.DDB_PROMPT


def test_alt_break_at_mountroot_prompt_is_refused_before_sending(replay):
    console, spawn = replay("trial-panic-1")
    wait_for_stage(console, [Stage.MOUNTROOT_PROMPT], 10)
    with pytest.raises(MountrootPromptError, match="would panic instead of entering ddb"):
        enter_ddb(console, "alt_break")
    assert spawn.sent == b""  # nothing typed: the kernel is still fine


def test_nmi_at_mountroot_prompt_is_retried_a_bounded_number_of_times(replay):
    console, spawn = replay("trial-bootd-1", lose_nmis=2)  # two NMIs vanish, as observed there
    console.expect({"db": r"\ndb> $"}, 10)  # boot flag -d: early ddb
    console.sendline("set $lines 0"), console.expect({"db": r"\ndb> $"}, 5)
    for cmd in ("bt", "x/gx dumper"):
        console.sendline(cmd), console.expect({"db": r"\ndb> $"}, 5)
    console.sendline("c")
    wait_for_stage(console, [Stage.MOUNTROOT_PROMPT], 10)
    import harness.freebsd.enter as enter_mod

    old, enter_mod.NMI_ATTEMPT_SECONDS = enter_mod.NMI_ATTEMPT_SECONDS, 0.5
    try:
        entry = enter_ddb(console, "nmi", guest=spawn, deadline=20)
    finally:
        enter_mod.NMI_ATTEMPT_SECONDS = old
    assert entry.attempts == 3 and spawn.nmis_injected == 3
    assert entry.state_before == Stage.MOUNTROOT_PROMPT
    assert "trying up to 4 times" in entry.notes[0] and len(entry.notes) == 3
    assert entry.stopped_at.startswith("cngets+0xa2:")


def test_nmi_at_mountroot_prompt_gives_up_with_a_clear_error(replay):
    console, spawn = replay("trial-bootd-1", lose_nmis=99)
    console.expect({"db": r"\ndb> $"}, 10)
    for cmd in ("set $lines 0", "bt", "x/gx dumper"):
        console.sendline(cmd), console.expect({"db": r"\ndb> $"}, 5)
    console.sendline("c")
    wait_for_stage(console, [Stage.MOUNTROOT_PROMPT], 10)
    import harness.freebsd.enter as enter_mod

    old, enter_mod.NMI_ATTEMPT_SECONDS = enter_mod.NMI_ATTEMPT_SECONDS, 0.3
    try:
        with pytest.raises(MountrootPromptError, match="2 NMIs did not reach ddb .* mountroot> prompt"):
            enter_ddb(console, "nmi", guest=spawn, deadline=20, mountroot_nmi_attempts=2)
    finally:
        enter_mod.NMI_ATTEMPT_SECONDS = old
    assert spawn.nmis_injected == 2


def test_empty_answer_at_mountroot_panics_into_ddb(replay):
    console, _ = replay("trial-panic-1")
    wait_for_stage(console, [Stage.MOUNTROOT_PROMPT], 10)
    entry = panic_at_mountroot(console, deadline=10)
    assert (entry.why, entry.panic, entry.pid) == ("panic", "mountroot: unable to (re-)mount root.", 1)
    assert entry.stopped_at.startswith("kdb_enter+0x37:")


def test_routes_say_what_they_need(replay):
    console, spawn = replay("trial-waitnmi-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    with pytest.raises(DdbEntryError, match="needs a root shell"):
        enter_ddb(console, "sysctl")
    with pytest.raises(DdbEntryError, match="needs the Guest"):
        enter_ddb(console, "nmi")
    assert {r for r, i in ROUTES.items() if i.needs_shell} == {DdbRoute.SYSCTL, DdbRoute.PANIC}
    assert ROUTES[DdbRoute.BREAK].knob == "debug.kdb.break_to_debugger"
    assert ROUTES[DdbRoute.ALT_BREAK].knob == "debug.kdb.alt_break_to_debugger"
    spawn.inject_nmi()
    console.expect({"db": r"\ndb> $"}, 10)
    with pytest.raises(DdbEntryError, match="already at db>"):
        enter_ddb(console, "nmi", guest=spawn)


class RecordingShell:
    """Stand-in for a root shell that only records commands (the transcripts have no userland; the
    shell routes run for real in tests/freebsd/test_hil.py)."""

    def __init__(self, console, kdb="ddb gdb\nddb\n"):
        self.console, self.ran, self.started, self.kdb = console, [], [], kdb

    def run(self, cmd, check=False):
        self.ran.append(cmd)
        output = self.kdb if cmd.startswith("sysctl -n debug.kdb.") else ""
        return CommandResult(cmd, output, 0)

    def start(self, cmd):
        self.started.append(cmd)


def test_with_a_shell_the_route_knob_is_set_first(replay):
    console, spawn = replay("trial-altbreak-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    shell = RecordingShell(console)
    entry = enter_ddb(console, "alt_break", shell=shell, deadline=10)
    assert shell.ran == [
        "sysctl -n debug.kdb.available debug.kdb.current",
        "sysctl debug.kdb.alt_break_to_debugger=1",
    ]
    assert shell.started == []
    assert entry.notes == ["set debug.kdb.alt_break_to_debugger=1"]


def test_with_a_shell_a_kernel_without_ddb_is_refused_at_once(replay):
    console, spawn = replay("trial-altbreak-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    with pytest.raises(DdbEntryError, match="no ddb backend .*available: gdb"):
        enter_ddb(console, "alt_break", shell=RecordingShell(console, kdb="gdb\ngdb\n"))
    assert spawn.sent == b""


def test_with_a_shell_ddb_is_made_the_current_backend(replay):
    console, spawn = replay("trial-altbreak-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    shell = RecordingShell(console, kdb="ddb gdb\ngdb\n")
    entry = enter_ddb(console, "alt_break", shell=shell, deadline=10)
    assert (
        "sysctl debug.kdb.current=ddb" in shell.ran
        and "switched debug.kdb.current from gdb to ddb" in entry.notes
    )


def test_alt_break_that_the_kernel_ignores_says_what_it_needs(replay):
    # the waiting-NMI recording never answers an ALT break: like a kernel without the knob
    console, spawn = replay("trial-waitnmi-1")
    wait_for_stage(console, [Stage.ROOT_WAIT], 10)
    with pytest.raises(
        DdbEntryError, match=r"alt_break did not reach db> within 1 s \(needs debug.kdb.alt_break"
    ):
        enter_ddb(console, "alt_break", deadline=1)

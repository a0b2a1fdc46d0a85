"""Stage recognition on the real FreeBSD 12.1 transcripts, offline and live through a replayed Console."""

from __future__ import annotations

import pytest

from harness.freebsd.stages import GuestPanicked, Stage, recognise, stage_sequence, wait_for_stage
from tests.freebsd.conftest import load

S = Stage
BOOT = [S.FIRMWARE, S.GRUB, S.KERNEL]
DDB = [S.DDB_ENTER, S.DDB_THREAD, S.DDB_STOPPED, S.DDB_PROMPT]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("trial-waitnmi-1", BOOT + [S.ROOT_WAIT] + DDB),
        ("trial-altbreak-1", BOOT + [S.ROOT_WAIT] + DDB),
        ("trial-panic-1", BOOT + [S.MOUNTROOT_PROMPT, S.PANIC] + DDB),
        ("trial-bootd-1", [S.FIRMWARE, S.GRUB] + DDB + [S.KERNEL, S.MOUNTROOT_PROMPT] + DDB),
        # show msgbuf at the end replays the boot (kernel .. ddb entry) out of the message buffer
        (
            "full",
            BOOT
            + [S.ROOT_WAIT]
            + DDB
            + [
                S.DUMP_PROGRESS,
                S.DUMP_COMPLETE,
                S.DDB_PROMPT,
                S.KERNEL,
                S.ROOT_WAIT,
                S.DDB_ENTER,
                S.DDB_PROMPT,
            ],
        ),
    ],
)
def test_stage_sequence_of_real_boots(name, expected):
    assert stage_sequence(load(name).text()) == expected


def test_values_carry_what_the_kernel_said():
    events = {e.stage: e for e in recognise(load("panic").text())}
    assert events[S.PANIC].value == "mountroot: unable to (re-)mount root."
    assert events[S.DDB_ENTER].value == "panic"
    ev = recognise(load("full").text())
    assert [e.value for e in ev if e.stage == S.DDB_ENTER][0] == "Break to debugger"
    assert [e.value for e in ev if e.stage == S.ROOT_WAIT][0] == "/dev/nosuchdisk"
    assert [e.value for e in ev if e.stage == S.DDB_STOPPED][0].startswith("kdb_alt_break_internal+0x101:")
    bootd = recognise(load("trial-bootd-1").text())
    assert [e.value for e in bootd if e.stage == S.DDB_ENTER][0] == "Boot flags requested debugger"


def test_grub_banner_split_by_cursor_moves_is_recognised():
    text = load("ada").text()  # "Wel\x1b[09;03H\x1b[09;04Hcome to GRUB!"
    assert "\x1b[09;03H" in text
    assert stage_sequence(text)[:3] == BOOT


def test_panic_in_msgbuf_after_a_prompt_is_not_at_line_start_but_still_a_panic():
    # "mountroot> panic: ..." in the message buffer: the prompt and the panic share a line
    events = [e for e in recognise(load("panic").text()) if e.stage == S.PANIC]
    assert len(events) == 2 and all(e.value == "mountroot: unable to (re-)mount root." for e in events)


def test_sysctl_output_is_not_a_panic():
    assert not [e for e in recognise("debug.debugger_on_panic: 1\r\n") if e.stage == S.PANIC]


def test_loader_and_login_texts():
    text = (
        "Consoles: serial port  \r\nBIOS drive C: is disk0\r\nFreeBSD/x86 bootstrap loader, Revision 1.1\r\n"
        "Autoboot in 9 seconds, hit [Enter] to boot or any other key to stop     \r\n"
        "Hit [Enter] to boot immediately, or any other key for command prompt.\r\n"
        "Booting [/boot/kernel/kernel] in 8 seconds...\r\n\r\nOK \r\nSetting hostuuid: 1234.\r\n"
        "Starting sshd.\r\n\r\nFreeBSD/amd64 (freebsd) (ttyu0)\r\n\r\nlogin: "
    )
    seq = stage_sequence(text)
    assert seq == [S.LOADER, S.LOADER_COUNTDOWN, S.LOADER_PROMPT, S.RC, S.LOGIN]


def test_wait_for_stage_live_on_a_replayed_console(replay):
    console, _ = replay("trial-waitnmi-1")
    ev = wait_for_stage(console, [S.ROOT_WAIT, S.MOUNTROOT_PROMPT], 10)
    assert ev.stage == S.ROOT_WAIT and ev.value == "/dev/nosuchdisk"


def test_a_panic_ends_any_wait_with_the_evidence(replay):
    console, _ = replay("trial-panic-1")
    wait_for_stage(console, [S.MOUNTROOT_PROMPT], 10)
    console.sendline("")  # the empty answer the recording gave: the kernel panics
    with pytest.raises(GuestPanicked) as info:
        wait_for_stage(console, [S.LOGIN], 30)
    assert info.value.panic_message == "mountroot: unable to (re-)mount root."
    assert "mountroot> " in info.value.tail and "waiting for login" in str(info.value)
    assert console.armed == {}  # the wait disarmed what it armed


def test_allow_panic_makes_the_panic_a_target(replay):
    console, _ = replay("trial-panic-1")
    wait_for_stage(console, [S.MOUNTROOT_PROMPT], 10)
    console.sendline("")
    ev = wait_for_stage(console, [S.PANIC], 10, allow_panic=True)
    assert ev.value == "mountroot: unable to (re-)mount root."

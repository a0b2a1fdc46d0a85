"""A kernel with a single-user root image, replayed from the real FreeBSD 12.1 boot test.

`tests/data/transcripts/freebsd-12.1-mfsroot/boot-test.console.log` is the real serial console (two
boots); `ReplayShellSpawn` answers our marker-wrapped commands with what the recording printed for the
same command, so `wait_for_stage`, `ConsoleShell.single_user`/`run`/`start`, `enter_ddb` (sysctl) and
`Ddb.dump` run unmodified on the real bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.freebsd.enter import enter_ddb
from harness.freebsd.replay import ReplayMismatch
from harness.freebsd.replay_shell import ReplayShellSpawn, parse_single_user_log
from harness.freebsd.session import ConsoleShell
from harness.freebsd.stages import Stage, mountroot_failure, recognise, wait_for_stage
from harness.vm.console import Console

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts"
LOG = TRANSCRIPTS / "freebsd-12.1-mfsroot" / "boot-test.console.log"

#: NOT recorded: `enter_ddb` asks the shell which KDB backends exist; the answer is the one the recorded
#: boot banner gives ("KDB: debugger backends: ddb" / "KDB: current backend: ddb").
BACKENDS = {"sysctl -n debug.kdb.available debug.kdb.current": "ddb\nddb"}
#: NOT recorded here: `Ddb` first types `set $lines 0` (no pager); ddb answers it with nothing but a new
#: prompt, as the recorded 12.1 ddb sessions in freebsd-12.1-ddb-ps/ show.
DDB_SET_LINES = {"set $lines 0": ""}


@pytest.fixture(scope="module")
def boots():
    return parse_single_user_log(LOG.read_bytes())


@pytest.fixture
def console_of():
    consoles = []

    def make(boot, **kw):
        spawn = ReplayShellSpawn(boot, **kw)
        console = Console(spawn, name="replay:boot-test")
        consoles.append(console)
        return console, spawn

    yield make
    for c in consoles:
        c.close()


def test_the_recording_is_cut_into_two_boots_and_their_commands(boots):
    assert len(boots) == 2
    first = [c.command for c in boots[0].commands]
    assert first[0] == "uname -a" and "sysctl debug.kdb.enter=1" in first
    kdb = boots[0].command("sysctl debug.kdb.enter=1")
    assert [typed for _, typed in kdb.ddb_steps] == ["dump", "reset"]
    assert boots[1].command("savecore -v /var/crash /dev/vtbd0").output.count(b"dump saved") == 1


def test_init_single_user_prompt_is_a_stage_in_both_boots():
    text = LOG.read_text(errors="replace")
    events = [e for e in recognise(text) if e.stage == Stage.SINGLE_USER]
    assert len(events) == 3  # boot 1, boot 2, and init again after `exit` (no /etc/rc)
    assert mountroot_failure(text) is None


def test_boot_one_single_user_shell_sysctl_trigger_and_full_dump(boots, console_of):
    console, spawn = console_of(boots[0], unrecorded=BACKENDS, unrecorded_ddb=DDB_SET_LINES)
    ev = wait_for_stage(console, [Stage.SINGLE_USER, Stage.MOUNTROOT_PROMPT], 10)
    assert ev.stage == Stage.SINGLE_USER
    shell = ConsoleShell(console)
    shell.single_user(10)
    r = shell.run("mount -u -o rw / && mount", 10)
    assert r.status == 0 and "/dev/md0 on / (ufs, local)" in r.output and "read-only" not in r.output
    assert shell.run("sysctl debug.minidump=0", 10).output.strip() == "debug.minidump: 1 -> 0"
    assert shell.run("dumpon /dev/vtbd0 && dumpon -l", 10, check=True).output.strip() == "vtbd0"
    entry = enter_ddb(console, "sysctl", shell=shell, deadline=10, set_knob=False)
    assert entry.why == "sysctl debug.kdb.enter"
    assert (entry.pid, entry.tid) == (55, 100058)
    result = entry.ddb.dump(check=True)
    assert result.kind == "full" and result.dump_mb == 511 and result.chunk_count == 2
    assert spawn.commands[-1] == "sysctl debug.kdb.enter=1"


def test_boot_two_savecore_in_the_guest(boots, console_of):
    console, _ = console_of(boots[1])
    wait_for_stage(console, [Stage.SINGLE_USER], 10)
    shell = ConsoleShell(console)
    shell.single_user(10)
    shell.run("mount -u -o rw / && mount /dev/vtbd1 /var/crash && df -k /var/crash", 10, check=True)
    saved = shell.run("savecore -v /var/crash /dev/vtbd0", 10, check=True).output
    assert "Dump Status: good" in saved and "writing core to /var/crash/vmcore.0" in saved
    sha = shell.run("sha256 /var/crash/vmcore.0", 10, check=True).output.split()[-1]
    assert sha == "b19a66ca0785e37bd96d7c5a03c839a01b760c4c2d31d373fa520d1b8cdf6ac1"


def test_a_command_the_recording_does_not_have_is_a_mismatch(boots, console_of):
    console, spawn = console_of(boots[0])
    wait_for_stage(console, [Stage.SINGLE_USER], 10)
    shell = ConsoleShell(console)
    shell.single_user(10)
    with pytest.raises(ReplayMismatch, match="no shell command 'rm -rf /'"):
        spawn.sendline('echo "__FBH""B_x__"; rm -rf /; printf "\\n__FBH""E_x_%s__\\n" $?')


def test_a_root_that_does_not_mount_is_named_from_the_kernel_words():
    # vfs_mountroot.c's message before the mountroot> prompt (text of the 12.x source, not a recording)
    text = (
        "Trying to mount root from ufs:/dev/md0 []...\r\n"
        "Mounting from ufs:/dev/md0 failed with error 19.\r\n"
    )
    assert mountroot_failure(text) == "Mounting from ufs:/dev/md0 failed with error 19."


def test_savecore_onto_the_crash_disk_replayed(boots, console_of):
    """`save_onto_crash_disk` types the recorded boot 2 commands and reads savecore's answer."""
    from harness.freebsd.savecore_disk import save_onto_crash_disk

    console, spawn = console_of(boots[1])
    wait_for_stage(console, [Stage.SINGLE_USER], 10)
    shell = ConsoleShell(console)
    shell.single_user(10)
    run = save_onto_crash_disk(shell, "/dev/vtbd0", "/dev/vtbd1", deadline=10)
    assert (run.number, run.status, run.compression) == (0, "good", "none")
    assert spawn.commands[-1] == "umount /var/crash && echo umount-ok"


@pytest.mark.parametrize(
    "said, plain",
    [
        ("checking for kernel dump on device /dev/vtbd0\nsavecore: no dumps found\n", "no dump to save"),
        ("Dump header from device: /dev/vtbd0\n  Magic: Cleared Kernel Dump\n", "found no dump to save"),
        ("", "saved no dump: (no output)"),
    ],
)
def test_savecore_that_saved_nothing_is_said_plainly(said, plain):
    from harness.freebsd.savecore_disk import SavecoreFailed, parse_savecore_output

    with pytest.raises(SavecoreFailed, match=re.escape(plain)):
        parse_savecore_output(said)

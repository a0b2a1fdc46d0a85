"""ConsoleShell's login and command flow against a stand-in getty: a local /bin/sh that prints a
FreeBSD-style banner and ``login:`` and then runs a real interactive shell (the real getty/login only
exist in a FreeBSD guest: tests/freebsd/test_hil.py)."""

from __future__ import annotations

import pexpect
import pytest

from harness.freebsd.session import ConsoleShell, LoginFailed
from harness.freebsd.stages import GuestPanicked
from harness.vm.console import Console

FAKE_GETTY = (
    'printf "\\r\\nFreeBSD/amd64 (fbsd-hil) (ttyu0)\\r\\n\\r\\nlogin: "; read user; '
    'if [ "$user" != root ]; then printf "Login incorrect\\r\\nlogin: "; sleep 5; exit 1; fi; '
    'PS1="root@fbsd-hil:~ # " exec /bin/sh -i'
)


@pytest.fixture
def console():
    spawn = pexpect.spawn("/bin/sh", ["-c", FAKE_GETTY], env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    c = Console(spawn, name="fake-getty")
    yield c
    c.close()


def test_login_sets_a_unique_prompt_and_runs_commands(console):
    shell = ConsoleShell(console)
    shell.login(30)
    assert shell.prompt_text.startswith("__FBHP_") and console.tail().rstrip().endswith("__#")
    r = shell.run("echo one; echo two; false")
    assert (r.output, r.status) == ("one\ntwo\n", 1)
    assert shell.run("exit_code() { return 42; }; exit_code").status == 42


def test_wrong_user_is_refused(console):
    with pytest.raises(LoginFailed, match="Login incorrect"):
        ConsoleShell(console).login(30, user="nobody")


def test_a_panic_during_a_command_ends_it_with_the_panic(console):
    shell = ConsoleShell(console)
    shell.login(30)
    with pytest.raises(GuestPanicked) as info:
        shell.run(
            "printf 'Fatal trap 12: page fault while in kernel mode\\npanic: page fault\\n'; sleep 30", 60
        )
    # the trap line comes first and ends the wait; the echoed command line (same words) did not
    assert info.value.panic_message == "Fatal trap 12: page fault while in kernel mode"
    assert console.armed == {}


def test_a_kernel_message_right_after_the_prompt_does_not_hide_it(tmp_path):
    """FreeBSD prints kernel messages on the console whenever it likes; one that lands just after the
    shell prompt (before the wait saw it) must not turn the prompt wait into a timeout."""
    import os
    import pty

    master, slave = pty.openpty()
    try:
        console = Console.open_pty(os.ttyname(slave), tmp_path / "t.log")
        try:
            shell = ConsoleShell(console, token="feedf00d")
            os.write(master, shell.prompt_text.encode() + b"uhub0: 2 ports with 2 removable\r\n")
            shell.attach(10)
            assert shell.logged_in
        finally:
            console.close()
    finally:
        os.close(master)
        os.close(slave)


KERNEL_CHATTY_GETTY = (
    'printf "\\r\\nFreeBSD/amd64 (fbsd-hil) (ttyu0)\\r\\n\\r\\nlogin: "; read user; '
    'printf "root@fbsd-hil:~ # "; read cmd; '
    # sh's first prompt, and a kernel message right behind it in the same burst
    'printf "# uhub0: 2 ports with 2 removable, self powered\\r\\n"; '
    'PS1= exec /bin/sh -i'
)


def test_login_survives_a_kernel_message_right_after_the_shell_prompt():
    spawn = pexpect.spawn(
        "/bin/sh", ["-c", KERNEL_CHATTY_GETTY], env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    )
    console = Console(spawn, name="chatty-getty")
    try:
        shell = ConsoleShell(console)
        shell.login(30)
        assert shell.run("echo ok").output == "ok\n"
    finally:
        console.close()

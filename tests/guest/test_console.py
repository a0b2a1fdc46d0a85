"""Console and Deadline against real ptys and a real `sh` under pexpect (no mocks).

The "guest" side here is the master end of a real pty pair written by the test: the console opens the
slave by path exactly as it opens QEMU's serial pty.
"""

from __future__ import annotations

import os
import pty
import re
import threading
import time
from pathlib import Path

import pexpect
import pytest

from harness.util.deadline import Deadline
from harness.vm.console import (
    CommandFailed,
    Console,
    ConsoleClosed,
    ConsoleFailure,
    ConsoleTimeout,
)


class PtyGuest:
    """A real pty pair: the test writes 'guest output' to the master, the console opens the slave."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        self.path = os.ttyname(slave)
        self._slave = slave  # keep open until the console has opened it (like QEMU holds its end)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def read_available(self, timeout: float = 1.0) -> bytes:
        import select

        out = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                out += os.read(self.master, 65536)
            elif out:
                break
        return out

    def release_slave(self) -> None:
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    def close(self) -> None:
        self.release_slave()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


@pytest.fixture
def guest_pty():
    g = PtyGuest()
    yield g
    g.close()


@pytest.fixture
def pty_console(guest_pty: PtyGuest, tmp_path: Path):
    con = Console.open_pty(guest_pty.path, tmp_path / "transcript.log")
    guest_pty.release_slave()
    yield con
    con.close()


# ------------------------------------------------------------------ Deadline
def test_deadline_is_absolute_across_waits():
    dl = Deadline(0.3, "phase-x")
    assert 0.2 < dl.remaining() <= 0.3
    time.sleep(0.31)
    assert dl.expired() and dl.remaining() == 0.0
    assert "phase-x" in repr(dl)
    assert Deadline(10, "outer").sub(0.5, "inner").remaining() <= 0.5
    with pytest.raises(ValueError, match="phase 'p'"):
        Deadline(-1, "p")


# ------------------------------------------------------------------ pty console
def test_transcript_has_every_byte_from_the_first(guest_pty, pty_console, tmp_path):
    # bytes written before anyone waits, split UTF-8 sequences, NULs and CRs: all kept verbatim
    hello = "h\u00e9llo ".encode()
    payload = b"\x00first byte\r\n" + hello[:2] + hello[2:] + b"\xff\xfe raw"
    guest_pty.write(payload[:7])
    time.sleep(0.2)
    guest_pty.write(payload[7:] + b"\r\nREADY\r\n")
    m = pty_console.expect({"ready": r"READY"}, Deadline(5, "ready"))
    assert m.name == "ready"
    assert "first byte" in m.before
    assert "h\u00e9llo" in m.before  # split multibyte sequence decoded correctly
    time.sleep(0.1)
    assert (tmp_path / "transcript.log").read_bytes() == payload + b"\r\nREADY\r\n"
    assert pty_console.bytes_seen == len(payload) + 9
    assert pty_console.first_byte_at is not None


def test_console_is_raw_nothing_echoed_back(guest_pty, pty_console):
    pty_console.send("abc\r\n\x03")
    got = guest_pty.read_available()
    assert got == b"abc\r\n\x03"  # no line-discipline translation, no echo, no signal
    guest_pty.write(b"guest says hi\n")
    pty_console.expect_one("guest says hi", 5)
    assert guest_pty.read_available(0.2) == b""  # guest output is not echoed into the guest


def test_failure_pattern_ends_an_unrelated_wait_at_once(guest_pty, pty_console):
    pty_console.arm_failure("panic", r"panic: (?P<msg>[^\r\n]*)")
    threading.Timer(0.3, guest_pty.write, args=(b"booting...\r\npanic: page fault\r\n",)).start()
    t0 = time.monotonic()
    with pytest.raises(ConsoleFailure) as info:
        pty_console.expect({"login": r"login: "}, Deadline(60, "boot to login"))
    assert time.monotonic() - t0 < 5
    err = info.value
    assert err.name == "panic" and err.matched == "panic: page fault"
    assert err.phase == "boot to login"
    assert "login" in err.expectation
    assert "booting..." in err.tail and "panic: page fault" in err.tail
    assert "booting..." in err.before
    assert "panic: page fault" in str(err)


def test_earliest_match_wins_and_failure_is_raised_next(guest_pty, pty_console):
    pty_console.arm_failure("panic", r"panic:")
    guest_pty.write(b"login: \r\npanic: later\r\ndb> ")
    time.sleep(0.2)
    assert pty_console.expect({"login": "login: "}, 5).name == "login"
    with pytest.raises(ConsoleFailure):
        pty_console.expect({"shell": r"# "}, 5)
    # the failure consumed the text up to the panic: the caller can go on to the debugger prompt
    assert pty_console.expect({"ddb": r"db> "}, 5).before.startswith(" later")


def test_expected_pattern_beats_failure_on_tie_and_disarm(guest_pty, pty_console):
    pty_console.arm_failure("panic", r"panic:")
    guest_pty.write(b"panic: deliberate\r\n")
    assert pty_console.expect({"panic-msg": r"panic: (\w+)"}, 5).match.group(1) == "deliberate"
    with pty_console.suspended("panic"):
        assert pty_console.armed == {}
        guest_pty.write(b"panic: again\r\n")
        pty_console.expect_one("again", 5)
    assert pty_console.armed == {"panic": "panic:"}
    pty_console.disarm("panic")
    guest_pty.write(b"panic: third\r\nok\r\n")
    pty_console.expect_one("ok", 5)


def test_timeout_carries_phase_expectation_and_tail(guest_pty, pty_console):
    dl = Deadline(1.5, "wait for prompt")
    guest_pty.write(b"some boot noise\r\n")
    pty_console.expect_one("noise", dl)
    time.sleep(1.0)
    t0 = time.monotonic()
    with pytest.raises(ConsoleTimeout) as info:
        pty_console.expect({"prompt": r"\$ $"}, dl)  # same deadline: only what is left of 1.5 s
    assert time.monotonic() - t0 < 1.4
    err = info.value
    assert err.phase == "wait for prompt" and err.deadline is dl
    assert "prompt" in err.expectation and "some boot noise" in err.tail
    assert "transcript.log" in str(err)


def test_closed_console_raises_closed_with_tail(guest_pty, pty_console):
    guest_pty.write(b"last words\r\n")
    time.sleep(0.1)
    guest_pty.close()
    with pytest.raises(ConsoleClosed) as info:
        pty_console.expect({"never": "never"}, 10)
    assert "last words" in info.value.tail
    with pytest.raises(ConsoleClosed):
        pty_console.send("x")


def test_console_drains_while_nobody_waits(guest_pty, pty_console, tmp_path):
    # far more than a pty buffer holds: without the drain thread this write would block
    blob = (b"0123456789abcdef" * 64 + b"\n") * 1024
    writer = threading.Thread(target=guest_pty.write, args=(blob,))
    writer.start()
    writer.join(timeout=20)
    assert not writer.is_alive()
    end = time.monotonic() + 10
    while pty_console.bytes_seen < len(blob) and time.monotonic() < end:
        time.sleep(0.05)
    assert (tmp_path / "transcript.log").read_bytes() == blob
    assert len(pty_console.tail(100)) == 100


def test_transcript_is_appended_never_truncated(guest_pty, tmp_path):
    path = tmp_path / "t.log"
    path.write_bytes(b"earlier run\n")
    con = Console.open_pty(guest_pty.path, path)
    guest_pty.release_slave()
    guest_pty.write(b"new\n")
    con.expect_one("new", 5)
    con.close()
    assert path.read_bytes() == b"earlier run\nnew\n"


def test_bad_patterns_are_rejected_clearly(pty_console):
    with pytest.raises(TypeError, match="text regexes"):
        pty_console.expect({"x": re.compile(b"bytes")}, 1)
    with pytest.raises(ValueError, match="single-line"):
        pty_console.run("echo a\necho b", prompt=None, deadline=1)


# ------------------------------------------------------------------ real sh under pexpect.spawn
PROMPT = r"SHPROMPT\$ $"


@pytest.fixture
def sh_console(tmp_path: Path):
    child = pexpect.spawn(
        "/bin/sh", ["-i"], env={"PS1": "SHPROMPT$ ", "PATH": os.environ["PATH"], "TERM": "dumb"}
    )
    con = Console(child, transcript=tmp_path / "sh.log", newline="\n")
    con.expect({"prompt": PROMPT}, 10)
    yield con
    con.close()


def test_run_returns_output_and_status(sh_console):
    r = sh_console.run("echo hello; echo world", prompt=PROMPT, deadline=10)
    assert (r.output, r.status, r.ok) == ("hello\nworld\n", 0, True)
    assert sh_console.run("false", prompt=PROMPT, deadline=10).status == 1
    assert sh_console.run("sh -c 'exit 42'", prompt=PROMPT, deadline=10).status == 42
    assert sh_console.run("printf abc", prompt=PROMPT, deadline=10).output == "abc"
    assert sh_console.run("true", prompt=PROMPT, deadline=10).output == ""


def test_run_is_not_fooled_by_marker_lookalikes(sh_console):
    # output that looks like our markers, and the echoed command line, never end the command early
    r = sh_console.run('echo "__FBHE_0_0__"; echo __FBHB_x__; echo done', prompt=PROMPT, deadline=10)
    assert r.output == "__FBHE_0_0__\n__FBHB_x__\ndone\n"
    assert r.status == 0


def test_run_check_and_failure_pattern(sh_console):
    with pytest.raises(CommandFailed, match="exited with status 3"):
        sh_console.run("echo oops; sh -c 'exit 3'", prompt=PROMPT, deadline=10, check=True)
    sh_console.arm_failure("oops", r"Kernel panic")
    with pytest.raises(ConsoleFailure) as info:
        sh_console.run("echo Kernel' 'panic; sleep 30", prompt=PROMPT, deadline=60)
    assert info.value.name == "oops"


def test_run_deadline_and_close(sh_console):
    with pytest.raises(ConsoleTimeout) as info:
        sh_console.run("sleep 5", prompt=PROMPT, deadline=Deadline(0.5, "short"))
    assert info.value.phase == "short"
    sh_console.sendline("exit")
    assert "exit" in sh_console.wait_closed(10) or sh_console.closed


def test_run_background_command(sh_console):
    r = sh_console.run("sleep 0.1 &", prompt=PROMPT, deadline=10)
    assert r.status == 0
    assert sh_console.run("echo after", prompt=PROMPT, deadline=10).output == "after\n"


def test_greedy_failure_pattern_sees_the_whole_line(guest_pty, pty_console):
    """A line that arrives in pieces: `[^\\r\\n]*` must not match only the first piece."""
    pty_console.arm_failure("panic", r"panic: [^\r\n]*")

    def dribble():
        for piece in (b"panic: page ", b"fault while in ", b"kernel mode\r\n"):
            guest_pty.write(piece)
            time.sleep(0.01)

    threading.Thread(target=dribble).start()
    with pytest.raises(ConsoleFailure) as info:
        pty_console.expect({"login": "login: "}, 10)
    assert info.value.matched == "panic: page fault while in kernel mode"
    # a prompt (nothing follows it) still matches, after a short quiet period
    guest_pty.write(b"db> ")
    t0 = time.monotonic()
    pty_console.expect({"ddb": r"db> $"}, 10)
    assert time.monotonic() - t0 < 2


@pytest.mark.skipif(not os.path.exists("/usr/bin/tcsh"), reason="tcsh not installed (apt-get install tcsh)")
def test_run_under_csh(tmp_path):
    """FreeBSD's root shell before 14.0 is csh: the marker wrapping must work there too."""
    child = pexpect.spawn("/usr/bin/tcsh", ["-f", "-i"], env={"PATH": os.environ["PATH"], "TERM": "dumb"})
    with Console(child, transcript=tmp_path / "csh.log", newline="\n") as con:
        con.sendline("set prompt='CSHPROMPT%% '")
        con.expect({"prompt": r"CSHPROMPT% $"}, 10)
        prompt = r"CSHPROMPT% $"
        r = con.run("echo hello; echo world", prompt=prompt, deadline=10)
        assert (r.output, r.status) == ("hello\nworld\n", 0)
        assert con.run("false", prompt=prompt, deadline=10).status == 1
        assert con.run("printf abc", prompt=prompt, deadline=10).output == "abc"
        # csh backgrounds a whole `a; b &` list: the begin marker must not go into the background job
        for _ in range(5):
            r = con.run("sleep 0.1 &", prompt=prompt, deadline=10)
            assert (r.status, r.output, r.command) == (0, "", "sleep 0.1 &")


# ------------------------------------------------------------------ kernel messages cut into a command
LINUX_LINE = rb"[   14.114297] hrtimer: interrupt took 16367028 ns" + b"\r\n"
FREEBSD_LINE = b"uhub0: 2 ports with 2 removable, self powered\r\n"


def _answer_one_command(guest: PtyGuest, reply) -> threading.Thread:
    """Play the shell for one `Console.run`: read the typed line, then write `reply(token)`."""

    def shell() -> None:
        typed = b""
        while b"\r" not in typed:
            typed += guest.read_available(0.5)
        token = re.search(rb'"__FBH""B_([0-9a-fx]+)__"', typed).group(1)
        guest.write(typed.replace(b"\r", b"\r\n"))  # the terminal's echo
        for piece in reply(token):
            guest.write(piece)
            time.sleep(0.02)

    t = threading.Thread(target=shell, daemon=True)
    t.start()
    return t


def test_kernel_lines_anywhere_in_a_command_are_cut_out(guest_pty, pty_console):
    """The first `tox` on a busy host failed on a Linux printk inside `cat`'s output: a console that knows
    its kernel's log lines gets exactly the command's output, whatever the kernel printed where."""
    pty_console.kernel_lines = re.compile(rb"\[ *\d+\.\d{6}\] [^\r\n]*\r*\n".decode())
    k = LINUX_LINE

    def reply(token: bytes):
        return [
            b"__FBHB_" + token[:3] + k + token[3:] + b"__\r\n",
            b"saved-st" + k + b"ate-marker\r\n",
            k,
            b"second line\r\n\r\n__FBHE_" + token + b"_" + k + b"0__\r\n",
            b"PROMPT# " + k,
        ]

    _answer_one_command(guest_pty, reply)
    r = pty_console.run("cat /tmp/marker", prompt=r"PROMPT# $", deadline=10)
    assert (r.output, r.status) == ("saved-state-marker\nsecond line\n", 0)


def test_a_kernel_line_cut_into_a_marker_does_not_break_the_command(guest_pty, pty_console):
    """Without knowing the kernel's lines (FreeBSD prints them bare), a line cut into the begin or end
    marker is skipped: the command still ends with its status instead of a timeout."""
    k = FREEBSD_LINE

    def reply(token: bytes):
        return [
            b"__FBH" + k + b"B_" + token + b"__" + k,
            b"output\r\n",
            b"\r\n__FBHE_" + token[:4] + k + token[4:] + b"_3" + k + b"__\r\n",
            b"PROMPT# ",
        ]

    _answer_one_command(guest_pty, reply)
    r = pty_console.run("false", prompt=r"PROMPT# $", deadline=10)
    assert (r.output, r.status) == ("output\n", 3)


def test_expect_ignore_consumes_through_the_match_only(guest_pty, pty_console):
    guest_pty.write(b"a" + LINUX_LINE + b"bc" + LINUX_LINE + b"rest")
    m = pty_console.expect({"abc": "abc"}, 10, ignore=rb"\[ *\d+\.\d{6}\] [^\r\n]*\r*\n".decode())
    assert (m.before, m.text) == ("", "abc")
    time.sleep(0.2)
    assert pty_console.pending().endswith("rest")
    assert "hrtimer" in pty_console.pending()  # unmatched text after the match is left as it came

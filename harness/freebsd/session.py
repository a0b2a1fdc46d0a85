"""A root shell on a FreeBSD guest's serial console.

`ConsoleShell(console).login(deadline)` waits for getty's ``login:`` (pressing Enter if the prompt
already went by), logs in as root (BASIC-CI images: empty password, and no ``Password:`` question at
all), switches to ``/bin/sh`` (root's shell is csh before 14.0) and sets a prompt unique to this session,
so a prompt can never be confused with command output. `run` then uses `Console.run` (marker-wrapped,
exit status) with a kernel panic armed as a failure: a command that panics the guest ends at once with
`GuestPanicked` and the panic text.

`start(command)` types a command without waiting for it to finish: the ddb triggers
(``sysctl debug.kdb.enter=1``) never return while the kernel is stopped.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from harness.freebsd.stages import (
    FAILURE_PATTERNS,
    STAGE_PATTERNS,
    TAIL_WINDOW,
    FreeBSDStageError,
    GuestPanicked,  # noqa: F401 - raised through failure_error; re-exported for callers
    Stage,
    StageTimeout,
    describe_timeout,
    failure_error,
    last_stage,
)
from harness.util.deadline import Deadline, as_deadline


class LoginFailed(FreeBSDStageError):
    """getty refused the login (wrong password, no such user) or no shell prompt appeared."""


class ConsoleShell:
    """A logged-in root ``/bin/sh`` on `console` with a unique prompt."""

    def __init__(self, console, *, token: str | None = None) -> None:
        self.console = console
        self.token = token or secrets.token_hex(4)
        self.prompt_text = f"__FBHP_{self.token}__# "
        # Not anchored at the end: a kernel message printed right after the prompt must not hide it
        # (the token makes the prompt unique; its echo in the PS1 assignment is split by quotes).
        self.prompt = re.escape(self.prompt_text)
        self.logged_in = False

    # ------------------------------------------------------------ login
    def login(self, deadline: Deadline | float = 300.0, *, user: str = "root", password: str = "") -> None:
        """Log in on the console and set up the shell; a panic on the way raises `GuestPanicked`."""
        from harness.vm.console import ConsoleTimeout

        dl = as_deadline(deadline, "console login")
        with self._taking_shell(dl, failed="login", waiting="console login"):
            try:
                self.console.expect({"login": STAGE_PATTERNS[Stage.LOGIN]}, dl.sub(5, "login prompt"))
            except ConsoleTimeout:
                if dl.expired():
                    raise
                # The prompt may have gone by before we attached (or the tail was consumed): ask again.
                self.console.sendline("")
                self.console.expect({"login": STAGE_PATTERNS[Stage.LOGIN]}, dl)
            self.console.sendline(user)
            m = self.console.expect(
                {
                    "password": r"[Pp]assword: ?$",
                    "incorrect": r"Login incorrect",
                    "shell": r"[#$%>] $",
                },
                dl,
            )
            if m.name == "password":
                self.console.sendline(password)
                m = self.console.expect({"incorrect": r"Login incorrect", "shell": r"[#$%>] $"}, dl)
            if m.name == "incorrect":
                raise LoginFailed(
                    f"console login as {user!r} refused: Login incorrect", tail=self.console.tail()
                )
            # Any shell -> a plain sh with our own prompt and no pager.
            self.console.sendline("exec /bin/sh")
            self._own_prompt(dl)

    def single_user(self, deadline: Deadline | float = 60.0) -> None:
        """Take init(8)'s single-user shell: the kernel was booted with ``-s`` and init asked "Enter full
        pathname of shell or RETURN for /bin/sh:" (`Stage.SINGLE_USER`, already seen). RETURN gives a root
        ``/bin/sh`` with no login; then our own prompt, as after `login`."""
        dl = as_deadline(deadline, "single-user shell")
        with self._taking_shell(dl, failed="the single-user shell", waiting="single-user shell"):
            self.console.sendline("")
            self._own_prompt(dl)

    @contextmanager
    def _taking_shell(self, dl: Deadline, *, failed: str, waiting: str) -> Iterator[None]:
        """Failure patterns armed while the shell is taken: a panic or boot failure on the way is
        `GuestPanicked` / `BootFailed` ("... during `failed`"), running out of time a `StageTimeout`
        naming the last boot stage seen; success marks the shell logged in."""
        from harness.vm.console import ConsoleFailure, ConsoleTimeout

        with self._armed():
            try:
                yield
            except ConsoleFailure as exc:
                raise self._panicked(exc, failed) from exc
            except ConsoleTimeout as exc:
                text = self.console.tail(TAIL_WINDOW)
                last = last_stage(text)
                raise StageTimeout(
                    describe_timeout(text, dl.elapsed(), f"{waiting} ({exc.phase})"),
                    last_stage=last.stage if last else None,
                    cause=exc,
                ) from exc
        self.logged_in = True

    def _own_prompt(self, dl: Deadline) -> None:
        # sh's prompt, possibly followed by kernel messages printed right after it (only the echo of
        # what we typed comes before it, so nothing else can look like a prompt here)
        self.console.expect({"sh": r"(?:^|\n)[^\r\n]*[#$] (?:[^\r\n]*\r*\n)*$"}, dl)
        # The quotes split the token in the echo, so only the real prompt matches.
        head, tail = self.prompt_text[:5], self.prompt_text[5:]
        self.console.sendline(f"PS1='{head}''{tail}'; export PAGER=cat TERM=dumb; unset ENV")
        self.console.expect({"prompt": self.prompt}, dl)

    def attach(self, deadline: Deadline | float = 30.0) -> None:
        """Re-use a shell that another `ConsoleShell` with the same token already set up."""
        self.console.sendline("")
        self.console.expect({"prompt": self.prompt}, as_deadline(deadline, "shell prompt"))
        self.logged_in = True

    # ------------------------------------------------------------ commands
    def run(self, command: str, deadline: Deadline | float = 120.0, *, check: bool = False):
        """Run `command`, return `CommandResult(command, output, status)`."""
        from harness.vm.console import ConsoleFailure

        if not self.logged_in:
            raise FreeBSDStageError("ConsoleShell.run before login()")
        dl = as_deadline(deadline, f"shell: {command}")
        with self._armed():
            try:
                return self.console.run(command, prompt=self.prompt, deadline=dl, check=check)
            except ConsoleFailure as exc:
                raise self._panicked(exc, f"command {command!r}") from exc

    def start(self, command: str) -> None:
        """Type `command` and return at once (for commands that stop the kernel)."""
        if not self.logged_in:
            raise FreeBSDStageError("ConsoleShell.start before login()")
        self.console.sendline(command)

    def sysctl(self, name: str, value: str | int | None = None) -> str:
        """Read (or set, then read back) one sysctl."""
        if value is not None:
            self.run(f"sysctl {name}={value}", check=True)
        return self.run(f"sysctl -n {name}", check=True).output.strip()

    # ------------------------------------------------------------ helpers
    @contextmanager
    def _armed(self) -> Iterator[None]:
        for name, rx in FAILURE_PATTERNS.items():
            self.console.arm_failure(name, rx)
        try:
            yield
        finally:
            for name in FAILURE_PATTERNS:
                self.console.disarm(name)

    def _panicked(self, exc, what: str) -> FreeBSDStageError:
        """`GuestPanicked`, or `BootFailed` when the firmware / a boot loader gave up."""
        return failure_error(exc, what)

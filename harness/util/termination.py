"""SIGTERM and SIGHUP end a run the way Ctrl-C does, so the same cleanup runs.

`timeout`, a cancelled CI job and a closed terminal send SIGTERM or SIGHUP. Their default action kills
the process on the spot: no ``with`` block exits, so a running guest, its preparation domain and its
temporary files were left behind until the next ``doctor``. `Terminated` is a `KeyboardInterrupt`, so
every path that already cleans up after Ctrl-C (guest context managers, pytest's fixture teardown)
does the same here. Only the first signal raises: a second one while cleaning up is ignored rather
than cutting the cleanup short (SIGKILL still works, and the reaper handles what it leaves).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

#: the signals that mean "stop, please" besides SIGINT
TERMINATING_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM or SIGHUP; handled wherever Ctrl-C is."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process killed by this signal (128 + number)."""
        return 128 + self.signum


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + signal number for `Terminated`, 130 for a plain Ctrl-C."""
    return exc.exit_status if isinstance(exc, Terminated) else 128 + signal.SIGINT


def describe(exc: KeyboardInterrupt) -> str:
    """'SIGTERM' / 'SIGHUP' / 'Ctrl-C', for a one-line message."""
    return signal.Signals(exc.signum).name if isinstance(exc, Terminated) else "Ctrl-C"


def install() -> Callable[[], None]:
    """Turn SIGTERM/SIGHUP into `Terminated` in the main thread; returns a function that restores the
    previous handlers. Does nothing (and restores nothing) outside the main thread, and leaves a signal
    that is ignored (e.g. SIGHUP under `nohup`) ignored."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    fired = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return  # already stopping: let the cleanup finish
        fired = True
        raise Terminated(signum)

    # a signal the caller chose to ignore (`nohup` ignores SIGHUP) stays ignored
    previous = {
        sig: signal.signal(sig, handler)
        for sig in TERMINATING_SIGNALS
        if signal.getsignal(sig) is not signal.SIG_IGN
    }

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    return restore


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """`install` for the duration of a block."""
    restore = install()
    try:
        yield
    finally:
        restore()

"""One absolute deadline per phase.

A phase (boot to login, enter ddb, write a dump) gets one budget up front. Every wait inside the phase
asks the same `Deadline` how much time is left, so a phase made of many small waits can never add up
to more than its budget (the mistake of giving each wait its own fresh timeout).
"""

from __future__ import annotations

import time


class Deadline:
    """An absolute point in (monotonic) time by which `phase` must be done."""

    def __init__(self, seconds: float, phase: str) -> None:
        if seconds < 0:
            raise ValueError(f"deadline for phase {phase!r} must be >= 0 seconds, got {seconds}")
        self.seconds = float(seconds)
        self.phase = phase
        self.started = time.monotonic()
        self.at = self.started + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def sub(self, seconds: float, phase: str) -> Deadline:
        """A nested deadline that ends at `seconds` from now or at this one, whichever comes first."""
        return Deadline(min(float(seconds), self.remaining()), phase)

    def __repr__(self) -> str:
        return f"Deadline(phase={self.phase!r}, seconds={self.seconds:g}, remaining={self.remaining():.1f})"


def as_deadline(value: Deadline | float | int, phase: str) -> Deadline:
    """Accept a `Deadline` or plain seconds (which start a new phase now)."""
    if isinstance(value, Deadline):
        return value
    return Deadline(float(value), phase)

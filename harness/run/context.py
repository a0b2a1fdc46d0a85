"""What every step of one run shares: the configuration, the run directory, progress, timings and the
name of the step in progress (a failure is reported as that step)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from harness.run.config import Progress, ReproConfig

TIMING_KEYS = ("boot", "ddb", "dump", "extract", "verify")


@dataclass
class RunContext:
    cfg: ReproConfig
    dir: Path
    progress: Progress = print
    timings: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(TIMING_KEYS))
    step: str = "setup"
    #: called with each step name as the run enters it (tests follow the order with it)
    on_step: Callable[[str], None] = lambda _step: None

    def enter(self, step: str) -> None:
        self.step = step
        self.on_step(step)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[key] = round(time.monotonic() - started, 3)

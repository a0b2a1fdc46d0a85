"""Fixtures for the FreeBSD-layer tests: recorded transcripts replayed into a real `Console`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.freebsd.replay import RecordedTranscript, ReplayConsoleSpawn
from harness.vm.console import Console
from tests.ssh.sshd_server import sshd  # noqa: F401 - pytest fixture

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "data" / "transcripts" / "freebsd-12.1-amd64"
ALL_RUNS = [
    "mini",
    "full",
    "panic",
    "ada",
    "trial-waitnmi-1",
    "trial-altbreak-1",
    "trial-panic-1",
    "trial-bootd-1",
]


def load(name: str) -> RecordedTranscript:
    return RecordedTranscript.load(TRANSCRIPTS, name)


@pytest.fixture
def replay() -> Iterator[Callable[..., tuple[Console, ReplayConsoleSpawn]]]:
    """replay(name, **kw) -> (Console over a ReplayConsoleSpawn of that recording, the spawn)."""
    consoles: list[Console] = []

    def make(name: str | RecordedTranscript, **kw) -> tuple[Console, ReplayConsoleSpawn]:
        transcript = load(name) if isinstance(name, str) else name
        spawn = ReplayConsoleSpawn(transcript, **kw)
        console = Console(spawn, name=f"replay:{transcript.name}")
        consoles.append(console)
        return console, spawn

    yield make
    for c in consoles:
        c.close()

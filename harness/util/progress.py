"""One transfer progress bar for every long copy (image downloads, SFTP fetches, decompression).

A context manager yielding ``update(completed_bytes)``; disabled, it yields a no-op so callers never
branch. The bar goes to stderr so stdout stays clean for paths and JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def transfer_progress(
    enabled: bool, description: str, total: int | None, *, start: int = 0
) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda completed: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total, completed=start)
        yield lambda completed: progress.update(task, completed=completed)

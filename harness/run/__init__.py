"""One reproduction run as named steps, used by `fbsd-hil repro` and by the pytest plugin's fixtures.

    source -> boot -> enter -> dump -> verify (capture live memory) -> retrieve -> verify (judge) -> evidence

Each step is a module with one small interface (`runner.run_repro` calls them in this order). Guest
sources (`sources.SOURCES`) and retrievals (`retrieve.RETRIEVALS`) are tables: adding one means adding
a module and a table entry. This package sits above `harness.verify`, `harness.freebsd` and `images`
(docs/architecture.md); nothing below it imports it.
"""

from harness.run.config import ReproConfig, ReproError, ReproOutcome, ReproUnsupported
from harness.run.runner import run_repro

__all__ = ["ReproConfig", "ReproError", "ReproOutcome", "ReproUnsupported", "run_repro"]

"""`Retrieved`: what every retrieval hands to the verify step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Retrieved:
    vmcore: Path  # what reader.open_vmcore opens
    kernel: Path | None  # the kernel file for symbols after retrieval (may be newly fetched)
    kernel_source: str
    notes: list[str] = field(default_factory=list)  # for the report
    evidence: dict[str, str] = field(default_factory=dict)  # name -> path, for the outcome
    header: dict[str, Any] | None = None  # the kerneldumpheader, when read from the dump device by the host

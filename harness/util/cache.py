"""Where fbsd-hil keeps what it can compute again (``$FBSD_HIL_CACHE``, else ``$XDG_CACHE_HOME/fbsd-hil``,
else ``~/.cache/fbsd-hil``): one rule for every layer, so a user moves or clears one directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    explicit = os.environ.get("FBSD_HIL_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fbsd-hil"

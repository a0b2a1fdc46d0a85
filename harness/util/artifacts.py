"""Keep a failed test's evidence: console transcript, domain XML, vmcore, kernel, verification report.

Why: a HIL failure at 3 a.m. in nightly CI is only debuggable from what it left behind. Fixtures register
files and texts as they produce them; when the test fails, `ArtifactCollector.keep()` copies them into a
fresh directory under ``--fbsd-artifacts`` named after the test. Passing tests keep nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


def safe_name(text: str, limit: int = 120) -> str:
    """A file-system-safe directory name for a test id such as ``tests/hil/test_x.py::test[mini-nmi]``."""
    name = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", text).strip("._")
    return name[:limit] or "test"


def unique_dir(root: Path, name: str) -> Path:
    """Create ``root/name`` (or ``name-2``, ...): never reuse a directory a user may have filled."""
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10000):
        d = root / (name if n == 1 else f"{name}-{n}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise FileExistsError(f"no free artifact directory for {name} under {root}")


class ArtifactCollector:
    """Files and texts one test may need to keep; copied only when `keep()` is called."""

    def __init__(self, root: str | os.PathLike[str] | None, test_id: str) -> None:
        self.root = Path(root) if root else None
        self.test_id = test_id
        self.files: list[tuple[Path, str]] = []
        self.texts: dict[str, str] = {}
        self.kept: Path | None = None

    def add(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Register a file or a directory (copied whole) to keep on failure."""
        p = Path(path)
        self.files.append((p, name or p.name))

    def add_text(self, name: str, text: str) -> None:
        self.texts[name] = text

    def keep(self) -> Path | None:
        """Copy everything registered into a new directory; returns it (None without a root)."""
        if self.root is None or self.kept is not None:
            return self.kept
        dest = unique_dir(self.root, safe_name(self.test_id))
        missing = []
        for src, name in self.files:
            target = dest / name
            try:
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("*.raw"), symlinks=True)
                elif src.is_file():
                    shutil.copy2(src, target)
                else:
                    missing.append(str(src))
            except OSError as exc:
                missing.append(f"{src} ({exc})")
        for name, text in self.texts.items():
            with contextlib.suppress(OSError):
                (dest / name).write_text(text, encoding="utf-8", errors="replace")
        if missing:
            (dest / "MISSING.txt").write_text("registered but not found:\n" + "\n".join(missing) + "\n")
        self.kept = dest
        return dest

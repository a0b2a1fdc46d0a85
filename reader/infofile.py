"""savecore's `info.N` beside a `vmcore.N`: the dump header facts a plain vmcore file does not carry.

A vmcore written by savecore(8) is the bare payload; the kerneldumpheader (hostname, dump time, panic
string, version string) went into `info.N` as `  Key: value` lines. crashinfo(8) reads it; so do
`info` and `crashinfo` when the header is not in the container itself.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

#: an info file is a few hundred bytes; never read more than this
MAX_INFO = 64 << 10
_NAME = re.compile(r"^vmcore(?:_encrypted)?\.(\d+)(?:\.gz|\.zst)?$")
KEYS = {"Hostname": "hostname", "Dumptime": "dumptime", "Panic String": "panicstring",
        "Version String": "versionstring", "Architecture": "architecture", "Dump Status": "status"}


def info_file_for(vmcore: str | Path) -> Path | None:
    """`info.N` next to `vmcore.N` (also `.gz`/`.zst` and `vmcore_encrypted.N`), if it exists."""
    p = Path(vmcore)
    m = _NAME.match(p.name)
    if not m:
        return None
    info = p.with_name(f"info.{m.group(1)}")
    return info if info.is_file() else None


def parse_dumptime(text: str) -> int | None:
    """savecore writes `%F %T %z` (older versions ctime(3) in local time, read here as UTC)."""
    for fmt in ("%Y-%m-%d %H:%M:%S %z", "%a %b %d %H:%M:%S %Y"):
        try:
            t = dt.datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        return int(t.timestamp())
    return None


def read_info_file(vmcore: str | Path) -> dict[str, Any] | None:
    """The facts of `info.N` for `vmcore` as a dict (None when there is no readable info file)."""
    path = info_file_for(vmcore)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_INFO)
    except OSError:
        return None
    out: dict[str, Any] = {"path": str(path)}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in KEYS:
            out[KEYS[key]] = value.strip()
    if "dumptime" in out:
        out["dumptime"] = parse_dumptime(out["dumptime"])
    return out

"""How `fbsd-vmcore` shows values: for people (text) and for programs (JSON).

Text: decimal where people think in decimal (osreldate 1201000, counts, hz), sizes in bytes and MiB,
times as UTC dates, hex for addresses, "-" for unknown, never a Python repr.
JSON: every address is a "0x..." string, because a 64-bit kernel address does not survive a JSON
number (jq 1.6 and JavaScript hold numbers as doubles: 0xffffffff80c09ade would come back rounded);
other integers stay numbers, and any integer too large for a double becomes a "0x..." string too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

#: integer fields that are addresses (hex in text, "0x..." strings in JSON)
ADDRESS_KEYS = frozenset({"kernbase", "dmapbase", "dmapend", "dmapphys", "kernel_load_offset", "address",
                          "proc", "pcb", "pc", "fp", "sp", "paddr", "vaddr", "kpml4phys"})
#: integer fields that are byte counts (shown with MiB when large)
SIZE_KEYS = frozenset({"file_size", "payload_size", "expected_size", "msgbufsize", "bitmapsize", "pmapsize",
                       "ptesize", "dumpavailsize", "size", "dumplength", "dumpextent", "page_size",
                       "blocksize", "mediasize", "msgbuf", "dump_avail", "bitmap", "page_table"})
#: integer fields that are file offsets or bit patterns (hex, but JSON numbers: they fit a double)
OFFSET_KEYS = frozenset({"offset", "data", "parity", "source_offset", "trailer_offset"})
TIME_KEYS = frozenset({"dumptime", "time_second"})
DOUBLE_SAFE = 1 << 53


def mib(n: int) -> str:
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)" if n >= 1 << 20 else f"{n} bytes"


def utc(seconds: int) -> str:
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (not a valid time)"


def text_value(key: str, value: Any) -> str:
    """One value for a person to read."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        if key in ADDRESS_KEYS:
            return f"{value:#x}"
        if key in SIZE_KEYS:
            return mib(value)
        if key in OFFSET_KEYS:
            return f"{value:#x}"
        if key in TIME_KEYS:
            return f"{utc(value)} ({value})"
        return str(value)
    if isinstance(value, str):
        return value.strip() or "-"
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
            return ", ".join(f"{a:#x}-{b:#x}" for a, b in value) or "-"
        return ", ".join(text_value(key, v) for v in value) or "-"
    return str(value)


def text_lines(data: dict[str, Any], indent: str = "", *, offsets: bool = False) -> list[str]:
    """`key: value` lines, nested dicts indented under their key; lists of dicts one per line.

    `offsets`: every integer is a file offset (a minidump's `sections` table): hex.
    """
    lines = []
    for key, value in data.items():
        if offsets and isinstance(value, int) and not isinstance(value, bool):
            lines.append(f"{indent}{key}: {value:#x}")
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:" + (" (file offsets)" if key == "sections" else ""))
            lines.extend(text_lines(value, indent + "  ", offsets=key == "sections"))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{indent}{key}:")
            for item in value:
                lines.append(f"{indent}  - " + ", ".join(f"{k} {text_value(k, v)}" for k, v in item.items()))
        else:
            lines.append(f"{indent}{key}: {text_value(key, value)}")
    return lines


def json_safe(value: Any, key: str = "") -> Any:
    """A copy of `value` with addresses (and any integer a double cannot hold) as "0x..." strings."""
    if isinstance(value, dict):
        return {k: json_safe(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if key == "dump_avail":
            return [[f"{a:#x}", f"{b:#x}"] for a, b in value]
        return [json_safe(v, key) for v in value]
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if key in ADDRESS_KEYS or not -DOUBLE_SAFE < value < DOUBLE_SAFE:
        return f"{value:#x}"
    return value

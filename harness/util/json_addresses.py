"""Addresses in the harness's JSON are ``"0x..."`` strings, never JSON numbers.

Why: a JSON number is a double for most readers (JavaScript, jq 1.6, spreadsheets); a 64-bit kernel
address such as ``0xffffffff81cd4c0c`` comes back as ``18446744071592774000``, silently wrong. One
encoder, applied when JSON is written, turns every integer that is an address into a hex string:
integers under an address key (`ADDRESS_KEY`: ``address``, ``pa``, ``va``, ``*_address``, ``*_pa``,
``cr3``, ``rip`` ...) and any integer too large for a double to hold exactly (beyond 2**53), wherever it
is. Counts, sizes and offsets stay numbers.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: keys whose integer values are addresses (physical or virtual) or register values
ADDRESS_KEY = re.compile(
    r"(?:^|_)(?:address|addr|pa|va|kva|phys|paddr|vaddr|base|cr3|pml4|pc|sp|fp|lr|"
    r"rip|rsp|rbp|eip|esp|ebp|elr|far)$|^(?:kernbase|kernend|dmapbase|dmapend|kpml4phys)$",
    re.IGNORECASE,
)
#: the largest integer every JSON reader holds exactly (IEEE-754 double mantissa)
EXACT_LIMIT = 2**53


def hex_addresses(value: Any, key: str | None = None) -> Any:
    """`value` with every address integer turned into ``"0x..."`` (see module docstring); a copy."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if (key is not None and ADDRESS_KEY.search(key)) or not -EXACT_LIMIT <= value <= EXACT_LIMIT:
            return f"{value:#x}" if value >= 0 else f"-{-value:#x}"
        return value
    if isinstance(value, dict):
        return {k: hex_addresses(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hex_addresses(v, key) for v in value]
    return value


def dumps(value: Any, **kw: Any) -> str:
    """`json.dumps` with addresses as hex strings."""
    return json.dumps(hex_addresses(value), **kw)

"""Live-kmem cross-checks, driven through a stand-in shell that answers dd/od from a real dump.

`DumpBackedShellStandIn` is a stand-in (no FreeBSD guest can run here): it executes exactly the
command `kmem_command` builds by reading the addressed bytes from the LLDB fixture, and formats them as
FreeBSD's `od -An -v -tx1` does. A second one reports a different kernel to prove mismatches are caught.
"""

from __future__ import annotations

import re

import pytest

import reader
from harness.verify.kmem import check_live_kmem, kmem_command, parse_od_hex


class DumpBackedShellStandIn:
    def __init__(self, vm, patch: dict[int, bytes] | None = None) -> None:
        self.vm, self.patch, self.commands = vm, patch or {}, []

    def __call__(self, command: str) -> str:
        self.commands.append(command)
        m = re.fullmatch(
            r"dd if=/dev/kmem bs=1 iseek=(-?\d+) count=(\d+) 2>/dev/null \| od -An -v -tx1", command
        )
        assert m, command
        va, size = int(m.group(1)) % (1 << 64), int(m.group(2))
        data = bytearray(self.vm.read(va, size))
        for pva, b in self.patch.items():
            if va <= pva < va + size:
                data[pva - va] = b[0]
        return "\n".join(" ".join(f"{x:02x}" for x in data[i : i + 16]) for i in range(0, size, 16)) + "\n"


@pytest.fixture(scope="module")
def full(lldb_fixtures):
    with reader.open_vmcore(lldb_fixtures["full"], kernel=lldb_fixtures["kernel"], zero_fill=True) as vm:
        yield vm


def test_kmem_command_uses_the_negative_offset_of_a_kernel_va():
    assert kmem_command(0xFFFFFFFF81CD4C0C, 4).startswith(
        f"dd if=/dev/kmem bs=1 iseek={0xFFFFFFFF81CD4C0C - (1 << 64)} count=4 "
    )
    assert parse_od_hex(" 64 00 00 00\n") == b"d\0\0\0"


def test_live_kmem_agrees_with_the_dump(full):
    shell = DumpBackedShellStandIn(full)
    checks = check_live_kmem(shell, full, text_symbol="hz")
    by = {c.what: c for c in checks}
    assert by["kmem hz"].ok and by["kmem hz"].expected == "100"
    # this symbol-only fixture kernel has no `version`/`ostype`: reported, not passed
    assert not by["kmem version"].ok and "missing" in by["kmem version"].actual
    assert len(shell.commands) == 2  # hz and the "text" page (hz's page here)


def test_live_kmem_mismatch_is_reported(full):
    hz = full.symbol("hz")
    checks = check_live_kmem(DumpBackedShellStandIn(full, {hz: b"\xe8"}), full, text_symbol="hz")
    by = {c.what: c for c in checks}
    assert not by["kmem hz"].ok and by["kmem hz"].actual == "232"


def test_unreadable_kmem_is_a_failed_check_not_an_exception(full):
    checks = check_live_kmem(lambda _cmd: "", full, text_symbol="hz")
    assert not any(c.ok for c in checks)
    assert "got 0 of 4 bytes" in {c.what: c for c in checks}["kmem hz"].actual

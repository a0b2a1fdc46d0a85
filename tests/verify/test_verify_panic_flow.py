"""Expected-volatile kinds of the panic flow (kernels without ddb) on the real LLDB FreeBSD dumps.

The amd64 fixtures are real panic dumps (``sysctl debug.kdb.panic=1``: the crashed thread is the
``sysctl`` process, its registers come from ``dumppcb``), so the panicking thread, the other threads and
the dump state variables are real. Live images are derived from the dump and perturbed where the panic
path writes after the dump (or where it must not).
"""

from __future__ import annotations

import pytest
from livebuild import poke

from harness.verify import VerificationReport, verify_dump
from harness.verify.attribution import EXPECTED_BY_FLOW, expected_kinds
from harness.verify.live import LiveMemory


def _verify(vm, path, **kw) -> VerificationReport:
    with LiveMemory.from_raw_file(path) as live:
        return verify_dump(vm, live, **kw)


def _thread(vm, *, crashed: bool, comm: str | None = None):
    return next(
        t for t in vm.threads() if t.crashed == crashed and (comm is None or t.comm == comm) and t.registers
    )


def _poke_stack(vm, path, thread, below: int = 0x80) -> int:
    """Change one byte just below `thread`'s saved stack pointer (where later calls put their frames)."""
    va = thread.registers["rsp"] - below
    pa = vm.translate(va)
    old = vm.read_phys(pa, 1)
    poke(path, pa, bytes([old[0] ^ 0x5A]))
    return pa


def test_panicking_thread_stack_is_expected_in_the_panic_flow(mini, mini_live):
    path, root = mini_live
    t = _thread(mini, crashed=True)
    assert t.comm == "sysctl"  # the real fixture: panicked by sysctl debug.kdb.panic=1
    pa = _poke_stack(mini, path, t)
    r = _verify(mini, path, pml4_pa=root, flow="panic", ddb_values={}, ddb_registers=None, before=None)
    assert r.flow == "panic" and r.passed, r.summary()
    (d,) = r.differences
    assert d.address == pa & ~0xFFF and d.kind == "panic-thread-stack" and d.explained
    assert f"tid {t.tid}" in d.attribution and "dumppcb" in d.attribution
    assert r.to_dict()["flow"] == "panic" and "panic flow" in r.summary().splitlines()[0]


def test_another_threads_stack_is_expected_under_ddb_but_not_after_a_panic(mini, mini_live):
    """After a panic only the panicking thread runs; under ddb any stopped thread's stack may be touched."""
    path, root = mini_live
    other = _thread(mini, crashed=False, comm="pagedaemon")
    _poke_stack(mini, path, other)
    ddb = _verify(mini, path, pml4_pa=root)
    assert ddb.flow == "ddb" and ddb.passed
    assert ddb.differences[0].kind == "thread-stack" and ddb.differences[0].explained
    panic = _verify(mini, path, pml4_pa=root, flow="panic", ddb_values={}, ddb_registers=None)
    assert not panic.passed and panic.pages_differing_unexplained == 1
    (d,) = panic.differences
    assert d.kind == "thread-stack" and not d.explained
    assert "other than the one that panicked" in d.reason and f"tid {other.tid}" in d.attribution


def test_dump_state_variable_is_named_shutdown_state(mini, mini_live):
    path, root = mini_live
    pa = mini.translate(mini.symbol("dumptid"))
    old = mini.read_phys(pa, 1)
    poke(path, pa, bytes([old[0] ^ 1]))
    panic = _verify(mini, path, pml4_pa=root, flow="panic", ddb_values={}, ddb_registers=None)
    assert panic.passed
    (d,) = panic.differences
    assert d.kind == "shutdown-state" and "dumptid" in d.attribution and d.explained
    ddb = _verify(mini, path, pml4_pa=root)
    assert ddb.differences[0].kind == "kernel-data" and ddb.passed


def test_text_and_unnamed_memory_stay_unexpected_in_the_panic_flow():
    panic = expected_kinds("panic")
    for kind in ("kernel-text", "kernel-rodata", "page-table", "unattributed", "thread-stack"):
        assert kind not in panic
    assert {"panic-thread-stack", "shutdown-state", "console-state", "msgbuf"} <= panic
    assert set(EXPECTED_BY_FLOW) == {"ddb", "panic"}
    with pytest.raises(ValueError, match="unknown dump flow 'textdump'"):
        expected_kinds("textdump")


def test_unknown_flow_is_refused_before_any_work(mini, mini_live):
    path, root = mini_live
    with pytest.raises(ValueError, match="unknown dump flow"):
        _verify(mini, path, pml4_pa=root, flow="nmi")


def test_before_trigger_image_excuses_only_what_changed_after_it(mini, mini_live, tmp_path):
    """The panic flow's before image is taken right before the trigger: a page nobody can name is excused
    only if it changed between that image and the held kernel (like the dump device's heap state)."""
    path, root = mini_live
    other = _thread(mini, crashed=False, comm="pagedaemon")
    pa = _poke_stack(mini, path, other)  # not a panic-flow kind
    before = tmp_path / "before.raw"
    before.write_bytes(path.read_bytes())  # stable: the same before the trigger and when held
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, flow="panic", before=b)
    assert not r.passed and r.differences[0].reason == "page was stable during the dump, yet the dump differs"
    old = mini.read_phys(pa, 1)
    poke(before, pa, bytes([old[0] ^ 0xFF]))  # changed after the trigger, but the dump holds a third value
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, flow="panic", before=b)
    assert not r.passed and r.differences[0].unexplained[0]["what"].startswith("thread-stack: tid")
    poke(before, pa, old)  # the dump holds the byte's value from before the trigger: caught before it changed
    with LiveMemory.from_raw_file(before) as b:
        r = _verify(mini, path, pml4_pa=root, flow="panic", before=b)
    assert r.passed and r.differences[0].reason.startswith(
        "changed between the live image taken right before the panic trigger and the held kernel"
    )

"""The FreeBSD layer on a real FreeBSD guest (marker ``hil``): ddb entry, ddb commands, dumps and
retrieval. They run only with --fbsd-image / --fbsd-release / --fbsd-kernel (fixtures from
harness/pytest_plugin.py) and skip otherwise. Each test boots its own guest: keep them few."""

from __future__ import annotations

import re

import pytest

import reader
from harness.freebsd.dumps import DumpPlan
from harness.freebsd.machine import FreeBSDMachine
from harness.freebsd.retrieve import parse_info_file

pytestmark = pytest.mark.hil


def _machine(guest, target, *, needs_ddb: bool = True) -> FreeBSDMachine:
    m = FreeBSDMachine(guest, memory_mib=target.memory_mib, dump_disk_image=guest.spec.disks[0].path)
    m.shell = getattr(guest, "shell", None)
    # a single-user root image: FreeBSD's base tools for dumps only (no grep, awk, sysrc)
    m.minimal_userland = target.root_image is not None
    if target.kernel is not None:
        from images.grub_iso import DEFAULT_KENV

        m.kenv = dict(DEFAULT_KENV) | dict(target.kenv)  # what the plugin's GRUB ISO passed
    if needs_ddb and m.facts.has_ddb is False:
        pytest.skip(f"{m.facts.describe()}: test_panic_flow_* covers kernels without ddb")
    return m


def _dump_device(target) -> str:
    # bare kernel: the dump disk is the only disk; an image's root disk comes first
    return "/dev/vtbd0" if target.kernel is not None else "/dev/vtbd1"


def test_nmi_ddb_session_minidump_from_the_dump_disk(fbsd_guest, fbsd_target, tmp_path):
    m = _machine(fbsd_guest, fbsd_target)
    plan = DumpPlan(
        minidump=True, minidump_via="ddb_write", trigger="nmi", dump_disk=_dump_device(fbsd_target)
    )
    m.validate(plan)
    m.prepare(plan)
    entry = m.enter_ddb("nmi")
    assert entry.why == "NMI" and entry.pid is not None and entry.stopped_at
    ddb = entry.ddb
    regs = ddb.show_registers()
    assert regs["rip"] >= 0xFFFFFFFF80000000 and regs["cs"] == 0x20
    assert ddb.bt().frames
    procs = ddb.ps()
    assert any(p.pid == 0 for p in procs)
    # the NMI stopped the idle thread: with one CPU its process is the single row `[idle: cpu0]` on
    # `CPU 0` (12.1 prints the thread's name there), with more CPUs `(threaded) [idle]` + a row per CPU
    stopped = next(p for p in procs if p.pid == entry.pid)
    assert stopped.running_cpus and any(n.startswith("idle") for n in stopped.names), stopped
    assert any(t.tid == entry.tid for t in ddb.show_threads())
    assert "FreeBSD" in ddb.show_msgbuf()
    result = m.dump(plan)
    assert result.ok and result.kind == "mini" and result.dump_mb and result.dump_mb <= fbsd_target.memory_mib
    dump = m.retrieve(plan, tmp_path / "crash")
    assert (dump.kind, dump.method) == ("mini", "host")
    with reader.open_vmcore(dump.vmcore) as vm:
        assert vm.info["kind"] == "mini" and vm.info["arch"] == "amd64"


def test_alt_break_full_dump_via_ddb_write(fbsd_guest, fbsd_target, tmp_path):
    m = _machine(fbsd_guest, fbsd_target)
    if fbsd_guest.shell is None and m.kenv.get("debug.kdb.alt_break_to_debugger") != "1":
        pytest.skip(
            "bare kernel: pass --fbsd-kenv debug.kdb.alt_break_to_debugger=1 (GENERIC lacks the option)"
        )
    plan = DumpPlan(
        minidump=False, minidump_via="ddb_write", trigger="alt_break", dump_disk=_dump_device(fbsd_target)
    )
    m.prepare(plan)
    entry = m.enter_ddb("alt_break")
    assert entry.why == "Break to debugger"
    assert m.ddb.set_minidump(False) in (0, 1)
    result = m.dump(plan)
    assert result.ok and result.kind == "full" and result.chunks and all(c.ok for c in result.chunks)
    dump = m.retrieve(plan, tmp_path / "crash")
    assert dump.kind == "full"


def test_sysctl_route_continue_and_savecore_in_the_guest(fbsd_guest, fbsd_target):
    shell = fbsd_guest.shell
    if shell is None:
        pytest.skip("needs an image with a userland (a bare kernel has no shell)")
    if fbsd_target.root_image is not None:
        pytest.skip(
            "savecore into /var/crash needs an image with room for a vmcore; the single-user root image is "
            "an md root of a few MB (test_hil_matrix's sysctl cells cover the sysctl route on it)"
        )
    assert shell.run("uname -s", check=True).output.strip() == "FreeBSD"
    assert "ddb" in shell.sysctl("debug.kdb.available")
    m = _machine(fbsd_guest, fbsd_target)
    plan = DumpPlan(trigger="sysctl", dump_disk=_dump_device(fbsd_target), retrieval="host")
    m.prepare(plan)
    entry = m.enter_ddb("sysctl")
    assert entry.why == "sysctl debug.kdb.enter"
    assert m.dump(plan).ok
    m.ddb.continue_()
    shell.attach(120)  # the sysctl returns once the kernel runs again; our prompt comes back
    r = shell.run(f"savecore -v /var/crash {plan.dump_disk}", 600, check=True)
    n = int(shell.run("cat /var/crash/bounds", check=True).output.strip()) - 1
    info = parse_info_file(shell.run(f"cat /var/crash/info.{n}", check=True).output)
    assert info.get("Dump Status") == "good", r.output
    assert re.search(rf"\bvmcore\.{n}\b", shell.run("ls /var/crash", check=True).output)


def test_panic_flow_dump_held_then_host_retrieval(fbsd_guest, fbsd_target, tmp_path):
    """Kernels without ddb (release GENERIC) and with it (forced): panic, the kernel's own dump, key
    press, held at "Press a key on the console to reboot"; the dump disk then holds a good dump."""
    m = _machine(fbsd_guest, fbsd_target, needs_ddb=False)
    bare = fbsd_target.kernel is not None
    plan = DumpPlan(
        minidump=True,
        minidump_via="tunable" if bare else "sysctl",
        trigger="alt_break" if bare else "panic",
        dump_disk=_dump_device(fbsd_target),
    )
    m.prepare(plan)
    choice = m.select_flow(plan.trigger, force="panic")
    result = m.panic_dump(plan.trigger, choice=choice)
    assert result.ok and result.held and result.flow == "panic" and result.panic, result.notes
    dump = m.retrieve(plan, tmp_path / "crash")
    assert dump.kind == result.kind and dump.method == "host"
    with reader.open_vmcore(dump.vmcore) as vm:
        assert vm.info["arch"] == "amd64"

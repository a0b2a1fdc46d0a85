"""Ddb against replayed real ddb sessions (FreeBSD 12.1 under QEMU), and the dump-text parser on every
failure text the kernel sources print (quoted in the shared dump-format reference, §7.4-7.5)."""

from __future__ import annotations

import dataclasses

import pytest

from harness.freebsd.ddb import (
    Ddb,
    DdbError,
    DumpFailed,
    dump_deadline_seconds,
    parse_dump_output,
    parse_ps,
)
from harness.freebsd.replay import ALT_BREAK, Gate, RecordedTranscript
from tests.freebsd.conftest import load


def _in_ddb(replay, name, **kw):
    console, spawn = replay(name, **kw)
    if name in ("mini", "ada", "trial-waitnmi-1"):
        spawn.inject_nmi()
    elif name in ("full", "trial-altbreak-1"):
        console.send(ALT_BREAK)
    elif name in ("panic", "trial-panic-1"):
        console.expect({"prompt": r"mountroot> $"}, 10)
        console.sendline("")
    ddb = Ddb(console, memory_mib=512)
    ddb.wait_prompt(10)
    return ddb, console, spawn


def test_mini_session_end_to_end(replay):
    ddb, console, spawn = _in_ddb(replay, "mini")
    regs = ddb.show_registers()
    assert regs["rip"] == 0xFFFFFFFF80504666 and regs["rsp"] == 0xFFFFFE000EC9ABC0
    assert regs["cs"] == 0x20 and regs["rcx"] == 0 and regs["rflags"] == 0x246 and len(regs) == 24
    bt = ddb.bt()
    assert (bt.pid, bt.tid, bt.td) == (10, 100003, 0xFFFFF80001115000)
    assert [f.function for f in bt.frames] == [
        "acpi_cpu_c1",
        "acpi_cpu_idle",
        "cpu_idle_acpi",
        "cpu_idle",
        "sched_idletd",
        "fork_exit",
        "fork_trampoline",
    ]
    assert bt.frames[0].location == "acpi_cpu_c1+0x6" and bt.frames[0].frame == 0xFFFFFE000EC9ABC0
    procs = ddb.ps()
    assert [p.pid for p in procs][:4] == [15, 14, 13, 9] and len(procs) == 16
    idle = next(p for p in procs if p.cmd == "idle")
    assert idle.threaded and [(t.tid, t.state, t.cpu) for t in idle.threads] == [
        (100002, "Run", 0),
        (100003, "Run", 1),
    ]
    vnlru = next(p for p in procs if p.cmd == "vnlru")
    assert (vnlru.state, vnlru.wmesg, vnlru.wchan) == ("DL", "vlruwt", 0xFFFFF80001335530)
    assert ddb.x_gx("dumper") == 0xFFFFFFFF803265F0
    assert ddb.x("do_minidump", "lx") == [1]
    mini = ddb.dump()
    assert (mini.kind, mini.dump_mb, mini.physical_mb, mini.progress, mini.ok) == (
        "mini",
        42,
        500,
        [38, 76],
        True,
    )
    assert ddb.set_minidump(False) == 1
    assert ddb.x("do_minidump", "lx") == [0]
    full = ddb.dump()
    assert (full.kind, full.dump_mb, full.chunk_count, full.ok) == ("full", 511, 2, True)
    assert [(c.index, c.mb, c.pages, c.ok) for c in full.chunks] == [
        (0, 1, 159, True),
        (1, 511, 130775, True),
    ]
    assert full.chunks[1].countdown[:3] == [495, 479, 463] and full.chunks[1].countdown[-1] == 15
    msgbuf = ddb.show_msgbuf()
    assert msgbuf.startswith("---<<BOOT>>---\n") and "msgbufp" not in msgbuf
    assert msgbuf.rstrip().endswith("NMI/cpu1 ... going to debugger")
    assert spawn.finished and spawn.sent.startswith(b"set $lines 0\r")


def test_ada_minidump_progress_and_full_dump(replay):
    ddb, *_ = _in_ddb(replay, "ada")
    ddb.show_registers(), ddb.bt(), ddb.ps()
    assert ddb.x_gx("dumper") == 0xFFFFFFFF80299610
    ddb.x("do_minidump", "lx")
    r = ddb.dump()
    assert (r.dump_mb, r.progress) == (75, [22, 43, 64, 85])
    ddb.set_minidump(False)
    ddb.x("do_minidump", "lx")
    assert ddb.dump().chunks[1].pages == 130779


def test_panic_session_has_panic_text_in_ddb_output_without_failing(replay):
    ddb, console, _ = _in_ddb(replay, "panic")
    console.arm_failure("freebsd.panic", r"(?:^|[\r\n]|> )panic: ([^\r\n]*)")  # armed by an outer layer
    ddb.show_registers()
    assert [f.function for f in ddb.bt().frames][:2] == ["kdb_enter", "vpanic"]
    ddb.ps(), ddb.x_gx("dumper"), ddb.x("do_minidump", "lx")
    assert ddb.dump().ok
    assert "mountroot> panic: mountroot: unable to (re-)mount root." in ddb.show_msgbuf()
    assert console.armed == {"freebsd.panic": r"(?:^|[\r\n]|> )panic: ([^\r\n]*)"}  # restored


def test_early_ddb_has_no_dumper_and_continue_leaves(replay):
    console, _ = replay("trial-bootd-1")
    ddb = Ddb(console)
    ddb.wait_prompt(10)
    assert [f.function for f in ddb.bt().frames] == ["kdb_enter", "hammer_time", "btext"]
    assert ddb.x_gx("dumper") == 0  # no dump device yet this early
    ddb.continue_()
    console.expect({"boot": r"---<<BOOT>>---"}, 10)
    with pytest.raises(DdbError, match="session was left"):
        ddb.command("bt")


def test_a_dump_that_never_finishes_fails_with_what_was_parsed(replay):
    mini = load("mini")
    cut = mini.serial.index(b"..76%")  # the recording stops in the middle of the minidump
    truncated = RecordedTranscript(
        "mini-truncated", mini.serial[:cut], [g for g in mini.gates if g.offset < cut], mini.timeline
    )
    console, spawn = replay(truncated)
    spawn.inject_nmi()
    ddb = Ddb(console)
    ddb.wait_prompt(10)
    ddb.show_registers(), ddb.bt(), ddb.ps(), ddb.x_gx("dumper"), ddb.x("do_minidump", "lx")
    with pytest.raises(DumpFailed) as info:
        ddb.dump(deadline=1.0)
    r = info.value.result
    assert (r.kind, r.dump_mb, r.progress, r.complete) == ("mini", 42, [38], False)
    assert (
        "did not return to db> within 1 s" in str(info.value)
        and "Dumping 42 out of 500 MB" in info.value.tail
    )


@pytest.mark.parametrize(
    ("text", "error", "code", "complete"),
    [
        ("Cannot dump: no dump device specified.\n", "Cannot dump: no dump device specified.", None, False),
        (
            "Cannot dump. Device not defined or unavailable.\n",
            "Cannot dump. Device not defined or unavailable.",
            None,
            False,
        ),
        (
            "Cannot dump: debugger got invoked while dumping.\n",
            "Cannot dump: debugger got invoked while dumping.",
            None,
            False,
        ),
        ("Cannot dump: unknown error (error=5).\n", "Cannot dump: unknown error (error=5).", 5, False),
        (
            "Dumping 511 MB (2 chunks)\n  chunk 0: 1MB (159 pages) ... ok\n"
            "\nDump failed. Partition too small.\n",
            "Dump failed. Partition too small.",
            None,
            False,
        ),
        (
            "Dumping 42 out of 500 MB:\n"
            "Dump failed. Partition too small (about 44MB were needed this time).\n",
            "Dump failed. Partition too small (about 44MB were needed this time).",
            None,
            False,
        ),
        (
            "Dumping 42 out of 500 MB:..38%\n** DUMP FAILED (ERROR 6) **\n",
            "** DUMP FAILED (ERROR 6) **",
            6,
            False,
        ),
        ("Dumping 42 out of 500 MB:..38% (CTRL-C to abort) \nDump aborted\n", "Dump aborted", None, False),
        (
            "Dumping 42 out of 500 MB:Dump map grown while dumping. Dump failed.\n",
            "Dump map grown while dumping. Dump failed.",
            None,
            False,
        ),
        (
            "Compressed dump failed to fit in device boundaries.\n",
            "Compressed dump failed to fit in device boundaries.",
            None,
            False,
        ),
        (
            'textdump_pending set.\nrun "textdump unset" first or "textdump dump" for a textdump.\n',
            "textdump_pending set.",
            None,
            False,
        ),
        (
            "Dumping 511 MB (2 chunks)\n  chunk 0: 1MB (159 pages) ... ok\n"
            "  chunk 1: 511MB (130775 pages) 495 ... fail\n",
            "chunk 1: 511MB (130775 pages) 495 ... fail",
            None,
            False,
        ),
        (
            "Attempt to write outside dump device boundaries.\n** DUMP FAILED (ERROR 6) **\n",
            "** DUMP FAILED (ERROR 6) **",
            6,
            False,
        ),
    ],
)
def test_every_dump_failure_text(text, error, code, complete):
    r = parse_dump_output(text)
    assert (r.error, r.error_code, r.complete, r.ok) == (error, code, complete, False)


def test_retry_is_counted_and_a_retried_dump_can_complete():
    r = parse_dump_output(
        "Dumping 42 out of 500 MB:..12%\nDump map grown while dumping. Retrying...\n"
        "Dumping 43 out of 500 MB:..11%..93%\nDump complete\n"
    )
    assert r.retries == 1 and r.ok and r.complete


def test_small_minidump_may_print_no_percentages():
    r = parse_dump_output("Dumping 9 out of 2027 MB:\r\nDump complete\r\n")
    assert (r.kind, r.dump_mb, r.progress, r.ok) == ("mini", 9, [], True)


def test_ps_refuses_lines_it_cannot_read():
    with pytest.raises(DdbError, match="cannot parse line"):
        parse_ps("  pid  ppid  pgrp   uid  state   wmesg   wchan               cmd\n  garbage here\n")


def test_dump_deadline_is_generous_and_bounded():
    assert 200 < dump_deadline_seconds(512) < 400  # the recorded full dump of 512 MiB took 2.6 s
    assert dump_deadline_seconds(8192) < 3600
    assert dataclasses.is_dataclass(parse_dump_output(""))


def test_ps_user_processes_zombies_and_kernel_threads():
    # Rows in ddb's ps layout for what the 12.1 recordings (no userland) cannot show: user processes
    # print their name without brackets, a zombie has no wait channel.
    text = (
        "  pid  ppid  pgrp   uid  state   wmesg   wchan               cmd\n"
        " 1084  1083  1084     0  Ss+     ttyin   0xfffff800035a68a8  sh\n"
        " 1090  1084  1084     0  Z+                                  defunct\n"
        "  812     1   812     0  Ss      select  0xfffff80003512740  sshd\n"
        "   11     0     0     0  WL      (threaded)                  [intr]\n"
        "100005                   I                                   [swi5: fast taskq]\n"
        "100002                   Run     CPU 0                       [idle: cpu0]\n"
    )
    procs = parse_ps(text)
    assert [(p.pid, p.cmd, p.state, p.wmesg, p.wchan) for p in procs] == [
        (1084, "sh", "Ss+", "ttyin", 0xFFFFF800035A68A8),
        (1090, "defunct", "Z+", None, None),
        (812, "sshd", "Ss", "select", 0xFFFFF80003512740),
        (11, "intr", "WL", None, None),
    ]
    assert procs[3].threaded and [(t.tid, t.state, t.cpu, t.name) for t in procs[3].threads] == [
        (100005, "I", None, "swi5: fast taskq"),
        (100002, "Run", 0, "idle: cpu0"),
    ]


def _panic_then(continuation: bytes) -> RecordedTranscript:
    """The real panic recording up to its first db> prompt, then a synthetic continuation: what
    kern_reboot()/doadump() print after `c` (strings from kern_shutdown.c and the recorded 12.1 dump
    line); no recording of this path exists."""
    real = load("panic")
    first_prompt = real.serial.index(b"db> ", real.serial.index(b"Stopped at")) + 4
    typed = b"set $lines 0\r\ndb> "
    serial = real.serial[:first_prompt] + typed + b"c\r\n" + continuation
    gates = [g for g in real.gates if g.offset < first_prompt] + [
        Gate(first_prompt, "line", b"set $lines 0", "db>"),
        Gate(first_prompt + len(typed), "line", b"c", "db>"),
    ]
    return RecordedTranscript("panic-continue", serial, gates)


def test_continue_after_panic_parses_the_automatic_dump(replay):
    t = _panic_then(
        b"Uptime: 3s\r\nDumping 42 out of 500 MB:..38%..76%\r\nDump complete\r\n"
        b"Automatic reboot in 15 seconds - press a key on the console to abort\r\n"
    )
    console, _ = replay(t)
    console.expect({"prompt": r"mountroot> $"}, 10)
    console.sendline("")
    ddb = Ddb(console)
    ddb.wait_prompt(10)
    result = ddb.continue_after_panic(10)
    assert (result.kind, result.dump_mb, result.progress, result.ok) == ("mini", 42, [38, 76], True)
    assert not ddb.active


def test_continue_after_panic_without_a_dump_device_fails(replay):
    t = _panic_then(b"Uptime: 3s\r\nAutomatic reboot in 15 seconds - press a key on the console to abort\r\n")
    console, _ = replay(t)
    console.expect({"prompt": r"mountroot> $"}, 10)
    console.sendline("")
    ddb = Ddb(console)
    ddb.wait_prompt(10)
    with pytest.raises(DumpFailed, match="no dump was written before the reboot"):
        ddb.continue_after_panic(10)


# ----------------------------------------------------------------------------- real 12.1 `ps`/`show threads`
PS_EVIDENCE = load.__globals__["TRANSCRIPTS"].parent / "freebsd-12.1-ddb-ps" / "ddb-ps-12.1.txt"


def _ps_session(section: int) -> RecordedTranscript:
    """Section `section` (1: one vCPU, 2: two) of the real 12.1 ddb session, byte for byte, as a replay:
    the NMI opens it, every line typed at ``db> `` is a gate."""
    from harness.freebsd.replay import _derive_gates

    raw = PS_EVIDENCE.read_bytes()
    parts = raw.split(b"\n# ===== section ")
    body = parts[section]
    serial = body[body.index(b"\n") + 1 :].rstrip(b"\n")  # the file's own newline ends each section
    assert serial.startswith(b"NMI ISA ") and serial.endswith(b"db> ")
    gates = _derive_gates(serial, [(0, "monitor: (qemu) nmi")])
    return RecordedTranscript(f"ddb-ps-12.1-{section}", serial, gates)


def _replayed_ps(replay, section: int):
    console, spawn = replay(_ps_session(section))
    spawn.inject_nmi()
    ddb = Ddb(console, memory_mib=512)
    ddb.wait_prompt(10)
    assert ddb.show_registers()["rip"] == 0xFFFFFFFF811E7306
    assert ddb.x_gx("KPML4phys") == 0x245A000 and ddb.x("hz", "lx") == [0x64]
    assert ddb.dump().ok
    procs, threads = ddb.ps(), ddb.show_threads()
    assert spawn.finished
    return procs, threads


def test_real_12_1_ps_one_vcpu(replay):
    """One CPU: the idle process is one row named after its thread, ``[idle: cpu0]``, running on CPU 0;
    no row is named "idle"."""
    procs, threads = _replayed_ps(replay, 1)
    pids = [20, 19, 18, 17, 16, 15, 9, 8, 7, 6, 5, 4, 14, 3, 2, 13, 12, 11, 1, 10, 0]
    assert [p.pid for p in procs] == pids
    idle = next(p for p in procs if p.pid == 11)
    assert (idle.cmd, idle.state, idle.threaded, idle.threads) == ("idle: cpu0", "RL", False, [])
    assert idle.cpu == 0
    assert idle.running_cpus == [0] and not any(p.cmd == "idle" for p in procs)
    assert [p.pid for p in procs if p.running_cpus] == [11]
    kernel = next(p for p in procs if p.pid == 0)
    assert (kernel.cmd, kernel.state, kernel.threaded) == ("kernel", "DLs", True)
    swapper = kernel.threads[0]
    assert (swapper.tid, swapper.wmesg, swapper.name) == (100000, "swapin", "swapper")
    assert kernel.threads[0].wchan == 0xFFFFFFFF81E95468 and len(kernel.threads) == 15
    intr = next(p for p in procs if p.pid == 12)
    assert intr.state == "WL" and len(intr.threads) == 13
    assert all((t.state, t.wmesg, t.wchan, t.cpu) == ("I", None, None, None) for t in intr.threads)
    assert "irq256: virtio_pci0" in intr.names
    pagedaemon = next(p for p in procs if p.pid == 7)
    assert [(t.tid, t.wmesg, t.name) for t in pagedaemon.threads] == [
        (100041, "psleep", "dom0"),
        (100046, "launds", "laundry: dom0"),
        (100047, "umarcl", "uma"),
    ]
    soaiod = procs[0]
    assert (soaiod.cmd, soaiod.wmesg, soaiod.threaded) == ("soaiod4", "-", False)
    assert soaiod.wchan == 0xFFFFFFFF81EF3B9C
    # show threads: the thread ddb runs on (pid 11 tid 100003) by its struct thread address and frame
    assert len(threads) == 53
    cur = next(t for t in threads if t.tid == 100003)
    assert (cur.td, cur.stack) == (0xFFFFF80003123000, 0xFFFFFE0000402000)
    assert [(f.function, f.location, f.frame) for f in cur.frames] == [
        ("acpi_cpu_c1", "acpi_cpu_c1+0x6", 0xFFFFFE0000405BC0)
    ]
    swi = next(t for t in threads if t.tid == 100006)
    assert [(f.function, f.location, f.frame) for f in swi.frames] == [
        ("fork_trampoline", "fork_trampoline", None)
    ]
    assert next(t for t in threads if t.tid == 100000).td == 0xFFFFFFFF81E959A0


def test_real_12_1_ps_two_vcpus(replay):
    """Two CPUs: ``(threaded) [idle]`` with one ``Run CPU n`` row per idle thread; the NMI's CPU 0
    thread shows a two-frame trace with a trap line between."""
    procs, threads = _replayed_ps(replay, 2)
    idle = next(p for p in procs if p.pid == 11)
    assert (idle.cmd, idle.state, idle.threaded, idle.cpu) == ("idle", "RL", True, None)
    assert [(t.tid, t.state, t.cpu, t.name) for t in idle.threads] == [
        (100003, "Run", 0, "idle: cpu0"),
        (100004, "Run", 1, "idle: cpu1"),
    ]
    assert idle.running_cpus == [0, 1] and idle.names == ["idle", "idle: cpu0", "idle: cpu1"]
    assert len(procs) == 22 and [p.pid for p in procs if p.running_cpus] == [11]
    assert next(p for p in procs if p.pid == 4).cmd == "crypto returns 1"
    nmi = next(t for t in threads if t.tid == 100003)
    assert [f.function for f in nmi.frames] == ["nmi_call_kdb_smp", "nmi_calltrap"]
    cur = next(t for t in threads if t.tid == 100004)
    assert cur.td == 0xFFFFF8000312E740 and cur.frames[0].location == "acpi_cpu_c1+0x6"
    assert len(threads) == 59


def test_show_threads_refuses_lines_it_cannot_read():
    from harness.freebsd.ddb import parse_show_threads

    with pytest.raises(DdbError, match="cannot parse line"):
        parse_show_threads("  100003 (0xfffff80003123000) (stack 0xfffffe0000402000)  ok\nsomething else\n")

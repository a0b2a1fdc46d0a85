"""FreeBSDMachine wiring on a replayed bare-kernel run (the recorded mini session) with a raw dump disk
laid out as the kernel writes it: wait -> NMI -> ddb -> dump -> host retrieval."""

from __future__ import annotations

import pytest

from harness.freebsd.dumps import DumpPlan, DumpPlanError
from harness.freebsd.machine import FreeBSDMachine
from harness.freebsd.stages import FreeBSDStageError, Stage
from tests.dumpwriter import containers as cw
from tests.dumpwriter.minidump import Mapping, write_amd64_minidump


class ReplayGuest:
    """Stands in for harness.vm.guest.Guest around a replayed console: NMI goes to the replay, pause()
    is recorded (a real Guest pauses the domain before the host reads the dump disk)."""

    def __init__(self, console, spawn):
        self.console, self.spawn, self.paused = console, spawn, 0
        self.ssh_port = None

    def inject_nmi(self):
        self.spawn.inject_nmi()

    def send_break(self):
        self.spawn.send_break()

    def pause(self):
        self.paused += 1


def test_bare_kernel_chain(replay, tmp_path):
    console, spawn = replay("mini")
    payload = tmp_path / "minidump"
    write_amd64_minidump(payload, {0x200000: b"x"}, [Mapping(0xFFFFFE0000000000, 0x200000)])
    disk = tmp_path / "dump.raw"
    cw.write_device_image(disk, payload, media_size=64 << 20)
    guest = ReplayGuest(console, spawn)
    m = FreeBSDMachine(guest, memory_mib=512, dump_disk_image=disk)
    plan = DumpPlan(minidump=True, minidump_via="tunable", trigger="nmi")
    with pytest.raises(DumpPlanError, match="loader tunable needs the kernel environment"):
        m.validate(plan)
    m.validate(plan, can_set_kenv=True)
    assert m.wait_for(Stage.ROOT_WAIT, deadline=10).value == "/dev/nosuchdisk"
    with pytest.raises(FreeBSDStageError, match="not in ddb"):
        m.ddb  # noqa: B018 - the property raises
    entry = m.enter_ddb("nmi", deadline=10)
    assert entry.why == "NMI" and entry.ddb is m.ddb
    # the recording looked around before dumping; replay the same commands
    m.ddb.show_registers(), m.ddb.bt(), m.ddb.ps(), m.ddb.x_gx("dumper"), m.ddb.x("do_minidump", "lx")
    result = m.dump(plan)
    assert (result.kind, result.dump_mb) == ("mini", 42)
    dump = m.retrieve(plan, tmp_path / "crash")
    assert guest.paused == 1 and dump.kind == "mini" and dump.vmcore.read_bytes() == payload.read_bytes()


def test_savecore_plan_needs_ssh(replay, tmp_path):
    console, spawn = replay("trial-waitnmi-1")
    m = FreeBSDMachine(ReplayGuest(console, spawn), memory_mib=512, dump_disk_image=None)
    with pytest.raises(DumpPlanError, match="needs SSH to the guest"):
        m.validate(DumpPlan(minidump_via="ddb_write", retrieval="savecore"))
    with pytest.raises(FreeBSDStageError, match="host retrieval needs dump_disk_image"):
        m.validate(DumpPlan(minidump_via="ddb_write"))


def test_wait_for_answers_the_loader_countdown(tmp_path):
    """A stand-in loader (local sh) that waits for Enter at its countdown before 'booting' to login."""
    import pexpect

    from harness.vm.console import Console

    script = (
        'echo "Consoles: serial port"; '
        'echo "Autoboot in 10 seconds, hit [Enter] to boot or any other key to stop     "; '
        'read answer; echo "---<<BOOT>>---"; echo "FreeBSD/amd64 (x) (ttyu0)"; printf "\\nlogin: "; sleep 5'
    )
    console = Console(pexpect.spawn("/bin/sh", ["-c", script]), name="fake-loader")
    try:
        m = FreeBSDMachine(ReplayGuest(console, None), memory_mib=512)
        assert m.wait_for(Stage.LOGIN, deadline=20).stage == Stage.LOGIN
    finally:
        console.close()

"""Verification on a real libvirt guest (the tiny Linux stand-in): detection and reporting end to end.

The guest is paused, its memory is taken twice — a libvirt memory-only ELF core
(``virDomainCoreDumpWithFormat`` + ``VIR_DUMP_MEMORY_ONLY``, read through `QemuElfCore`) as the "dump"
and a QMP ``pmemsave`` live image — and must verify clean. Then one page is changed in between (through
QEMU's gdbstub, physical mode) and the verification must name exactly that page and byte.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ -> `linux_guest`

from gdbstub import GdbStub  # noqa: E402
from linux_guest.builder import ensure_test_guest  # noqa: E402
from linux_guest.session import linux_spec, wait_ready  # noqa: E402

from harness.verify import LiveMemory, verify_dump  # noqa: E402
from harness.verify.elfcore import QemuElfCore  # noqa: E402

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def paused_linux_guest(tmp_path_factory):
    from harness.vm.guest import Guest
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect

    try:
        connect().close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd is not reachable: {str(exc).splitlines()[0]}")
    work = tmp_path_factory.mktemp("verify-linux")
    work.chmod(0o777)  # QEMU writes the core and the images here
    with Guest(linux_spec(ensure_test_guest(), memory_mib=256), work) as guest:
        wait_ready(guest)
        guest.pause()
        yield guest, work


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_memory_only_core_verifies_against_live_image_and_one_changed_page_is_found(paused_linux_guest):
    import libvirt

    guest, work = paused_linux_guest
    core_path = work / "guest.core"
    guest.domain.coreDumpWithFormat(
        str(core_path), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY
    )
    live1 = guest.memory_image(work / "live-1.raw")
    ram = [(pa, size) for pa, size, _off in live1.ranges]
    with QemuElfCore(core_path, ram=ram) as core:
        assert core.info["format"] == "qemu-elf-core" and core.info["kind"] == "full"
        clean = verify_dump(core, LiveMemory.from_image(live1), walk_page_tables=False)
        assert clean.passed, clean.summary()
        assert clean.pages_compared == sum(size for _pa, size in ram) // 4096
        assert clean.pages_identical == clean.pages_compared

        # change 4 bytes of one page while the guest stays stopped
        pa, offset = 0x0800_0000, 0x123
        port = _free_port()
        guest.hmp(f"gdbserver tcp:127.0.0.1:{port}")
        stub = GdbStub("127.0.0.1", port)
        try:
            old = stub.read_phys(pa + offset, 4)
            stub.write_phys(pa + offset, bytes(b ^ 0xFF for b in old))
        finally:
            stub.close()
            guest.hmp("gdbserver none")
        live2 = guest.memory_image(work / "live-2.raw")
        report = verify_dump(core, LiveMemory.from_image(live2), walk_page_tables=False)
    assert not report.passed
    assert report.pages_differing_unexplained == 1
    (d,) = report.differences
    assert d.address == pa and d.first_differing_offset == offset and d.differing_bytes == 4
    assert d.kind == "unattributed"
    assert f"{pa:#014x}" in report.summary() and "FAILED" in report.summary()
    listed = json.loads(report.to_json())["differences"]
    assert listed == [d.to_dict()] and listed[0]["address"] == hex(pa)

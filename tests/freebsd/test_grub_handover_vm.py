"""A kernel that never speaks after GRUB's hand-over, on a real QEMU guest (marker ``vm``).

Debian 12's unpatched GRUB 2.06 ``kfreebsd`` triple-faults when it jumps to a 64-bit kernel (see the
transcripts README and images/grub_iso.py), so an ISO built with ``patch=False`` is a real "GRUB handed
over and the kernel printed nothing" case: the guest resets, and with ``on_reboot="destroy"`` the
console closes. The stage wait must say exactly that, with the console tail, instead of a bare timeout.
"""

from __future__ import annotations

import pytest

from harness.freebsd.stages import Stage, StageConsoleClosed, StageTimeout, wait_for_stage

pytestmark = pytest.mark.vm


def test_silent_kernel_after_grub_on_a_real_guest(tmp_path):
    from harness.vm.guest import ExtraDisk, Guest, GuestSpec, IsoBoot
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri
    from images.grub_iso import build_kernel_iso
    from tests.images.images_tiny_kernel import build_tiny_kernel

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")
    kernel = build_tiny_kernel(tmp_path)  # would print a line on COM1 if it ever ran
    iso = build_kernel_iso(kernel, {"dumpdev": "/dev/vtbd0"}, tmp_path / "k.iso", patch=False)
    iso.chmod(0o644)
    dump = tmp_path / "dump.raw"
    dump.write_bytes(bytes(1 << 20))
    spec = GuestSpec(memory_mib=256, vcpus=1, accel="tcg", boot=IsoBoot(iso), disks=(ExtraDisk(path=dump),),
                     on_reboot="destroy", name_prefix="fbsd-hil-silent")
    with Guest(spec, tmp_path) as guest, pytest.raises((StageConsoleClosed, StageTimeout)) as exc:
        wait_for_stage(guest.console, [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], 120, guest=guest)
    msg = str(exc.value)
    assert msg.startswith("GRUB handed over but the kernel printed nothing"), msg
    assert "hw.uart.console=io:1016,br:115200" in msg and "GRUB: booting" in exc.value.tail
    assert exc.value.last_stage == Stage.GRUB

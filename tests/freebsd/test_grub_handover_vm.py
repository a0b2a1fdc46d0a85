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


def _libvirt_or_skip() -> None:
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri

    try:
        connect(default_uri()).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd not reachable (`fbsd-hil doctor --fix` starts it): {exc}")


def _boot(tmp_path, boot, targets, deadline=120):
    """Boot `boot` as `repro` boots a bare kernel (QEMU logs triple faults, SeaBIOS on COM1); returns the
    stage event (or raises what wait_for_stage raised) and the seconds it took."""
    import time

    from harness.freebsd.handover import HANDOVER_QEMU_ARGS
    from harness.vm.guest import ExtraDisk, Guest, GuestSpec

    dump = tmp_path / "dump.raw"
    dump.write_bytes(bytes(1 << 20))
    spec = GuestSpec(memory_mib=128, vcpus=1, accel="tcg", boot=boot, disks=(ExtraDisk(path=dump),),
                     on_reboot="destroy", name_prefix="fbsd-hil-handover", extra_qemu_args=HANDOVER_QEMU_ARGS)
    t = time.monotonic()
    with Guest(spec, tmp_path) as guest:
        return wait_for_stage(guest.console, targets, deadline, guest=guest), time.monotonic() - t


@pytest.mark.parametrize("current", [False, True], ids=["12.x", "current"])
def test_mock_kernels_of_both_kinds_boot_through_the_same_fixed_grub(tmp_path, current):
    """The default fixes: a 12.x-like and a 13+-like (current) kernel both reach the mountroot wait."""
    from harness.vm.guest import IsoBoot
    from images.grub_iso import build_kernel_iso
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    _libvirt_or_skip()
    kernel = build_mock_freebsd_kernel(current_kernel=current)
    iso = build_kernel_iso(kernel, {}, tmp_path / "k.iso", cache=tmp_path / "cache")
    iso.chmod(0o644)
    event, _ = _boot(tmp_path, IsoBoot(iso), [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT])
    assert event.stage == Stage.ROOT_WAIT and event.value == "/dev/nosuchdisk"


def test_current_kernel_without_the_type_fix_fails_with_the_cause(tmp_path):
    """The same current kernel through GRUB modules with only the relocator fixed ("elf64 kernel"): it
    triple-faults without a word, and the error says why, within seconds."""
    from harness.vm.guest import IsoBoot
    from images.grub_iso import build_kernel_iso
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    _libvirt_or_skip()
    kernel = build_mock_freebsd_kernel(current_kernel=True)
    iso = build_kernel_iso(kernel, {}, tmp_path / "k.iso", cache=tmp_path / "cache", fixes=["relocator"])
    iso.chmod(0o644)
    with pytest.raises(StageConsoleClosed) as exc:
        _boot(tmp_path, IsoBoot(iso), [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], deadline=600)
    first = str(exc.value).splitlines()[0]
    assert first.startswith("GRUB handed over but the kernel printed nothing before the console closed")
    assert "QEMU logged a triple fault (CPU reset)" in first and "s after the hand-over" in first
    assert 'only under the module type "elf kernel"' in first and '"elf64 kernel"' in first
    assert "__FreeBSD_version 1500000" in str(exc.value)
    # 12.x-like kernels accept GRUB's "elf64 kernel": the same modules boot them
    old = build_mock_freebsd_kernel()
    iso12 = build_kernel_iso(old, {}, tmp_path / "k12.iso", cache=tmp_path / "cache", fixes=["relocator"])
    iso12.chmod(0o644)
    (tmp_path / "again").mkdir()
    event, _ = _boot(tmp_path / "again", IsoBoot(iso12), [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT])
    assert event.stage == Stage.ROOT_WAIT


def test_a_kernel_grub_cannot_load_fails_in_seconds(tmp_path):
    """1 MiB of random bytes as the kernel: GRUB prints "error: ..." and would wait ~15 s at "Press any
    key" before "Failed to boot ..."; the wait must end at the error line, far inside its deadline."""
    import os

    from harness.freebsd.stages import BootFailed
    from harness.vm.guest import IsoBoot
    from images.grub_iso import build_kernel_iso

    _libvirt_or_skip()
    garbage = tmp_path / "garbage-kernel"
    garbage.write_bytes(os.urandom(1 << 20))
    iso = build_kernel_iso(garbage, {}, tmp_path / "g.iso", cache=tmp_path / "cache")
    iso.chmod(0o644)
    import time

    t = time.monotonic()
    with pytest.raises(BootFailed) as exc:
        _boot(tmp_path, IsoBoot(iso), [Stage.ROOT_WAIT, Stage.MOUNTROOT_PROMPT], deadline=600)
    assert time.monotonic() - t < 60
    assert str(exc.value).startswith("GRUB could not boot the kernel") and "error: " in str(exc.value)


def test_an_image_that_is_not_a_disk_fails_in_seconds(tmp_path):
    """A raw file that is no disk image: SeaBIOS says "Boot failed: not a bootable disk" on COM1."""
    import os
    import time

    from harness.freebsd.stages import BootFailed
    from harness.vm.guest import DiskImageBoot

    _libvirt_or_skip()
    junk = tmp_path / "not-a-disk.img"
    junk.write_bytes(os.urandom(1 << 20))
    junk.chmod(0o644)
    t = time.monotonic()
    with pytest.raises(BootFailed) as exc:
        _boot(tmp_path, DiskImageBoot(image=junk, format="raw"), [Stage.LOGIN], deadline=600)
    assert time.monotonic() - t < 60
    assert "SeaBIOS" in str(exc.value) and "not a bootable disk" in str(exc.value)


def test_preparing_an_image_that_is_not_a_disk_fails_in_seconds(tmp_path):
    """`images.prepare` (what `repro --image` runs first) boots the image to log in: a file that is no
    bootable disk must end there at SeaBIOS's verdict, not after the 1200 s boot timeout."""
    import os
    import time

    import images
    from images.errors import PreparationError

    _libvirt_or_skip()
    junk = tmp_path / "not-a-disk.img"
    junk.write_bytes(os.urandom(1 << 20))
    junk.chmod(0o644)
    t = time.monotonic()
    with pytest.raises(PreparationError) as exc:
        images.prepare(junk, cache=tmp_path / "cache", memory_mib=128, vcpus=1, accel="tcg", progress=False)
    assert time.monotonic() - t < 60
    assert "SeaBIOS" in str(exc.value) and "not a bootable disk" in str(exc.value)

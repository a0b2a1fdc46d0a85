"""Preparation on a real FreeBSD guest (marker `hil`): prepare once, boot an overlay of the result,
and check every setting the harness relies on, over the serial console and over SSH with the
recorded (pinned) host key."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from images.preparation import prepare


@pytest.fixture(scope="module")
def prepared(request):
    # The plugin's target resolves --fbsd-release once per session (cache, download, --fbsd-offline).
    target = request.getfixturevalue("fbsd_target")
    if target.image is None:
        pytest.skip("image preparation needs --fbsd-release X.Y or --fbsd-image PATH (not a bare kernel)")
    accel = request.config.getoption("--accel")
    uri = request.config.getoption("--libvirt-uri")
    return prepare(Path(target.image), accel=accel, uri=uri, progress=False)


@pytest.mark.hil
def test_prepared_guest_has_serial_dumpdev_kdb_breaks_savecore_no_ddb_scripts_and_pinned_ssh(
    prepared, request, tmp_path
):
    from harness.freebsd.session import ConsoleShell
    from harness.util.deadline import Deadline
    from harness.vm.guest import DiskImageBoot, ExtraDisk, Guest, GuestSpec, UserNetwork
    from harness.vm.ssh import HostKeyMismatch, SshError, SshSession

    assert stat.S_IMODE(prepared.image.stat().st_mode) == 0o444
    assert prepared.host_key.startswith("ssh-ed25519 ")
    dump = tmp_path / "dump.raw"
    dump.write_bytes(b"")
    os.truncate(dump, 256 << 20)
    spec = GuestSpec(
        memory_mib=1024, vcpus=2, accel=request.config.getoption("--accel"),
        boot=DiskImageBoot(image=prepared.image, format="qcow2", bus=prepared.disk_bus),
        disks=(ExtraDisk(path=dump, format="raw", bus=prepared.disk_bus),),
        network=UserNetwork(), uri=request.config.getoption("--libvirt-uri"),
    )
    with Guest(spec, tmp_path) as guest:
        shell = ConsoleShell(guest.console)
        shell.login(Deadline(900, "boot prepared image to login"))
        assert shell.run("kenv dumpdev").output.strip() == prepared.dump_device
        assert shell.sysctl("debug.kdb.break_to_debugger") == "1"
        assert shell.sysctl("debug.kdb.alt_break_to_debugger") == "1"
        assert prepared.dump_device.removeprefix("/dev/") in shell.run("dumpon -l").output
        assert shell.run("sysrc -n savecore_enable").output.strip() == "YES"
        assert shell.run("sysrc -n ddb_enable").output.strip() == "NO"
        ddb_conf = shell.run("grep -v '^#' /etc/ddb.conf | grep -c script").output.strip()
        assert ddb_conf == "0"

        deadline = time.monotonic() + 120
        while True:
            try:
                with SshSession("127.0.0.1", guest.ssh_port, key=prepared.ssh_private_key,
                                pinned_host_key=prepared.host_key) as ssh:
                    assert ssh.run("id -u", check=True).output.strip() == "0"
                break
            except HostKeyMismatch:
                raise
            except SshError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)

        other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFh0aGlzLWlzLW5vdC10aGUtZ3Vlc3Qta2V5LXNvcnJ5"
        with pytest.raises(HostKeyMismatch):
            SshSession("127.0.0.1", guest.ssh_port, key=prepared.ssh_private_key,
                       pinned_host_key=other).connect()


@pytest.mark.hil
def test_bare_kernel_iso_boots_a_real_freebsd_kernel_to_the_root_wait(request, tmp_path):
    """`--fbsd-kernel PATH`: the GRUB ISO (patched relocator) hands over to a real FreeBSD kernel,
    which comes up on the serial console with our kenv and waits for the root device we named."""
    from harness.freebsd.stages import Stage, wait_for_stage
    from harness.util.deadline import Deadline
    from harness.vm.guest import ExtraDisk, Guest, GuestSpec, IsoBoot
    from images.grub_iso import build_kernel_iso

    kernel = request.config.getoption("--fbsd-kernel")
    if not kernel:
        pytest.skip("needs --fbsd-kernel PATH (a FreeBSD amd64 kernel file)")
    kenv = ["dumpdev=/dev/vtbd0", *request.config.getoption("--fbsd-kenv")]
    iso = build_kernel_iso(Path(kernel), kenv, tmp_path / "kernel.iso")
    iso.chmod(0o644)
    dump = tmp_path / "dump.raw"
    dump.write_bytes(b"")
    os.truncate(dump, 1 << 30)
    spec = GuestSpec(memory_mib=512, vcpus=2, accel=request.config.getoption("--accel"), boot=IsoBoot(iso),
                     disks=(ExtraDisk(path=dump),), uri=request.config.getoption("--libvirt-uri"),
                     on_reboot="destroy")
    with Guest(spec, tmp_path) as guest:
        wait_for_stage(guest.console, [Stage.KERNEL], Deadline(120, "GRUB hands over to the kernel"))
        event = wait_for_stage(guest.console, [Stage.ROOT_WAIT], Deadline(600, "kernel waits for root"))
        assert "nosuchdisk" in (event.value or ""), event.text

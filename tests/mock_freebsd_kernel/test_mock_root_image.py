"""`fbsd-hil repro --kernel K --root-image IMG` end to end on the MockFreeBSDKernel (a STAND-IN, NOT FreeBSD).

The real chain: a GRUB ISO with the root image as a ``type=mfs_root`` module and ``-s`` -> libvirt + QEMU
TCG -> the single-user stage (init's "Enter full pathname of shell ...") -> our marker-wrapped shell
session on the console (``mount -u -o rw /``, ``dumpon``, ``sysctl``) -> the shell-driven triggers ->
the dump on the raw dump disk -> host extraction and verification. The mock's shell is a line
interpreter imitating only what these steps need (``src/mock_sh.h``); the real kernel's dialogue is
replayed in tests/freebsd/test_single_user.py. The root images are real UFS2 images made by Debian's
makefs.
"""

from __future__ import annotations

import pytest
from mock_runs import assert_passed as _passed
from mock_runs import libvirt_or_skip as _libvirt_or_skip
from mock_runs import repro_with_root_image as _repro
from mock_runs import sha256_of as _sha

pytestmark = pytest.mark.vm


def test_sysctl_trigger_from_the_single_user_shell(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    before = _sha(root_image)
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "sysctl")
    _passed(rc, report, stderr, "mini")
    assert "Enter full pathname of shell or RETURN for /bin/sh: " in console
    assert "mount -u -o rw /" in console and "kernel dumps on /dev/vtbd0" in console
    assert "KDB: enter: sysctl debug.kdb.enter" in console
    assert _sha(root_image) == before, "the user's root image must never be written"


def test_panic_trigger_from_the_single_user_shell(mock_kernel, root_image, tmp_path):
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "panic")
    _passed(rc, report, stderr, "mini")
    assert "sysctl debug.kdb.panic=1" in console and "panic: kdb_sysctl_panic" in console


def test_full_dump_selected_by_sysctl_at_runtime(mock_kernel, root_image, tmp_path):
    """The boot's kernel environment asks for a minidump; the shell's `sysctl debug.minidump=0` wins."""
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(
        mock_kernel, root_image, tmp_path, "--trigger", "sysctl", "--minidump", "0",
        "--kenv", "debug.minidump=1",
    )
    _passed(rc, report, stderr, "full")
    assert "debug.minidump: 1 -> 0" in console


def test_a_root_image_that_does_not_mount_stops_at_once(mock_kernel, tmp_path):
    _libvirt_or_skip()
    junk = tmp_path / "not-ufs.img"
    junk.write_bytes(bytes(range(256)) * 8192)
    before = _sha(junk)
    rc, report, stderr, _ = _repro(mock_kernel, junk, tmp_path, "--trigger", "sysctl")
    assert rc == 2 and report is None
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("fbsd-hil repro: FAILED at boot: RootImageNotMounted: ")
    assert str(junk) in line and "mountroot> prompt" in line
    assert "Mounting from ufs:/dev/md0 failed with error 19." in line
    assert _sha(junk) == before


def test_the_shell_setup_runs_on_a_kernel_without_the_ddb_sysctls(mock_kernel, root_image, tmp_path):
    """A kernel built without options DDB has no debug.ddb.* OIDs (`mock.no_ddb_sysctls=1` makes the
    stand-in's sysctl answer so): clearing a pending textdump must not stop the run (`sysctl -i`)."""
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(
        mock_kernel, root_image, tmp_path, "--trigger", "sysctl", "--kenv", "mock.no_ddb_sysctls=1"
    )
    _passed(rc, report, stderr, "mini")
    assert "sysctl -i debug.ddb.textdump.pending=0" in console

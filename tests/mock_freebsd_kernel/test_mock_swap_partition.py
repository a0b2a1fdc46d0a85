"""`fbsd-hil repro --kernel K --root-image IMG --device swap` on the MockFreeBSDKernel (a STAND-IN,
not FreeBSD).

The chain: the host writes a GPT onto the dump disk (freebsd-boot p1, freebsd-swap p2 starting 1 MiB in
and ending 1 MiB before the backup table) -> the guest's shell runs ``dumpon -v /dev/vtbd0p2`` (the mock
reads the table through its virtio-blk driver and takes p2's byte range as the dump medium,
src/mock_gpt.h) -> the dump lands at the end of the PARTITION (FreeBSD 12 placement) -> the host
extracts it from that partition and verifies it against live memory. A partition too small for the
dump ends as "dump incomplete" with the kernel's words, never as a verified dump; a full dump onto a
partition smaller than memory is refused by dumpon(8)'s size check before anything is dumped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mock_runs import assert_passed as _passed
from mock_runs import libvirt_or_skip as _libvirt_or_skip
from mock_runs import repro_with_root_image as _repro
from mock_runs import sha256_of as _sha

from reader.gpt import find_by_type

pytestmark = pytest.mark.vm
MAGIC = b"FreeBSD Kernel Dump"


def _dump_disk(tmp_path: Path) -> Path:
    (disk,) = (tmp_path / "artifacts").glob("*/dump-disk.raw")
    return disk


def test_minidump_onto_the_swap_partition_of_a_gpt_disk(mock_kernel, root_image, tmp_path):  # noqa: F811
    _libvirt_or_skip()
    before = _sha(root_image)
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "sysctl",
                                         "--device", "swap")
    _passed(rc, report, stderr, "mini")
    assert "dumpon -v /dev/vtbd0p2" in console and "kernel dumps on /dev/vtbd0p2" in console
    note = next(n for n in report["notes"] if n.startswith("dump device /dev/vtbd0p2"))
    assert "GPT partition 2 (freebsd-swap)" in note and "the last sector of partition 2" in note
    # the trailer is the PARTITION's last sector; the disk's own last sector (backup GPT) holds no dump
    disk = _dump_disk(tmp_path)
    swap = find_by_type(disk, "freebsd-swap")
    with open(disk, "rb") as f:
        f.seek(swap.offset + swap.size - 512)
        assert f.read(19) == MAGIC
        f.seek(disk.stat().st_size - 512)
        assert f.read(8) == b"EFI PART"
    assert _sha(root_image) == before


def test_full_dump_onto_the_swap_partition(mock_kernel, root_image, tmp_path):  # noqa: F811
    _libvirt_or_skip()
    rc, report, stderr, _ = _repro(mock_kernel, root_image, tmp_path, "--trigger", "panic", "--minidump", "0",
                                   "--device", "swap")
    _passed(rc, report, stderr, "full")
    assert any(n.startswith("dump device /dev/vtbd0p2") for n in report["notes"])


def test_a_swap_partition_too_small_for_the_dump_is_dump_incomplete(
    mock_kernel, root_image, tmp_path  # noqa: F811
):
    """A 4 MiB swap partition, a ~12 MiB minidump: 12.1's dump_start refuses (E2BIG) and the console says
    "Dump failed. Partition too small."; the run stops at step dump, exit 2, never 'verified'."""
    _libvirt_or_skip()
    rc, report, stderr, console = _repro(mock_kernel, root_image, tmp_path, "--trigger", "sysctl",
                                         "--device", "swap", "--swap-mib", "4")
    assert rc == 2 and report is None, stderr[-4000:]
    line = next(ln for ln in stderr.splitlines() if "FAILED at" in ln)
    assert "FAILED at dump: dump incomplete: ddb dump failed: Dump failed. Partition too small." in line
    assert "verified" not in stderr.lower() and "PASSED" not in stderr
    assert "kernel dumps on /dev/vtbd0p2" in console
    disk = _dump_disk(tmp_path)
    swap = find_by_type(disk, "freebsd-swap")
    assert swap.size == 4 << 20
    with open(disk, "rb") as f:  # nothing written: no trailer at the partition's end
        f.seek(swap.offset + swap.size - 512)
        assert f.read(19) != MAGIC


def test_dumpon_refuses_a_swap_partition_smaller_than_memory_for_a_full_dump(
    mock_kernel, root_image, tmp_path  # noqa: F811
):
    """dumpon(8)'s check_size() (12.1): full dumps (debug.minidump=0) need a device >= physical memory:
    exit 74, "<dev> is smaller than physical memory" with -v; the run stops at boot, before any dump."""
    _libvirt_or_skip()
    rc, report, stderr, _ = _repro(mock_kernel, root_image, tmp_path, "--minidump", "0", "--device", "swap",
                                   "--swap-mib", "64")
    assert rc == 2 and report is None, stderr[-4000:]
    line = next(ln for ln in stderr.splitlines() if "FAILED at" in ln)
    assert "FAILED at boot" in line and "'dumpon -v /dev/vtbd0p2' exited with status 74" in line
    assert "/dev/vtbd0p2 is smaller than physical memory" in line


def _run_with_layout(kernel: Path, image: Path, tmp_path: Path, monkeypatch, change_layout):
    """`run_repro` in process with the swap dump disk changed after it is laid out (`change_layout(swap)`
    returns the SwapPartition the guest is told to use)."""
    from harness.freebsd import swap_disk
    from harness.run import ReproConfig, run_repro
    from harness.run.sources import kernel_root_image

    def laid_out(disk, guest_disk, swap_mib=None):
        return change_layout(swap_disk.lay_out_swap_dump_disk(disk, guest_disk, swap_mib))

    monkeypatch.setattr(kernel_root_image, "lay_out_swap_dump_disk", laid_out)
    cfg = ReproConfig(kernel=kernel, root_image=image, memory_mib=128, accel="tcg", trigger="sysctl",
                      device="swap", artifacts=tmp_path / "artifacts", boot_seconds=120.0)
    return run_repro(cfg, progress=lambda _msg: None)


def test_dumpon_on_a_partition_the_table_does_not_hold(mock_kernel, root_image, tmp_path, monkeypatch):  # noqa: F811
    """`dumpon -v /dev/vtbd0p9` with two partitions: dumpon's own words, status 72, the run stops at boot."""
    import dataclasses

    from harness.run import ReproError

    _libvirt_or_skip()
    with pytest.raises(ReproError) as e:
        _run_with_layout(mock_kernel, root_image, tmp_path, monkeypatch,
                         lambda swap: dataclasses.replace(swap, device="/dev/vtbd0p9"))
    line = e.value.one_line()
    assert e.value.step == "boot" and "'dumpon -v /dev/vtbd0p9' exited with status 72" in line, line
    assert "(dumpon: /dev/vtbd0p9: No such file or directory)" in line


def test_a_damaged_primary_gpt_is_replaced_by_the_backup_in_the_guest(
    mock_kernel, root_image, tmp_path, monkeypatch  # noqa: F811
):
    """The primary header's CRC broken: the mock (as g_part_gpt) takes the backup table and still finds
    p2; the dump verifies."""
    _libvirt_or_skip()

    def damage(swap):
        with open(swap.disk, "r+b") as f:
            f.seek(512 + 16)  # the primary header's CRC32
            f.write(b"\xde\xad\xbe\xef")
        return swap

    outcome = _run_with_layout(mock_kernel, root_image, tmp_path, monkeypatch, damage)
    assert outcome.passed, outcome.report.summary()
    assert any(n.startswith("dump device /dev/vtbd0p2") for n in outcome.report.notes)

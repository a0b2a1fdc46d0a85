"""The swap dump disk: our GPT writer (`harness.vm.gpt_disk`) checked against Debian's gdisk (`sgdisk`)
and our strict reader (`reader.gpt`), the layout (`harness.freebsd.swap_disk`: the swap partition neither
at the start nor at the end of the disk), and one-line errors for damaged or absent tables."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.freebsd.swap_disk import FREEBSD_SWAP, TAIL_GAP, lay_out_swap_dump_disk
from harness.vm.gpt_disk import GptPartitionSpec, GptWriteError, last_usable_lba, write_gpt
from reader import device
from reader.gpt import GptError, find_by_type, read_gpt


def _disk(tmp_path: Path, mib: int = 64) -> Path:
    disk = tmp_path / "dump-disk.raw"
    with open(disk, "wb") as f:
        f.truncate(mib << 20)
    return disk


def test_swap_layout_is_inside_the_disk_not_at_its_ends(tmp_path):
    disk = _disk(tmp_path)
    swap = lay_out_swap_dump_disk(disk, "/dev/vtbd0")
    assert swap.device == "/dev/vtbd0p2" and swap.index == 2
    assert swap.offset == 1 << 20
    assert swap.offset + swap.size <= disk.stat().st_size - TAIL_GAP
    entries = read_gpt(disk)
    assert [(e.index, e.kind, e.name) for e in entries] == [
        (1, "freebsd-boot", "gptboot0"),
        (2, "freebsd-swap", "swap0"),
    ]
    assert str(entries[1].type_guid) == FREEBSD_SWAP
    # the reader's partition list (what `fbsd-vmcore extract` and find_dump search) agrees
    parts = [(p.index, p.kind, p.offset, p.size) for p in device.partitions(disk)]
    assert parts[1] == (2, "freebsd-swap", swap.offset, swap.size)
    (tmp_path / "small").mkdir()
    small = lay_out_swap_dump_disk(_disk(tmp_path / "small"), "/dev/vtbd0", swap_mib=4)
    assert (small.offset, small.size) == (1 << 20, 4 << 20)


def test_swap_partition_that_does_not_fit_says_so(tmp_path):
    with pytest.raises(ValueError, match="does not fit a 64 MiB dump disk"):
        lay_out_swap_dump_disk(_disk(tmp_path), "/dev/vtbd0", swap_mib=63)


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="needs Debian's gdisk (sgdisk)")
def test_writer_agrees_with_gdisk(tmp_path):
    """sgdisk -v checks the protective MBR, both headers, both arrays and their CRCs."""
    disk = _disk(tmp_path)
    swap = lay_out_swap_dump_disk(disk, "/dev/vtbd0", swap_mib=16)
    verify = subprocess.run(["sgdisk", "-v", str(disk)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "No problems found" in verify.stdout, verify.stdout + verify.stderr
    info = subprocess.run(["sgdisk", "-i", "2", str(disk)], capture_output=True, text=True, check=True).stdout
    assert "516E7CB5-6ECF-11D6-8FF8-00022D09712B" in info.upper() and "FreeBSD swap" in info
    assert f"First sector: {swap.offset // 512} " in info
    assert f"Last sector: {(swap.offset + swap.size) // 512 - 1} " in info
    assert "Partition name: 'swap0'" in info


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="needs Debian's gdisk (sgdisk)")
def test_reader_reads_a_table_gdisk_wrote(tmp_path):
    disk = _disk(tmp_path)
    subprocess.run(
        ["sgdisk", "-n", "1:2048:+1M", "-t", "1:A503", "-n", "2:0:+8M", "-t", "2:A502", "-c", "2:swapfs",
         str(disk)],
        check=True, capture_output=True,
    )
    swap = find_by_type(disk, "freebsd-swap")
    assert (swap.index, swap.first_lba, swap.size, swap.name) == (2, 4096, 8 << 20, "swapfs")


def test_damaged_primary_falls_back_to_the_backup_and_both_damaged_is_one_line(tmp_path):
    disk = _disk(tmp_path)
    lay_out_swap_dump_disk(disk, "/dev/vtbd0")
    with open(disk, "r+b") as f:
        f.seek(2 * 512 + 130)  # inside the primary entry array: its CRC no longer matches
        f.write(b"\x01")
    assert find_by_type(disk, "freebsd-swap").index == 2  # from the backup, as GEOM does
    with open(disk, "r+b") as f:
        f.seek(disk.stat().st_size - 512 + 16)  # the backup header's CRC field
        f.write(b"\x00\x00\x00\x00")
    with pytest.raises(GptError) as e:
        read_gpt(disk)
    msg = str(e.value)
    assert "\n" not in msg and str(disk) in msg and "offset 0x400" in msg
    assert "entry array crc32" in msg and "backup GPT is unusable too" in msg


def test_absent_table_and_missing_type_are_one_line(tmp_path):
    disk = _disk(tmp_path)
    with pytest.raises(GptError, match=r"offset 0x200.*no GUID partition table.*expected a GPT disk"):
        read_gpt(disk)
    write_gpt(disk, [GptPartitionSpec("516e7cb6-6ecf-11d6-8ff8-00022d09712b", 2048, 4095, "rootfs")])
    with pytest.raises(GptError, match=r"no freebsd-swap partition .*found: p1 freebsd-ufs"):
        find_by_type(disk, "freebsd-swap")


def test_writer_refuses_overlaps_bad_ranges_and_disks_with_data(tmp_path):
    disk = _disk(tmp_path)
    size = disk.stat().st_size
    with pytest.raises(GptWriteError, match="overlap"):
        write_gpt(disk, [GptPartitionSpec(FREEBSD_SWAP, 2048, 4095),
                         GptPartitionSpec(FREEBSD_SWAP, 4000, 5000)])
    with pytest.raises(GptWriteError, match="outside the usable LBAs"):
        write_gpt(disk, [GptPartitionSpec(FREEBSD_SWAP, 2048, last_usable_lba(size) + 1)])
    with open(disk, "r+b") as f:
        f.seek(512)
        f.write(b"user data")
    before = disk.read_bytes()[:4096]
    with pytest.raises(GptWriteError, match="not overwriting"):
        write_gpt(disk, [GptPartitionSpec(FREEBSD_SWAP, 2048, 4095)])
    assert disk.read_bytes()[:4096] == before
    assert os.path.getsize(disk) == size

"""Write a GUID partition table onto a guest's raw disk image (UEFI spec, "GUID Partition Table Disk
Layout"): a protective MBR, the primary header at LBA 1 with its entry array at LBA 2, and the backup
entry array and header at the end of the disk, each header and array with its CRC32.

The VM layer knows nothing about what the partitions hold: callers give type GUIDs and LBA ranges.
Only a file this run created and that is still all zeros in the table areas is written (refuses
otherwise), so nothing a user made is ever modified.
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

LBA = 512
ENTRY_COUNT = 128
ENTRY_SIZE = 128
#: the entry array's sectors (128 x 128 bytes = 32 LBAs)
ARRAY_LBAS = ENTRY_COUNT * ENTRY_SIZE // LBA
#: first usable LBA: MBR, header, array
FIRST_USABLE = 2 + ARRAY_LBAS
PROTECTIVE_MBR_TYPE = 0xEE


class GptWriteError(ValueError):
    """The requested table cannot be written (partitions overlap, leave the usable area, ...)."""


@dataclass(frozen=True)
class GptPartitionSpec:
    type_guid: str
    first_lba: int
    last_lba: int
    name: str = ""


def last_usable_lba(disk_bytes: int) -> int:
    """The last LBA a partition may use: before the backup array and header."""
    return disk_bytes // LBA - 1 - ARRAY_LBAS - 1


def write_gpt(path: Path, parts: list[GptPartitionSpec], *, disk_guid: uuid.UUID | None = None) -> None:
    """Write the protective MBR, primary and backup GPT onto the existing image `path` (its size is
    the disk's size, a multiple of 512); the data areas are not touched."""
    size = path.stat().st_size
    if size % LBA or size < (2 * FIRST_USABLE + 1) * LBA:
        raise GptWriteError(f"{path}: {size} bytes is not a disk a GPT fits on (want a multiple of 512, "
                            f">= {(2 * FIRST_USABLE + 1) * LBA} bytes)")
    _check_layout(path, parts, size)
    last_lba = size // LBA - 1
    table = bytearray(ENTRY_COUNT * ENTRY_SIZE)
    for i, p in enumerate(parts):
        entry = uuid.UUID(p.type_guid).bytes_le + uuid.uuid4().bytes_le
        entry += struct.pack("<QQQ", p.first_lba, p.last_lba, 0)
        entry += p.name.encode("utf-16-le")[:72].ljust(72, b"\0")
        table[i * ENTRY_SIZE : (i + 1) * ENTRY_SIZE] = entry
    array_crc = zlib.crc32(table)
    disk = (disk_guid or uuid.uuid4()).bytes_le

    def header(my_lba: int, alternate: int, array_lba: int) -> bytes:
        h = bytearray(struct.pack("<8sIII4x", b"EFI PART", 0x00010000, 92, 0))
        h += struct.pack("<QQQQ", my_lba, alternate, FIRST_USABLE, last_usable_lba(size))
        h += disk + struct.pack("<QIII", array_lba, ENTRY_COUNT, ENTRY_SIZE, array_crc)
        h[16:20] = struct.pack("<I", zlib.crc32(h))
        return bytes(h).ljust(LBA, b"\0")

    mbr = bytearray(LBA)
    # one partition of type 0xEE covering the disk (or as much as 32 bits can say), CHS "unused"
    mbr[446:462] = bytes([0, 0, 2, 0, PROTECTIVE_MBR_TYPE, 0xFF, 0xFF, 0xFF]) + struct.pack(
        "<II", 1, min(last_lba, 0xFFFFFFFF)
    )
    mbr[510:512] = b"\x55\xaa"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(mbr), 0)
        os.pwrite(fd, header(1, last_lba, 2), LBA)
        os.pwrite(fd, bytes(table), 2 * LBA)
        os.pwrite(fd, bytes(table), (last_lba - ARRAY_LBAS) * LBA)
        os.pwrite(fd, header(last_lba, 1, last_lba - ARRAY_LBAS), last_lba * LBA)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_layout(path: Path, parts: list[GptPartitionSpec], size: int) -> None:
    if len(parts) > ENTRY_COUNT:
        raise GptWriteError(f"{len(parts)} partitions: a table holds {ENTRY_COUNT}")
    last = last_usable_lba(size)
    spans = sorted((p.first_lba, p.last_lba, i + 1) for i, p in enumerate(parts))
    for first, end, n in spans:
        if not FIRST_USABLE <= first <= end <= last:
            raise GptWriteError(f"{path}: partition {n} LBA {first}..{end} is outside the usable LBAs "
                                f"{FIRST_USABLE}..{last}")
    for (_, end_a, a), (first_b, _, b) in zip(spans, spans[1:], strict=False):
        if first_b <= end_a:
            raise GptWriteError(f"{path}: partitions {a} and {b} overlap at LBA {first_b}")
    with open(path, "rb") as f:
        for at, n in ((0, FIRST_USABLE * LBA), (size - (ARRAY_LBAS + 1) * LBA, (ARRAY_LBAS + 1) * LBA)):
            f.seek(at)
            if any(f.read(n)):
                raise GptWriteError(f"{path}: bytes {at:#x}..{at + n:#x} are not empty: not overwriting a "
                                    "disk that already holds data")

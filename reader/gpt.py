"""GUID partition tables of a whole-disk image (UEFI spec, "GUID Partition Table Disk Layout"), read
strictly: a dump device is often a partition (the freebsd-swap partition of a system disk), and a
damaged table must say so in one line instead of sending the reader to the wrong bytes.

The primary header is at LBA 1, its entry array where the header says; both carry a CRC32. As GEOM's
g_part_gpt does, a damaged primary is replaced by the backup (its header in the disk's last LBA); only
when both are unusable is the table an error, naming the file, the byte offset, the field and what
was expected. Logical blocks of 512 and 4096 bytes are tried (a 4Kn disk's header is at byte 4096).
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from reader.errors import FormatError

GPT_TYPES = {
    uuid.UUID("516e7cb5-6ecf-11d6-8ff8-00022d09712b"): "freebsd-swap",
    uuid.UUID("516e7cb6-6ecf-11d6-8ff8-00022d09712b"): "freebsd-ufs",
    uuid.UUID("516e7cba-6ecf-11d6-8ff8-00022d09712b"): "freebsd-zfs",
    uuid.UUID("516e7cb4-6ecf-11d6-8ff8-00022d09712b"): "freebsd",
    uuid.UUID("83bd6b9d-7f41-11dc-be0b-001560b84f0f"): "freebsd-boot",
    uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"): "efi",
    uuid.UUID("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"): "linux-swap",
    uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"): "linux-data",
}
SIGNATURE = b"EFI PART"
HEADER_MIN = 92
MAX_ENTRIES_BYTES = 1 << 20
BLOCK_SIZES = (512, 4096)


class GptError(FormatError):
    """No usable GUID partition table (absent, damaged, or not holding what was asked for)."""


@dataclass(frozen=True)
class GptEntry:
    """One used entry: `index` is 1-based as in `vtbd0p2`; `offset`/`size` in bytes on the disk."""

    index: int
    type_guid: uuid.UUID
    kind: str  # a name from GPT_TYPES, else the type GUID as text
    first_lba: int
    last_lba: int
    block_size: int
    name: str

    @property
    def offset(self) -> int:
        return self.first_lba * self.block_size

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * self.block_size


def read_gpt_fd(fd: int, path: Path, *, skip_bad_entries: bool = False) -> list[GptEntry]:
    """The used entries of the disk's GPT (primary, else backup); raises `GptError` when neither is
    usable. `skip_bad_entries`: drop an entry outside the usable area instead of failing."""
    disk_size = os.lseek(fd, 0, os.SEEK_END)
    problems: list[GptError] = []
    for block in BLOCK_SIZES:
        if disk_size < 3 * block:
            continue
        try:
            return _table(fd, path, disk_size, block, 1, skip_bad_entries)
        except GptError as primary:
            if os.pread(fd, 8, block) != SIGNATURE:
                problems.append(primary)
                continue
            try:
                return _table(fd, path, disk_size, block, disk_size // block - 1, skip_bad_entries)
            except GptError as backup:
                raise GptError(
                    f"{primary.detail}; the backup GPT is unusable too ({backup})",
                    path=path,
                    offset=primary.offset,
                    field=primary.field,
                    expected=primary.expected,
                ) from None
    first = problems[0] if problems else None
    raise GptError(
        "no GUID partition table: no 'EFI PART' header at LBA 1"
        + (f" (found {os.pread(fd, 8, 512)!r})" if first else f" (the disk is only {disk_size} bytes)"),
        path=path,
        offset=512,
        field="signature",
        expected="a GPT disk (protective MBR, 'EFI PART' header at LBA 1)",
    )


def read_gpt(image_path: str | os.PathLike[str]) -> list[GptEntry]:
    """`read_gpt_fd` on a file."""
    path = Path(image_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise GptError(f"cannot open disk image: {e.strerror}", path=path) from e
    try:
        return read_gpt_fd(fd, path)
    finally:
        os.close(fd)


def find_by_type(image_path: str | os.PathLike[str], kind: str) -> GptEntry:
    """The first GPT partition of type `kind` (a GPT_TYPES name such as "freebsd-swap", or a GUID)."""
    entries = read_gpt(image_path)
    for e in entries:
        if kind in (e.kind, str(e.type_guid)):
            return e
    found = ", ".join(f"p{e.index} {e.kind}" for e in entries) or "no partitions"
    raise GptError(
        f"no {kind} partition in the GUID partition table (found: {found})",
        path=Path(image_path),
        field="partition type",
        expected=f"a {kind} partition",
    )


def _table(fd: int, path: Path, disk_size: int, block: int, lba: int, skip_bad: bool) -> list[GptEntry]:
    at = lba * block
    hdr = os.pread(fd, block, at)
    if hdr[:8] != SIGNATURE:
        raise GptError(
            f"no GPT header signature at LBA {lba} (found {hdr[:8]!r})",
            path=path, offset=at, field="signature", expected="'EFI PART'",
        )
    hsize, hcrc = struct.unpack_from("<II", hdr, 12)
    if not HEADER_MIN <= hsize <= block:
        raise GptError(f"GPT header size {hsize}", path=path, offset=at + 12, field="header size",
                       expected=f"{HEADER_MIN}..{block}")
    body = bytearray(hdr[:hsize])
    body[16:20] = bytes(4)
    if zlib.crc32(body) != hcrc:
        raise GptError(f"GPT header CRC32 {hcrc:#010x} does not match its bytes ({zlib.crc32(body):#010x})",
                       path=path, offset=at + 16, field="header crc32", expected="the CRC32 of the header")
    my_lba, _alt, first_usable, last_usable = struct.unpack_from("<QQQQ", hdr, 24)
    if my_lba != lba:
        raise GptError(f"GPT header says it is at LBA {my_lba}", path=path, offset=at + 24, field="my lba",
                       expected=str(lba))
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", hdr, 72)
    if esize < 128 or esize % 8 or count * esize > MAX_ENTRIES_BYTES or count == 0:
        raise GptError(f"{count} entries of {esize} bytes", path=path, offset=at + 80,
                       field="entry count/size",
                       expected=f"128+ byte entries, at most {MAX_ENTRIES_BYTES} bytes")
    table = os.pread(fd, count * esize, entries_lba * block)
    if len(table) != count * esize:
        raise GptError("the partition entry array runs past the end of the disk", path=path,
                       offset=entries_lba * block, field="entry array", expected=f"{count * esize} bytes")
    if zlib.crc32(table) != ecrc:
        raise GptError(f"partition entry array CRC32 {zlib.crc32(table):#010x} is not the header's "
                       f"{ecrc:#010x}",
                       path=path, offset=entries_lba * block, field="entry array crc32",
                       expected="the CRC32 the header records")
    out = []
    for i in range(count):
        e = table[i * esize : (i + 1) * esize]
        if not any(e[:16]):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        if last < first or (last + 1) * block > disk_size or first < first_usable or last > last_usable:
            if skip_bad:
                continue
            raise GptError(
                f"partition {i + 1} spans LBA {first}..{last}", path=path,
                offset=entries_lba * block + i * esize + 32, field="first/last lba",
                expected=f"inside the usable LBAs {first_usable}..{last_usable}",
            )
        type_guid = uuid.UUID(bytes_le=bytes(e[:16]))
        name = e[56:128].decode("utf-16-le", errors="replace").split("\0", 1)[0]
        kind = GPT_TYPES.get(type_guid, str(type_guid))
        out.append(GptEntry(i + 1, type_guid, kind, first, last, block, name))
    return out

"""Reading savecore's output from a UFS2 disk image on the host: no mount, no root, nothing modified.

After a dump, the guest's ``savecore`` writes ``vmcore.N`` / ``info.N`` / ``bounds`` onto a UFS2 file
system on a disk of its own. The host reads that disk image read-only here: the superblock, inodes and
directories are parsed by ``dissect.ffs`` (a UFS1/UFS2 reader from PyPI); the file data is copied by
walking the inode's block map ourselves, so holes (savecore writes runs of zero pages as holes, and a
hole may cover a whole indirect block) come out as holes in the copy, and a block address outside the
file system is an error naming the inode, the logical block and the address instead of data read from
the wrong place.

The image may be a bare file system (``newfs /dev/vtbd1``) or a GPT disk whose ``freebsd-ufs``
partition holds it (``gpart add -t freebsd-ufs``). Every failure is one `UfsError` line naming the
image, the byte offset and what was expected there.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SECTOR = 512
UFS2_MAGIC = 0x19540119
UFS1_MAGIC = 0x011954
# where FreeBSD looks for a superblock (sys/ufs/ffs/fs.h SBLOCKSEARCH): UFS2, UFS1, floppy, piggy
SUPERBLOCK_OFFSETS = (65536, 8192, 0, 262144)
FREEBSD_UFS_GUID = uuid.UUID("516e7cb6-6ecf-11d6-8ff8-00022d09712b")
NDADDR = 12  # direct block pointers in an inode
NIADDR = 3  # single, double, triple indirect


class UfsError(Exception):
    """A UFS image could not be read; one line naming the file, the offset and the expectation."""


@dataclass(frozen=True)
class UfsFile:
    name: str
    inode: int
    size: int
    kind: str  # "file" | "dir" | "symlink" | "other"
    target: str | None = None  # a symlink's target


@dataclass(frozen=True)
class SavecoreFiles:
    """What savecore left in a directory, copied to the host."""

    number: int
    vmcore: Path  # vmcore.N, vmcore.N.gz, vmcore.N.zst or textdump.tar.N as savecore named it
    info: Path | None
    bounds: int | None  # the number savecore will use next (bounds file), if present
    compression: str  # "none" | "gzip" | "zstd" (from the file name savecore chose)


class _Window:
    """A read-only file view starting at `base`: dissect reads a partition as if it were the disk."""

    def __init__(self, fh: BinaryIO, base: int, size: int):
        self._fh, self._base, self._size, self._pos = fh, base, size, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else self._size + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self._size - self._pos)
        n = max(0, min(n, self._size - self._pos))
        self._fh.seek(self._base + self._pos)
        data = self._fh.read(n)
        self._pos += len(data)
        return data


def _gpt_ufs_partitions(fh: BinaryIO, disk_size: int) -> list[tuple[int, int]]:
    """(byte offset, byte size) of every freebsd-ufs partition of a GPT disk; [] without a GPT."""
    fh.seek(SECTOR)
    hdr = fh.read(92)
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        return []
    entries_lba, count, entry_size = struct.unpack_from("<QII", hdr, 72)
    if not (128 <= entry_size <= 4096) or count > 1024:
        return []
    fh.seek(entries_lba * SECTOR)
    table = fh.read(count * entry_size)
    found = []
    for i in range(len(table) // entry_size):
        entry = table[i * entry_size : (i + 1) * entry_size]
        if uuid.UUID(bytes_le=entry[:16]) != FREEBSD_UFS_GUID:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if first * SECTOR < disk_size:
            found.append((first * SECTOR, (min(last + 1, disk_size // SECTOR) - first) * SECTOR))
    return found


class UfsImage:
    """A UFS1/UFS2 file system in a disk image, opened read-only.

    `partition` picks the n-th freebsd-ufs partition of a GPT disk (0 = the first); a bare file system
    is found at offset 0 first.
    """

    def __init__(self, image: Path | str, partition: int = 0):
        from dissect.ffs import FFS

        self.image = Path(image)
        try:
            self._fh = open(self.image, "rb")  # noqa: SIM115 (closed by close()/__exit__)
        except OSError as e:
            raise UfsError(f"{self.image}: cannot open the UFS image: {e.strerror}") from None
        disk_size = os.fstat(self._fh.fileno()).st_size
        self.offset = 0
        size = disk_size
        if not self._has_superblock(0, disk_size):
            parts = _gpt_ufs_partitions(self._fh, disk_size)
            if parts:
                if partition >= len(parts):
                    self.close()
                    raise UfsError(
                        f"{self.image}: GPT has {len(parts)} freebsd-ufs partition(s), "
                        f"partition {partition} asked for"
                    )
                self.offset, size = parts[partition]
                if not self._has_superblock(self.offset, size):
                    self.close()
                    raise UfsError(
                        f"{self.image}: freebsd-ufs partition at offset {self.offset} holds no UFS "
                        f"superblock (magic 0x{UFS2_MAGIC:08x} expected at one of "
                        f"{', '.join(str(self.offset + o) for o in SUPERBLOCK_OFFSETS)})"
                    )
            else:
                self.close()
                raise UfsError(
                    f"{self.image}: no UFS superblock (magic 0x{UFS2_MAGIC:08x} or 0x{UFS1_MAGIC:06x} "
                    f"expected at offset {', '.join(map(str, SUPERBLOCK_OFFSETS))}) and no GPT with a "
                    "freebsd-ufs partition: not a UFS file system, or its superblock is damaged"
                )
        self.size = size
        try:
            self.fs = FFS(_Window(self._fh, self.offset, size))
        except Exception as e:  # dissect raises its own and struct errors on garbage
            self.close()
            raise UfsError(f"{self.image}: UFS superblock at offset {self.offset} unreadable: {e}") from None
        sb = self.fs.sb
        self.version = self.fs.version
        self.block_size = int(sb.fs_bsize)
        self.fragment_size = int(sb.fs_fsize)
        self.frags = int(sb.fs_size)  # file system size in fragments
        self.nindir = int(sb.fs_nindir)
        self._addr_fmt = "<q" if self.version == 2 else "<i"

    def _has_superblock(self, base: int, size: int) -> bool:
        for off in SUPERBLOCK_OFFSETS:
            if off + 1376 > size:
                continue
            self._fh.seek(base + off + 1372)  # fs_magic sits at byte 1372 of struct fs
            raw = self._fh.read(4)
            if len(raw) == 4 and struct.unpack("<I", raw)[0] in (UFS2_MAGIC, UFS1_MAGIC):
                return True
        return False

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> UfsImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- directories

    def _node(self, path: str):
        try:
            node = self.fs.get(path)
        except FileNotFoundError:
            raise UfsError(f"{self.image}: {path}: no such file in the UFS file system") from None
        except Exception as e:
            raise UfsError(f"{self.image}: {path}: unreadable directory or inode: {e}") from None
        return node

    def listdir(self, path: str = "/") -> dict[str, UfsFile]:
        node = self._node(path)
        if not node.is_dir():
            raise UfsError(f"{self.image}: {path}: not a directory")
        out: dict[str, UfsFile] = {}
        try:
            for name, child in node.listdir().items():
                if name in (".", ".."):
                    continue
                mode = child.mode
                kind = (
                    "dir"
                    if stat.S_ISDIR(mode)
                    else "symlink"
                    if stat.S_ISLNK(mode)
                    else "file"
                    if stat.S_ISREG(mode)
                    else "other"
                )
                target = child.link if kind == "symlink" else None
                out[name] = UfsFile(name, int(child.inum), int(child.size), kind, target)
        except UfsError:
            raise
        except Exception as e:
            raise UfsError(f"{self.image}: directory {path} is damaged: {e}") from None
        return out

    # --- file data

    def _block_addresses(self, inum: int, nblocks: int, di_db, di_ib) -> Iterator[int]:
        """Fragment address of each logical block 0..nblocks-1 (0 = a hole)."""
        for lbn in range(min(nblocks, NDADDR)):
            yield int(di_db[lbn])
        left = nblocks - NDADDR
        for level in range(NIADDR):
            if left <= 0:
                return
            span = self.nindir ** (level + 1)
            take = min(left, span)
            yield from self._walk(inum, int(di_ib[level]), level + 1, take)
            left -= take

    def _walk(self, inum: int, addr: int, level: int, count: int) -> Iterator[int]:
        if addr == 0:  # a hole covering this whole indirect block's range
            yield from (0 for _ in range(count))
            return
        block = self._read_frags(inum, addr, self.block_size, what=f"level-{level} indirect block")
        step = struct.calcsize(self._addr_fmt)
        per_child = self.nindir ** (level - 1)
        for i in range(self.nindir):
            if count <= 0:
                return
            (child,) = struct.unpack_from(self._addr_fmt, block, i * step)
            take = min(count, per_child)
            if level == 1:
                yield child
            else:
                yield from self._walk(inum, child, level - 1, take)
            count -= take

    def _read_frags(self, inum: int, addr: int, length: int, what: str) -> bytes:
        if addr < 0 or addr + (length + self.fragment_size - 1) // self.fragment_size > self.frags:
            raise UfsError(
                f"{self.image}: inode {inum}: {what} at fragment {addr} lies outside the file system "
                f"({self.frags} fragments of {self.fragment_size} bytes): damaged inode or block map"
            )
        pos = self.offset + addr * self.fragment_size
        self._fh.seek(pos)
        data = self._fh.read(length)
        if len(data) != length:
            raise UfsError(
                f"{self.image}: inode {inum}: {what} at offset {pos}: image ends after {len(data)} of "
                f"{length} bytes (truncated image)"
            )
        return data

    def copy_out(self, path: str, dest: Path) -> int:
        """Copy a regular file to `dest` (created new, never overwritten); holes stay holes. -> size."""
        node = self._node(path)
        if not node.is_file():
            raise UfsError(f"{self.image}: {path}: not a regular file")
        try:
            ino = node.inode
            size = int(ino.di_size)
            di_db, di_ib = list(ino.di_db), list(ino.di_ib)
        except Exception as e:
            raise UfsError(f"{self.image}: {path}: inode unreadable: {e}") from None
        inum = int(node.inum)
        nblocks = (size + self.block_size - 1) // self.block_size
        dest = Path(dest)
        with open(dest, "xb") as out:
            for lbn, addr in enumerate(self._block_addresses(inum, nblocks, di_db, di_ib)):
                length = min(self.block_size, size - lbn * self.block_size)
                if addr == 0:
                    out.seek(length, os.SEEK_CUR)
                    continue
                out.write(self._read_frags(inum, addr, length, what=f"{path} block {lbn}"))
            out.truncate(size)
        return size

    def read_small(self, path: str, limit: int = 1 << 20) -> bytes:
        """The whole of a small file (info.N, bounds)."""
        node = self._node(path)
        if int(node.size) > limit:
            raise UfsError(f"{self.image}: {path}: {node.size} bytes, expected at most {limit}")
        try:
            return node.open().read()
        except Exception as e:
            raise UfsError(f"{self.image}: {path}: unreadable: {e}") from None


#: what savecore names a dump: vmcore.N (.gz/.zst compressed), or textdump.tar.N for a textdump
VMCORE_NAME = re.compile(r"^(?:vmcore|textdump\.tar)\.(\d+)(\.gz|\.zst)?$")


def savecore_numbers(entries: dict[str, UfsFile]) -> list[int]:
    return sorted({int(m.group(1)) for n in entries if (m := VMCORE_NAME.match(n))})


def copy_savecore_output(
    image: Path | str, outdir: Path | str, directory: str = "/", number: int | None = None, partition: int = 0
) -> SavecoreFiles:
    """Copy ``vmcore.N`` (+ ``info.N``) that savecore wrote into `directory` of a UFS image to `outdir`.

    Without `number`: the dump ``vmcore.last`` points at, else the highest N. Says plainly when
    savecore left no dump there.
    """
    outdir = Path(outdir)
    with UfsImage(image, partition) as ufs:
        entries = ufs.listdir(directory)
        numbers = savecore_numbers(entries)
        if not numbers:
            raise UfsError(
                f"{ufs.image}: {directory} holds no vmcore.N (savecore found no dump, or the dump "
                f"was cleared); entries: {', '.join(sorted(entries)) or 'none'}"
            )
        if number is None:
            # savecore keeps a .last link per kind (vmcore.last, textdump.tar.last): the newer one wins
            lasts = [
                int(m.group(1))
                for link in ("vmcore.last", "textdump.tar.last")
                if (last := entries.get(link)) is not None and last.kind == "symlink"
                and (m := VMCORE_NAME.match(last.target or ""))
            ]
            number = max(lasts) if lasts else numbers[-1]
        names = [n for n in entries if (m := VMCORE_NAME.match(n)) and int(m.group(1)) == number]
        if not names:
            raise UfsError(f"{ufs.image}: {directory}: no vmcore.{number}; savecore wrote {numbers}")
        name = names[0]
        compression = {".gz": "gzip", ".zst": "zstd"}.get(VMCORE_NAME.match(name).group(2) or "", "none")
        base = directory.rstrip("/")
        vmcore = outdir / name
        ufs.copy_out(f"{base}/{name}", vmcore)
        info = None
        if f"info.{number}" in entries:
            info = outdir / f"info.{number}"
            ufs.copy_out(f"{base}/info.{number}", info)
        bounds = None
        if "bounds" in entries:
            raw = ufs.read_small(f"{base}/bounds", 64).strip()
            bounds = int(raw) if raw.isdigit() else None
    return SavecoreFiles(number, vmcore, info, bounds, compression)

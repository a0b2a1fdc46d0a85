"""Find, check and extract a kernel dump on a raw dump device or disk image, as savecore(8) does.

Placement (sys/kern/kern_shutdown.c `dump_start()`/`dump_finish()`, sbin/savecore/savecore.c
`DoFile()`): the trailer header is the last sector of the device (`lasthd = mediasize - sectorsize`);
the leader is at `lasthd - dumpextent - sectorsize - dumpkeysize`, the EKCD key blob right after the
leader's sector, the payload right after the key, `dumplength` bytes long. v1 (<= 11.x) headers have no
extent and no key: the leader is at `lasthd - dumplength - 512` (old savecore), which is the same
arithmetic with `dumpextent = dumplength` when sectors are 512 bytes.

A disk image has no DIOCGSECTORSIZE, so the sector size defaults to 512 and, when the last 512
bytes hold no header, 4096 is tried (a 4Kn disk keeps the header in the first 512 bytes of its last
4 KiB sector).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reader import ekcd
from reader import kerneldumpheader as kdh
from reader.errors import FormatError, ReaderError, TruncatedError
from reader.gpt import GPT_TYPES, GptError, read_gpt_fd  # noqa: F401 - GPT_TYPES: part of this module's API
from reader.rawfile import write_sparse

SECTOR_SIZES = (512, 4096)
# sizeof(struct kerneldumpkey) + KERNELDUMP_ENCKEY_MAX_SIZE rounded up to the largest sector the
# kernel supports is far below this; anything larger is a corrupt header, not a key.
MAX_DUMPKEYSIZE = 64 * 1024
COPY_CHUNK = 1 << 20


class NoDumpError(FormatError):
    """The device holds no kernel dump header in its last sector."""


class ClearedDumpError(NoDumpError):
    """The trailer says `Cleared Kernel Dump`: savecore already saved (or -c cleared) this dump."""


class ExtractError(ReaderError):
    """Extraction refused or failed on the output side (an existing file, a write error)."""


TEXTDUMP_BLOCK = 512


def copy_reversed(src_fd: int, dd: DeviceDump, dst_fd: int) -> int:
    """Write the block-reversed tar stream of a device textdump (`DeviceDump`) to `dst_fd`."""
    n = dd.payload_length // TEXTDUMP_BLOCK
    for i in range(n):
        off = dd.trailer_offset - (i + 1) * TEXTDUMP_BLOCK
        block = os.pread(src_fd, TEXTDUMP_BLOCK, off)
        if len(block) != TEXTDUMP_BLOCK:
            raise TruncatedError(
                f"short read of textdump block {i}",
                path=dd.path,
                offset=off,
                field="textdump block",
                expected=f"{TEXTDUMP_BLOCK} bytes",
            )
        written = 0
        while written < TEXTDUMP_BLOCK:
            written += os.pwrite(dst_fd, block[written:], i * TEXTDUMP_BLOCK + written)
    return n * TEXTDUMP_BLOCK


def _media_size(fd: int) -> int:
    """Size of a regular file or a block device (lseek SEEK_END works for both)."""
    return os.lseek(fd, 0, os.SEEK_END)


def _pread_exact(fd: int, size: int, offset: int, *, path: Path, what: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise TruncatedError(
            f"short read of {what}: {len(data)} of {size} bytes",
            path=path,
            offset=offset,
            field=what,
            expected=f"{size} bytes",
        )
    return data


@dataclass(frozen=True)
class DeviceDump:
    """Where a dump sits on a device, after every check savecore makes passed.

    `payload_offset`/`payload_length` delimit the bytes savecore copies into `vmcore.N`
    (compressed/encrypted as on the device); `key_offset`/`key_size` the EKCD blob (size 0 if none).
    """

    path: Path
    media_size: int
    sector_size: int
    header: kdh.KernelDumpHeader
    trailer_offset: int
    leader_offset: int
    key_offset: int
    key_size: int
    payload_offset: int
    payload_length: int
    forced: bool = False
    media_offset: int = 0  # where the dump device starts in the image (a partition), else 0
    partition: Partition | None = None

    @property
    def is_textdump(self) -> bool:
        return self.header.kind == "text"

    @property
    def compression(self) -> str:
        return self.header.compression_name

    @property
    def encrypted(self) -> bool:
        return self.key_size > 0

    def key_blob(self) -> bytes:
        """The EKCD key blob (what savecore writes to `key.N`), b"" when not encrypted."""
        if not self.key_size:
            return b""
        with open(self.path, "rb") as f:
            return _pread_exact(f.fileno(), self.key_size, self.key_offset, path=self.path, what="dumpkey")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "media_size": self.media_size,
            "sector_size": self.sector_size,
            "trailer_offset": self.trailer_offset,
            "leader_offset": self.leader_offset,
            "key_offset": self.key_offset,
            "key_size": self.key_size,
            "payload_offset": self.payload_offset,
            "payload_length": self.payload_length,
            "forced": self.forced,
            "media_offset": self.media_offset,
            "partition": None if self.partition is None else self.partition.to_dict(),
            "header": self.header.to_dict(),
        }


# --------------------------------------------------------------------------------------------
# Partitions: a dump device is often the swap partition of a whole-disk image


MBR_TYPES = {0xA5: "freebsd", 0x82: "linux-swap", 0x83: "linux-data", 0xEF: "efi"}


@dataclass(frozen=True)
class Partition:
    """A GPT or MBR partition of a disk image: `index` is 1-based, as in `vtbd0p3` / `ada0s1`."""

    index: int
    kind: str
    offset: int
    size: int
    name: str = ""
    scheme: str = "gpt"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def partitions(image_path: str | os.PathLike[str]) -> list[Partition]:
    """The GPT partitions (UEFI spec: header at LBA 1, CRC32-checked), else the MBR primaries."""
    path = Path(image_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ReaderError(f"cannot open: {e.strerror}", path=path) from e
    try:
        return _partitions_fd(fd, path)
    finally:
        os.close(fd)


def _partitions_fd(fd: int, path: Path) -> list[Partition]:
    """The GPT's partitions (`reader.gpt`: primary, else backup; entries outside the disk dropped),
    else, with no usable GPT, the MBR primaries."""
    try:
        entries = read_gpt_fd(fd, path, skip_bad_entries=True)
    except GptError:
        return _mbr(fd, _media_size(fd))
    return [Partition(e.index, e.kind, e.offset, e.size, e.name, "gpt") for e in entries]


def _mbr(fd: int, size: int) -> list[Partition]:
    mbr = os.pread(fd, 512, 0)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return []
    out = []
    for i in range(4):
        e = mbr[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = e[4]
        start, count = struct.unpack_from("<II", e, 8)
        if ptype in (0, 0xEE) or count == 0 or (start + count) * 512 > size:
            continue
        out.append(
            Partition(i + 1, MBR_TYPES.get(ptype, f"mbr-{ptype:#04x}"), start * 512, count * 512, "", "mbr")
        )
    return out


_DUMP_MAGICS = {
    kdh.KERNELDUMPMAGIC.ljust(20, b"\0"): "kernel",
    kdh.TEXTDUMPMAGIC.ljust(20, b"\0"): "text",
    kdh.KERNELDUMPMAGIC_CLEARED.ljust(20, b"\0"): "cleared",
}


def has_dump_trailer(path: str | os.PathLike[str]) -> bool:
    """True when the last 512-byte or 4 KiB sector of the disk, or of one of its GPT/MBR partitions,
    starts with a kerneldumpheader magic (incl. cleared)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        ends = [(0, _media_size(fd))]
        ends += [(p.offset, p.size) for p in _partitions_fd(fd, Path(path))]
        return any(
            size >= ss and os.pread(fd, 20, base + size - ss) in _DUMP_MAGICS
            for base, size in ends
            for ss in SECTOR_SIZES
        )
    except OSError:
        return False
    finally:
        os.close(fd)


def _differing_fields(a: bytes, b: bytes) -> list[str]:
    try:
        ha, hb = kdh.parse(a), kdh.parse(b)
    except FormatError:
        return ["version"]
    da, db = ha.to_dict(), hb.to_dict()
    return [k for k in da if k not in ("parity_ok",) and da[k] != db[k]] or ["unused bytes"]


def find_dump(
    image_path: str | os.PathLike[str],
    *,
    sector_size: int | None = None,
    force: bool = False,
    partition: int | None = None,
) -> DeviceDump:
    """Locate and check the dump on *image_path* exactly as savecore's `DoFile()` does.

    Checks: a known magic in the last sector, a known version and compression, parity 0, a leader
    inside the device and identical to the trailer, the payload inside the extent. `force` accepts
    a `Cleared Kernel Dump` trailer like `savecore -f` (the payload is still there).

    A whole-disk image whose dump device was a partition (the swap partition of a system disk) is
    handled too: when the disk's own last sector holds no dump header, the GPT (or MBR) partitions
    are tried, freebsd-swap first; `partition=N` (1-based, as in `vtbd0pN`) picks one directly.
    Raises NoDumpError / ClearedDumpError / FormatError / TruncatedError with file, offset and field.
    """
    path = Path(image_path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ReaderError(f"cannot open dump device: {e.strerror}", path=path) from e
    try:
        if partition is not None:
            parts = {p.index: p for p in _partitions_fd(fd, path)}
            if partition not in parts:
                raise NoDumpError(
                    f"no partition {partition} on this disk (found: {', '.join(map(str, parts)) or 'none'})",
                    path=path,
                    field="partition",
                    expected="the index of a GPT or MBR partition",
                )
            return _find_in_partition(fd, path, parts[partition], sector_size=sector_size, force=force)
        try:
            return _find_dump_fd(fd, path, sector_size=sector_size, force=force)
        except ClearedDumpError:
            raise
        except NoDumpError as whole:
            parts = sorted(_partitions_fd(fd, path), key=lambda p: (p.kind != "freebsd-swap", p.index))
            if not parts:
                raise
            cleared: ClearedDumpError | None = None
            for part in parts:
                try:
                    return _find_in_partition(fd, path, part, sector_size=sector_size, force=force)
                except ClearedDumpError as e:
                    cleared = cleared or e
                except NoDumpError:
                    continue
            if cleared is not None:
                raise cleared from None
            raise NoDumpError(
                f"{whole.detail}; nor at the end of any of its {len(parts)} partitions "
                f"({', '.join(f'p{p.index} {p.kind}' for p in parts)})",
                path=path,
                offset=whole.offset,
                field=whole.field,
                expected=whole.expected,
            ) from None
    finally:
        os.close(fd)


def _find_in_partition(
    fd: int, path: Path, part: Partition, *, sector_size: int | None, force: bool
) -> DeviceDump:
    dd = _find_dump_fd(fd, path, sector_size=sector_size, force=force, base=part.offset, size=part.size)
    return dataclasses.replace(dd, partition=part)


def _find_dump_fd(
    fd: int, path: Path, *, sector_size: int | None, force: bool, base: int = 0, size: int | None = None
) -> DeviceDump:
    """savecore's DoFile() on the device `[base, base + size)` of the image; offsets returned are
    absolute positions in the image file."""
    media_size = _media_size(fd) - base if size is None else size
    if sector_size is not None and (sector_size < kdh.HEADER_SIZE or sector_size % 512):
        raise ReaderError(
            f"sector size {sector_size} cannot hold a {kdh.HEADER_SIZE}-byte dump header",
            path=path,
            field="sector_size",
            expected="a multiple of 512",
        )
    candidates = (sector_size,) if sector_size else SECTOR_SIZES
    if media_size < min(candidates):
        raise NoDumpError(
            f"the device is {media_size} bytes, too small to hold a dump header",
            path=path,
            offset=base,
            field="mediasize",
            expected=f">= {min(candidates)} bytes",
        )
    found: tuple[int, bytes, str] | None = None
    cleared: tuple[int, bytes] | None = None
    seen: list[str] = []
    for ss in candidates:
        if media_size < ss:
            continue
        raw = _pread_exact(fd, kdh.HEADER_SIZE, base + media_size - ss, path=path, what="trailer")
        kind = _DUMP_MAGICS.get(raw[:20])
        seen.append(f"{raw[:20].rstrip(bytes(1))!r} at {base + media_size - ss:#x}")
        if kind in ("kernel", "text"):
            found = (ss, raw, kind)
            break
        if kind == "cleared" and cleared is None:
            cleared = (ss, raw)
    if found is None and cleared is not None:
        ss, raw = cleared
        if not force:
            raise ClearedDumpError(
                "dump already saved/cleared: the trailer's magic is 'Cleared Kernel Dump' "
                "(savecore saved this dump and cleared the header; use force=True / savecore -f to "
                "recover it anyway)",
                path=path,
                offset=base + media_size - ss,
                field="magic",
                expected="'FreeBSD Kernel Dump' or 'FreeBSD Text Dump'",
            )
        # savecore -f puts the magic back and goes on; clearing did not touch the parity word, so
        # the restored header is the original one again (and must still equal the leader).
        found = (ss, kdh.KERNELDUMPMAGIC.ljust(20, b"\0") + raw[20:], "kernel")
    if found is None:
        raise NoDumpError(
            "no kernel dump on this device: no dump header magic in the last sector (found "
            + "; ".join(seen)
            + ")",
            path=path,
            offset=base + media_size - candidates[0],
            field="magic",
            expected="'FreeBSD Kernel Dump' or 'FreeBSD Text Dump'",
        )
    ss, raw, kind = found
    lasthd = media_size - ss
    header = kdh.parse(raw, path=path, offset=base + lasthd)
    _check_trailer(header, kind, path=path, lasthd=base + lasthd)

    if header.version == 1:
        firsthd = lasthd - header.dumplength - kdh.HEADER_SIZE
        leader_sector = kdh.HEADER_SIZE
    else:
        firsthd = lasthd - header.dumpextent - ss - header.dumpkeysize
        leader_sector = ss
    if firsthd < 0:
        raise TruncatedError(
            f"the header places the leader at {firsthd} (dumpextent {header.dumpextent}, "
            f"dumpkeysize {header.dumpkeysize}, sector {ss}), before the start of the "
            f"{media_size}-byte device: truncated image or corrupt header",
            path=path,
            offset=base + lasthd + 40,
            field="dumpextent",
            expected=f"dumpextent + dumpkeysize + sector <= {lasthd}",
        )
    leader = _pread_exact(fd, kdh.HEADER_SIZE, base + firsthd, path=path, what="leader")
    if leader != raw:
        diff = _differing_fields(leader, raw)
        raise FormatError(
            f"first and last dump headers disagree (leader at {base + firsthd:#x}, trailer at "
            f"{base + lasthd:#x}; differing: {', '.join(diff)})",
            path=path,
            offset=base + firsthd,
            field=diff[0],
            expected="a leader identical to the trailer",
        )
    key_offset = firsthd + leader_sector
    payload_offset = key_offset + header.dumpkeysize
    return DeviceDump(
        path=path,
        media_size=media_size,
        sector_size=ss,
        header=header,
        trailer_offset=base + lasthd,
        leader_offset=base + firsthd,
        key_offset=base + key_offset,
        key_size=header.dumpkeysize,
        payload_offset=base + payload_offset,
        payload_length=header.dumplength,
        forced=cleared is not None,
        media_offset=base,
    )


def _check_trailer(header: kdh.KernelDumpHeader, kind: str, *, path: Path, lasthd: int) -> None:
    if not header.parity_ok:
        raise FormatError(
            f"parity error on last dump header (XOR of the 128 words is "
            f"{kdh.kerneldump_parity(header.raw):#010x})",
            path=path,
            offset=lasthd + 508,
            field="parity",
            expected="XOR of all 32-bit words == 0",
        )
    if header.compression not in kdh.COMPRESSION_NAMES:
        raise FormatError(
            f"unknown compression type {header.compression}",
            path=path,
            offset=lasthd + (72 if header.version == 3 else 495),
            field="compression",
            expected="0 (none), 1 (gzip) or 2 (zstd)",
        )
    if header.dumpkeysize > MAX_DUMPKEYSIZE:
        raise FormatError(
            f"dumpkeysize {header.dumpkeysize} is larger than any EKCD key blob",
            path=path,
            offset=lasthd + (64 if header.version == 3 else 56),
            field="dumpkeysize",
            expected=f"<= {MAX_DUMPKEYSIZE}",
        )
    if header.dumplength > header.dumpextent:
        raise FormatError(
            f"dumplength {header.dumplength} exceeds dumpextent {header.dumpextent}: the payload "
            "would run into the trailer",
            path=path,
            offset=lasthd + 40,
            field="dumplength",
            expected=f"<= dumpextent ({header.dumpextent})",
        )
    if header.dumplength == 0:
        raise FormatError(
            "dumplength is 0: the header describes an empty dump",
            path=path,
            offset=lasthd + 40,
            field="dumplength",
            expected="> 0",
        )
    # A textdump is never encrypted (textdump_dumpsys() detaches EKCD) nor compressed, although its
    # header carries the dumper's compression setting (dump_init_header() copies it): ignore that.
    if kind == "text" and (header.dumplength % 512 or header.encrypted):
        raise FormatError(
            f"textdump of {header.dumplength} bytes (dumpkeysize {header.dumpkeysize}) cannot be a "
            "block-reversed ustar stream",
            path=path,
            offset=lasthd + 40,
            field="dumplength",
            expected="a multiple of 512 and no key",
        )


# --------------------------------------------------------------------------------------------
# Opening the payload in place (for open_payload)


# --------------------------------------------------------------------------------------------
# Extraction (savecore)


@dataclass
class ExtractedDump:
    """What `extract` wrote. `vmcore` is the file a reader opens (decrypted if a key was given;
    `textdump.tar.N` for a textdump); `info` the header printout; `key` the EKCD blob or None."""

    number: int
    vmcore: Path
    info: Path
    header: dict[str, Any]
    key: Path | None = None
    encrypted_vmcore: Path | None = None
    kind: str = "vmcore"
    device: DeviceDump | None = None
    files: list[Path] = field(default_factory=list)


def read_bounds(outdir: Path) -> int:
    """savecore's `getbounds()`: the integer in `bounds`, 0 when absent or unreadable."""
    try:
        text = (outdir / "bounds").read_text(errors="replace")[:5]
    except OSError:
        return 0
    digits = text.strip().split("\n", 1)[0]
    try:
        return int(digits)
    except ValueError:
        return 0


def _create_exclusive(path: Path) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise ExtractError(
            "refusing to overwrite an existing file (extract never replaces what is there; move it "
            "away, or extract into another directory)",
            path=path,
        ) from e
    except OSError as e:
        raise ExtractError(f"cannot create: {e.strerror}", path=path) from e


def copy_range_sparse(
    src_fd: int, offset: int, length: int, dst_fd: int, *, sparse: bool, src_path: Path
) -> None:
    """Copy `length` bytes from `offset` to the start of `dst_fd`, streaming in 1 MiB chunks.

    With `sparse`, aligned 4 KiB blocks of zeros become holes (savecore's `sparsefwrite()`); the
    file is then `ftruncate`d to its full length so a trailing hole still counts.
    """
    done = 0
    buf = bytearray(COPY_CHUNK)
    with memoryview(buf) as whole:
        while done < length:
            want = min(COPY_CHUNK, length - done)
            mv = whole[:want]
            got = os.preadv(src_fd, [mv], offset + done)
            if got != want:
                raise TruncatedError(
                    f"the device ends inside the dump: read {done + got} of {length} payload bytes",
                    path=src_path,
                    offset=offset + done + got,
                    field="dumplength",
                    expected=f"{length} bytes from {offset:#x}",
                )
            if sparse:
                write_sparse(dst_fd, mv, done)
            else:
                _write_all(dst_fd, mv, done)
            done += want
    if sparse:
        os.ftruncate(dst_fd, length)


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


def extract(
    image_path: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    private_key: Any = None,
    sector_size: int | None = None,
    force: bool = False,
    device_name: str | None = None,
    partition: int | None = None,
) -> ExtractedDump:
    """Save the dump on *image_path* into *outdir* the way savecore(8) would, never overwriting.

    Writes `info.N`, then `vmcore.N` (`vmcore.N.gz` / `.zst` when the kernel compressed it),
    `vmcore_encrypted.N` + `key.N` for EKCD dumps (plus a decrypted `vmcore.N` when `private_key`
    is given, as decryptcore(8) would), or `textdump.tar.N` for a textdump; bumps `bounds` and
    points the `*.last` symlinks at the new files. N comes from `bounds`; if a file for N exists
    already the extraction stops with ExtractError before writing anything. The image is read
    only (the trailer is not cleared).
    """
    out = Path(outdir)
    dd = find_dump(image_path, sector_size=sector_size, force=force, partition=partition)
    header = dd.header
    if device_name is None:
        device_name = str(dd.path) + (f" (partition {dd.partition.index})" if dd.partition else "")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExtractError(f"cannot create output directory: {e.strerror}", path=out) from e
    n = read_bounds(out)

    if dd.is_textdump:
        core_name, kind = f"textdump.tar.{n}", "textdump"
    elif dd.encrypted:
        core_name, kind = f"vmcore_encrypted.{n}", "vmcore"
    elif header.compression == kdh.KERNELDUMP_COMP_GZIP:
        core_name, kind = f"vmcore.{n}.gz", "vmcore"
    elif header.compression == kdh.KERNELDUMP_COMP_ZSTD:
        core_name, kind = f"vmcore.{n}.zst", "vmcore"
    else:
        core_name, kind = f"vmcore.{n}", "vmcore"
    info_path = out / f"info.{n}"
    core_path = out / core_name
    key_path = out / f"key.{n}" if dd.encrypted else None
    decrypted_path: Path | None = None
    if dd.encrypted and private_key is not None:
        suffix = {kdh.KERNELDUMP_COMP_GZIP: ".gz", kdh.KERNELDUMP_COMP_ZSTD: ".zst"}.get(
            header.compression, ""
        )
        decrypted_path = out / f"vmcore.{n}{suffix}"
    planned = [p for p in (info_path, core_path, key_path, decrypted_path) if p is not None]
    for p in planned:
        if os.path.lexists(p):
            raise ExtractError(
                f"refusing to overwrite {p.name} (bounds says the next dump is number {n}; "
                "extract never replaces an existing file)",
                path=p,
            )

    written: list[Path] = []
    src = os.open(dd.path, os.O_RDONLY)
    try:
        # bounds first, as savecore does, so a failed copy does not reuse the number
        _write_bounds(out, n + 1)
        info_fd = _create_exclusive(info_path)
        written.append(info_path)
        try:
            _write_all(
                info_fd,
                memoryview(kdh.render_info(header, device=device_name, bounds=n, status="good").encode()),
                0,
            )
        finally:
            os.close(info_fd)
        if key_path is not None:
            key_fd = _create_exclusive(key_path)
            written.append(key_path)
            try:
                _write_all(key_fd, memoryview(dd.key_blob()), 0)
            finally:
                os.close(key_fd)
        core_fd = _create_exclusive(core_path)
        written.append(core_path)
        copied = False
        try:
            if dd.is_textdump:
                copy_reversed(src, dd, core_fd)
            else:
                copy_range_sparse(
                    src,
                    dd.payload_offset,
                    dd.payload_length,
                    core_fd,
                    sparse=not dd.encrypted and header.compression == kdh.KERNELDUMP_COMP_NONE,
                    src_path=dd.path,
                )
            copied = True
        except OSError as e:
            raise ExtractError(f"cannot write the core: {e.strerror}", path=core_path) from e
        finally:
            os.close(core_fd)
            if not copied:
                # our own half-written file (created O_EXCL above): do not leave a wrong vmcore behind
                core_path.unlink(missing_ok=True)
                written.remove(core_path)
        if decrypted_path is not None:
            written.append(decrypted_path)
            ekcd.decrypt_file(
                core_path,
                key_path,
                decrypted_path,
                private_key=private_key,  # type: ignore[arg-type]
            )
    finally:
        os.close(src)

    _relink(out, "info.last", info_path.name)
    if key_path is not None:
        _relink(out, "key.last", key_path.name)
    last_core = core_name.replace(f".{n}", ".last", 1)
    _relink(out, last_core, core_name)
    return ExtractedDump(
        number=n,
        vmcore=decrypted_path or core_path,
        info=info_path,
        header=header.to_dict(),
        key=key_path,
        encrypted_vmcore=core_path if dd.encrypted else None,
        kind=kind,
        device=dd,
        files=written,
    )


def _write_bounds(out: Path, value: int) -> None:
    """`bounds` is savecore's own counter file: rewritten in place, as savecore's `writebounds()`."""
    path = out / "bounds"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ExtractError("bounds is not a regular file; refusing to write through it", path=path)
    try:
        path.write_text(f"{value}\n")
    except OSError as e:
        raise ExtractError(f"cannot write bounds: {e.strerror}", path=path) from e


def _relink(out: Path, link: str, target: str) -> None:
    """Point a savecore `*.last` symlink at *target*; a regular file of that name is left alone."""
    p = out / link
    if p.is_symlink():
        p.unlink()
    elif p.exists():
        return
    try:
        os.symlink(target, p)
    except OSError as e:
        if e.errno != errno.EEXIST:
            raise ExtractError(f"cannot create symlink: {e.strerror}", path=p) from e

"""Test-only writers for dump *containers*: dump-device images, kernel-style compression, EKCD, textdumps.

Independent of `reader/` on purpose (plain `struct`, no construct, no reader code), so a symmetric
bug in the reader's header layout cannot hide behind a writer that shares it. Each function follows
the kernel code it cites; these are stand-ins for a FreeBSD kernel writing to its dump device.

* headers: `struct kerneldumpheader` v1..v4 (sys/sys/kerneldump.h, old and current revisions),
  `dump_init_header()` + `kerneldump_parity()` (sys/kern/kern_shutdown.c).
* placement: `dump_start()` / `dump_write_headers()` (12.0+, v4) and the <= 11.x `dumpsys()` (v1).
* compression: `gz_reset()` / `gz_write()` / `zstdio_*()` in sys/kern/subr_compressor.c; the last
  partial device block is padded with stale buffer bytes (`kerneldumpcomp_write_cb()`).
* EKCD: `_genkey()` in sbin/dumpon/dumpon.c (64-byte key, RSA OAEP or, before, PKCS#1 v1.5),
  `kerneldumpcrypto_create()/_init()` (IV = SHA-256 of the previous IV; blob rounded to the block
  size), `dump_encrypt()` (AES-256-CBC chained over the dump; ChaCha20 counter 0, nonce = IV[0:8]).
* textdumps: `textdump_mkustar()` / `textdump_dumpsys()` in sys/ddb/db_textdump.c.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

HEADER_SIZE = 512
SIZEOF_METADATA = 64 * 1024
KERNELDUMPMAGIC = b"FreeBSD Kernel Dump"
TEXTDUMPMAGIC = b"FreeBSD Text Dump"
KERNELDUMPMAGIC_CLEARED = b"Cleared Kernel Dump"
COMP_NONE, COMP_GZIP, COMP_ZSTD = 0, 1, 2
ENC_AES_256_CBC, ENC_CHACHA20 = 1, 2
KEY_MAX_SIZE = 64


def parity(raw: bytes) -> int:
    p = 0
    for (w,) in struct.iter_unpack("<I", raw):
        p ^= w
    return p


def _s(value: str | bytes, size: int) -> bytes:
    b = value.encode() if isinstance(value, str) else value
    return b[: size - 1].ljust(size, b"\0")


def kernel_header(
    *,
    version: int = 4,
    magic: bytes = KERNELDUMPMAGIC,
    architecture: str = "amd64",
    architectureversion: int = 2,
    dumplength: int,
    dumptime: int = 1574000000,
    dumpkeysize: int = 0,
    blocksize: int = 512,
    hostname: str = "fbsd-hil-guest",
    versionstring: str = "FreeBSD 12.1-STABLE r356059 GENERIC amd64\n",
    panicstring: str = "",
    compression: int = COMP_NONE,
    dumpextent: int | None = None,
) -> bytes:
    """A 512-byte header laid out by hand per version, parity filled in like dump_init_header()."""
    if dumpextent is None:
        dumpextent = dumplength
    head = _s(magic, 20) + _s(architecture, 12)
    head += struct.pack(">IIQ", version, architectureversion, dumplength)
    if version == 1:
        body = (
            struct.pack(">QI", dumptime, blocksize)
            + _s(hostname, 64)
            + _s(versionstring, 192)
            + _s(panicstring, 192)
        )
    elif version == 2:
        body = (
            struct.pack(">QII", dumptime, dumpkeysize, blocksize)
            + _s(hostname, 64)
            + _s(versionstring, 192)
            + _s(panicstring, 188)
        )
    elif version == 3:
        body = (
            struct.pack(">QQIIB", dumpextent, dumptime, dumpkeysize, blocksize, compression)
            + _s(hostname, 64)
            + _s(versionstring, 192)
            + _s(panicstring, 179)
        )
    elif version == 4:
        body = (
            struct.pack(">QII", dumptime, dumpkeysize, blocksize)
            + _s(hostname, 64)
            + _s(versionstring, 192)
            + _s(panicstring, 175)
            + struct.pack(">BQ", compression, dumpextent)
            + b"\0" * 4
        )
    else:
        raise ValueError(version)
    raw = head + body + b"\0\0\0\0"
    assert len(raw) == HEADER_SIZE, len(raw)
    return raw[:508] + struct.pack("<I", parity(raw))


# --------------------------------------------------------------------------------------------
# compression as subr_compressor.c does it


def kernel_gzip(data: bytes, level: int = 6) -> bytes:
    """gz_reset(): 10-byte header (no mtime, OS_CODE 3), raw deflate, CRC32 + ISIZE little-endian."""
    c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = c.compress(data) + c.flush()
    hdr = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 3])
    return hdr + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def kernel_zstd(data: bytes, level: int = 6) -> bytes:
    """zstdio: one streamed frame with a checksum and no content size."""
    import zstandard

    c = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=False).compressobj()
    return c.compress(data) + c.flush()


# --------------------------------------------------------------------------------------------
# EKCD


@dataclass
class Ekcd:
    key_blob: bytes  # padded to the block size, as written after the leader
    symmetric_key: bytes  # the 64 random bytes
    iv: bytes  # the 32-byte IV stored in the blob
    encryption: int


def make_ekcd(
    public_key,
    *,
    encryption: int = ENC_CHACHA20,
    rsa_padding: str = "oaep",
    blocksize: int = 512,
    symmetric_key: bytes | None = None,
    previous_iv: bytes | None = None,
) -> Ekcd:
    """dumpon `_genkey()` + `kerneldumpcrypto_create()` + `kerneldumpcrypto_init()`."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = symmetric_key if symmetric_key is not None else os.urandom(KEY_MAX_SIZE)
    if rsa_padding == "oaep":
        pad = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    else:
        pad = padding.PKCS1v15()
    encrypted = public_key.encrypt(key, pad)
    iv0 = previous_iv if previous_iv is not None else os.urandom(32)  # arc4rand at create time
    iv = hashlib.sha256(iv0).digest()  # refreshed at dump_start()
    blob = struct.pack(">B32sI", encryption, iv, len(encrypted)) + encrypted
    size = (len(blob) + blocksize - 1) // blocksize * blocksize  # roundup2(sizeof(kdk) + size, blocksize)
    return Ekcd(blob.ljust(size, b"\0"), key, iv, encryption)


def ekcd_encrypt(data: bytes, ekcd: Ekcd) -> bytes:
    """dump_encrypt() over KERNELDUMP_BUFFER_SIZE chunks: CBC chaining across chunks, or ChaCha20 stream."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if ekcd.encryption == ENC_AES_256_CBC:
        out = bytearray()
        iv = ekcd.iv[:16]
        for i in range(0, len(data), 4096):
            chunk = data[i : i + 4096]
            enc = Cipher(algorithms.AES(ekcd.symmetric_key[:32]), modes.CBC(iv)).encryptor()
            ct = enc.update(chunk) + enc.finalize()
            out += ct
            iv = ct[-16:]  # rijndael_cipherInit(..., buf + size - 16)
        return bytes(out)
    enc = Cipher(algorithms.ChaCha20(ekcd.symmetric_key[:32], b"\0" * 8 + ekcd.iv[:8]), mode=None).encryptor()
    return enc.update(data) + enc.finalize()


# --------------------------------------------------------------------------------------------
# device images


@dataclass
class DeviceLayout:
    media_size: int
    sector: int
    leader: int
    key: int
    payload: int
    trailer: int
    header: bytes


def _copy_sparse(dst, src: Path | bytes, offset: int) -> int:
    """Write *src* at *offset*, skipping all-zero 64 KiB pieces (the image is sparse)."""
    if isinstance(src, bytes | bytearray):
        pieces: Iterable[bytes] = (src[i : i + (1 << 16)] for i in range(0, len(src), 1 << 16))
    else:

        def _gen():
            with open(src, "rb") as f:
                while True:
                    b = f.read(1 << 16)
                    if not b:
                        return
                    yield b

        pieces = _gen()
    n = 0
    for piece in pieces:
        if piece.count(0) != len(piece):
            dst.seek(offset + n)
            dst.write(piece)
        n += len(piece)
    return n


def write_device_image(
    path: str | os.PathLike[str],
    payload: bytes | Path,
    *,
    version: int = 4,
    sector: int = 512,
    media_size: int | None = None,
    key_blob: bytes = b"",
    compression: int = COMP_NONE,
    dumpextent: int | None = None,
    stale_fill: bytes = b"",
    media_offset: int = 0,
    **header_fields,
) -> DeviceLayout:
    """Write *payload* onto a sparse raw image the way the kernel places it on a dump device.

    v4 (12.0+): data at `ms - bs - E`, key at `ms - bs - E - K`, leader at `ms - 2bs - E - K`, trailer
    in the last block (headers padded to a full block). v1 (<= 11.x): leader at `ms - L - 1024`, data
    after it, trailer at `ms - 512`. `dumpextent` defaults to the payload length (uncompressed); for
    compressed payloads pass the uncompressed size, as dump_init_header() records it.
    `stale_fill` fills the unused rest of the extent (and block padding) with old bytes.
    `media_offset` writes into an existing disk image at a partition's start (offsets returned are
    relative to the partition, like the kernel's; add `media_offset` for the image position).
    """
    length = len(payload) if isinstance(payload, bytes | bytearray) else os.path.getsize(payload)
    extent = length if dumpextent is None else dumpextent
    keysize = len(key_blob)
    if version == 1:
        need = SIZEOF_METADATA + length + 2 * HEADER_SIZE
    else:
        need = SIZEOF_METADATA + extent + 2 * sector + keysize
    ms = media_size if media_size is not None else need + 7 * sector
    if ms < need:
        raise ValueError(f"media {ms} < needed {need}")
    hdr = kernel_header(
        version=version,
        dumplength=length,
        dumpkeysize=keysize,
        blocksize=sector,
        compression=compression,
        dumpextent=extent,
        **header_fields,
    )
    block = hdr.ljust(sector, b"\0")
    if version == 1:
        trailer = ms - HEADER_SIZE
        leader = ms - length - 2 * HEADER_SIZE
        key_off = data = leader + HEADER_SIZE
        block = hdr
    else:
        trailer = ms - sector
        data = ms - sector - extent
        key_off = data - keysize
        leader = key_off - sector
    with open(path, "r+b" if media_offset else "wb") as f:
        if not media_offset:
            f.truncate(ms)

        def put(pos: int, chunk: bytes) -> None:
            f.seek(media_offset + pos)
            f.write(chunk)

        if stale_fill:
            pos = data + length
            while pos < trailer:
                chunk = stale_fill[: trailer - pos]
                put(pos, chunk)
                pos += len(chunk)
        _copy_sparse(f, payload, media_offset + data)
        if keysize:
            put(key_off, key_blob)
        put(leader, block)
        put(trailer, block)
    return DeviceLayout(ms, sector, leader, key_off, data, trailer, hdr)


# --------------------------------------------------------------------------------------------
# textdumps


def ustar_header(name: str, size: int, mtime: int) -> bytes:
    """textdump_mkustar(): name, mode 0600, uid/gid "0", size "%o", mtime "%lo", root/wheel, "ustar"."""
    h = bytearray(512)

    def put(off: int, width: int, value: bytes) -> None:
        v = value[: width - 1]
        h[off : off + len(v)] = v

    put(0, 100, name.encode())
    put(100, 8, b"0600")
    put(108, 8, b"0")
    put(116, 8, b"0")
    put(124, 12, b"%o" % size)
    put(136, 12, b"%o" % mtime)
    h[156] = 0  # uh_type = 0 (not '0')
    put(257, 6, b"ustar")
    put(265, 32, b"root")
    put(297, 32, b"wheel")
    h[148:156] = b" " * 8
    checksum = sum(h)
    h[148:155] = b"%6o\0" % checksum
    return bytes(h)


def textdump_tar(members: Iterable[tuple[str, bytes]], mtime: int = 1574000000) -> bytes:
    """The ustar stream in kernel order; no end-of-archive blocks (textdump_dumpsys() writes none)."""
    out = bytearray()
    for name, data in members:
        out += ustar_header(name, len(data), mtime)
        out += data
        out += b"\0" * (-len(data) % 512)
    return bytes(out)


def write_textdump_image(
    path: str | os.PathLike[str], tar: bytes, *, media_size: int | None = None, **header_fields
) -> DeviceLayout:
    """textdump_dumpsys(): trailer at ms-512, tar blocks backwards below it, leader below the last."""
    assert len(tar) % 512 == 0
    ms = media_size if media_size is not None else SIZEOF_METADATA + len(tar) + 4 * 512
    header_fields.setdefault("architectureversion", 4)  # KERNELDUMP_TEXT_VERSION
    hdr = kernel_header(magic=TEXTDUMPMAGIC, dumplength=len(tar), blocksize=512, **header_fields)
    trailer = ms - 512
    with open(path, "wb") as f:
        f.truncate(ms)
        f.seek(trailer)
        f.write(hdr)
        nblocks = len(tar) // 512
        for i in range(nblocks):
            f.seek(trailer - (i + 1) * 512)
            f.write(tar[i * 512 : (i + 1) * 512])
        leader = trailer - (nblocks + 1) * 512
        f.seek(leader)
        f.write(hdr)
    return DeviceLayout(ms, 512, leader, leader + 512, leader + 512, trailer, hdr)


# --------------------------------------------------------------------------------------------
# GPT (UEFI spec 2.x, "GUID Partition Table Disk Layout"), for disks whose swap partition is the dump device

FREEBSD_BOOT = "83bd6b9d-7f41-11dc-be0b-001560b84f0f"
FREEBSD_SWAP = "516e7cb5-6ecf-11d6-8ff8-00022d09712b"
FREEBSD_UFS = "516e7cb6-6ecf-11d6-8ff8-00022d09712b"


def write_gpt(path: str | os.PathLike[str], disk_size: int, parts: list[tuple[str, int, int, str]]) -> None:
    """A sparse disk: protective MBR, primary and backup GPT; parts = (type guid, first, last LBA, name)."""
    import uuid

    lba = 512
    nent, esize = 128, 128
    last_lba = disk_size // lba - 1
    table = bytearray(nent * esize)
    for i, (tguid, first, last, name) in enumerate(parts):
        e = uuid.UUID(tguid).bytes_le + uuid.uuid4().bytes_le + struct.pack("<QQQ", first, last, 0)
        e += name.encode("utf-16-le").ljust(72, b"\0")
        table[i * esize : (i + 1) * esize] = e
    ecrc = zlib.crc32(table)

    def header(my: int, alt: int, entries: int) -> bytes:
        h = bytearray(struct.pack("<8sIIII", b"EFI PART", 0x10000, 92, 0, 0))
        h += struct.pack("<QQQQ", my, alt, 34, last_lba - 33)
        h += uuid.uuid4().bytes_le + struct.pack("<QIII", entries, nent, esize, ecrc)
        h[16:20] = struct.pack("<I", zlib.crc32(h))
        return bytes(h)

    mbr = bytearray(512)
    mbr[446:462] = bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + struct.pack(
        "<II", 1, min(last_lba, 0xFFFFFFFF)
    )
    mbr[510:512] = b"\x55\xaa"
    with open(path, "wb") as f:
        f.truncate(disk_size)
        f.write(mbr)
        f.seek(lba)
        f.write(header(1, last_lba, 2))
        f.seek(2 * lba)
        f.write(table)
        f.seek((last_lba - 32) * lba)
        f.write(table)
        f.seek(last_lba * lba)
        f.write(header(last_lba, 1, last_lba - 32))

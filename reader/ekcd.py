"""Encrypted kernel crash dumps (EKCD), decrypted as decryptcore(8) does.

How the kernel encrypts (sys/kern/kern_shutdown.c, sbin/dumpon/dumpon.c, sbin/decryptcore/decryptcore.c):

* `dumpon -k pubkey.pem` draws a one-time symmetric key of KERNELDUMP_KEY_MAX_SIZE = 64 random bytes
  and encrypts it with the RSA public key: OAEP (OpenSSL's default, SHA-1/MGF1-SHA-1) in current
  dumpon, PKCS#1 v1.5 in the first releases; decryptcore tries OAEP and falls back to v1.5.
* The key blob (`struct kerneldumpkey`, packed, after the leader): u8 encryption, 32-byte IV,
  u32 big-endian encrypted key size (= RSA modulus bytes), the encrypted key, zero padding to the
  device block size. The IV is refreshed per dump (SHA-256 of the previous one) and stored there.
* AES-256-CBC (`KERNELDUMP_ENC_AES_256_CBC` = 1): key = first 32 of the 64 bytes, IV = first 16 IV
  bytes, no padding, one CBC chain over the whole payload (the kernel re-seeds each 4 KiB buffer
  with the last ciphertext block, which is the same chain).
* ChaCha20 (`KERNELDUMP_ENC_CHACHA20` = 2, dumpon's default since 12.x): key = first 32 bytes, the
  OpenSSL 16-byte IV = 64-bit block counter 0 followed by the first 8 IV bytes as nonce.
* Compression, when enabled, happens before encryption (dumpon refuses AES-CBC with compression).

The decrypted payload must start with a known magic (ELF, minidump, gzip, zstd); otherwise the key
is wrong. That check also covers PKCS#1 v1.5's implicit rejection, which "succeeds" with junk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reader.errors import DecryptionError, FormatError, ReaderError
from reader.rawfile import (
    ELF_MAGIC,
    GZIP_MAGIC,
    MINIDUMP_MAGIC,
    ZSTD_MAGIC,
    Payload,
    SparseWriter,
    iter_region,
    spool_payload,
)

KERNELDUMP_ENC_NONE = 0
KERNELDUMP_ENC_AES_256_CBC = 1
KERNELDUMP_ENC_CHACHA20 = 2
ENCRYPTION_NAMES = {KERNELDUMP_ENC_AES_256_CBC: "aes-256-cbc", KERNELDUMP_ENC_CHACHA20: "chacha20"}
KERNELDUMP_IV_MAX_SIZE = 32
KERNELDUMP_KEY_MAX_SIZE = 64
KERNELDUMP_ENCKEY_MAX_SIZE = 16384 // 8
KEY_BLOB_HEADER = struct.Struct(">B32sI")  # kdk_encryption, kdk_iv, kdk_encryptedkeysize (37 bytes)
CHUNK = 1 << 20


@dataclass(frozen=True)
class KeyBlob:
    """A parsed `struct kerneldumpkey` (what savecore writes to `key.N`)."""

    encryption: int
    iv: bytes
    encrypted_key: bytes

    @property
    def cipher(self) -> str:
        return ENCRYPTION_NAMES.get(self.encryption, f"unknown ({self.encryption})")


def parse_key_blob(raw: bytes, *, path: str | os.PathLike[str] | None = None, offset: int = 0) -> KeyBlob:
    """Decode a key blob; FormatError names the field when it cannot be one."""
    if len(raw) < KEY_BLOB_HEADER.size:
        raise FormatError(
            f"EKCD key blob is {len(raw)} bytes, shorter than its {KEY_BLOB_HEADER.size}-byte header",
            path=path,
            offset=offset,
            field="kerneldumpkey",
            expected=f">= {KEY_BLOB_HEADER.size} bytes",
        )
    enc, iv, size = KEY_BLOB_HEADER.unpack_from(raw, 0)
    if enc not in ENCRYPTION_NAMES:
        raise FormatError(
            f"unknown EKCD encryption {enc}",
            path=path,
            offset=offset,
            field="kdk_encryption",
            expected="1 (AES-256-CBC) or 2 (ChaCha20)",
        )
    if size == 0 or size > KERNELDUMP_ENCKEY_MAX_SIZE or KEY_BLOB_HEADER.size + size > len(raw):
        raise FormatError(
            f"encrypted key size {size} does not fit the {len(raw)}-byte key blob",
            path=path,
            offset=offset + 33,
            field="kdk_encryptedkeysize",
            expected=f"1..{min(KERNELDUMP_ENCKEY_MAX_SIZE, len(raw) - KEY_BLOB_HEADER.size)}",
        )
    return KeyBlob(enc, iv, bytes(raw[KEY_BLOB_HEADER.size : KEY_BLOB_HEADER.size + size]))


def load_private_key(private_key: Any) -> Any:
    """An RSA private key from a PEM/DER path, PEM/DER bytes, or a `cryptography` key object."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key
    source: str | None = None
    if isinstance(private_key, str | os.PathLike):
        source = str(private_key)
        try:
            data = Path(private_key).read_bytes()
        except OSError as e:
            raise DecryptionError(f"cannot read the private key: {e.strerror}", path=source) from e
    elif isinstance(private_key, bytes | bytearray):
        data = bytes(private_key)
    else:
        raise DecryptionError(
            "private_key must be a path, PEM/DER bytes or an RSA key object, "
            f"not {type(private_key).__name__}"
        )
    key = None
    for loader in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            key = loader(data, password=None)
            break
        except (ValueError, TypeError):
            continue
    if key is None:
        raise DecryptionError(
            "not an unencrypted PEM or DER private key", path=source, expected="an RSA private key"
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DecryptionError(
            f"the private key is {type(key).__name__}, EKCD uses RSA", path=source, expected="an RSA key"
        )
    return key


def unwrap_key(blob: KeyBlob, private_key: Any, *, path: str | os.PathLike[str] | None = None) -> bytes:
    """RSA-decrypt the 64-byte one-time key: OAEP first, then PKCS#1 v1.5 (decryptcore's order)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = load_private_key(private_key)
    modulus_bytes = (key.key_size + 7) // 8
    if modulus_bytes != len(blob.encrypted_key):
        raise DecryptionError(
            f"RSA modulus size mismatch: the private key is {8 * modulus_bytes} bits, the dump's key "
            f"was encrypted for a {8 * len(blob.encrypted_key)}-bit key (wrong private key)",
            path=path,
            offset=33,
            field="kdk_encryptedkeysize",
            expected=f"{len(blob.encrypted_key)}-byte modulus",
        )
    paddings = (
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
        padding.PKCS1v15(),
    )
    for pad in paddings:
        try:
            plain = key.decrypt(blob.encrypted_key, pad)
        except ValueError:
            continue
        if len(plain) == KERNELDUMP_KEY_MAX_SIZE:
            return plain
    raise DecryptionError(
        "cannot decrypt the dump's one-time key with this private key (neither RSA-OAEP nor "
        "PKCS#1 v1.5 padding checks out): wrong private key, or a corrupt key blob",
        path=path,
        offset=KEY_BLOB_HEADER.size,
        field="kdk_encryptedkey",
        expected=f"a {KERNELDUMP_KEY_MAX_SIZE}-byte key encrypted with the matching public key",
    )


def _cipher(blob: KeyBlob, key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if blob.encryption == KERNELDUMP_ENC_AES_256_CBC:
        return Cipher(algorithms.AES(key[:32]), modes.CBC(blob.iv[:16])).decryptor()
    return Cipher(algorithms.ChaCha20(key[:32], b"\0" * 8 + blob.iv[:8]), mode=None).decryptor()


def decrypt_chunks(
    chunks: Iterable[tuple[int, bytes]], blob: KeyBlob, key: bytes, *, path: str | os.PathLike[str]
) -> Iterator[tuple[int, bytes]]:
    """Decrypt `(offset, bytes)` chunks in stream order; offsets are unchanged (no padding)."""
    dec = _cipher(blob, key)
    carry = b""
    carry_off = 0
    for off, data in chunks:
        if blob.encryption == KERNELDUMP_ENC_AES_256_CBC:
            data = carry + data
            off = carry_off if carry else off
            cut = len(data) - len(data) % 16
            carry, carry_off = data[cut:], off + cut
            data = data[:cut]
        if data:
            yield off, dec.update(data)
    if carry:
        raise FormatError(
            f"AES-256-CBC payload ends with a partial {len(carry)}-byte block",
            path=path,
            offset=carry_off,
            field="dumplength",
            expected="a multiple of 16 bytes",
        )
    dec.finalize()


_PAYLOAD_MAGICS = (ELF_MAGIC, MINIDUMP_MAGIC, GZIP_MAGIC, ZSTD_MAGIC)


def _checked(chunks: Iterator[tuple[int, bytes]], *, path: str | os.PathLike[str], start: int) -> Any:
    """Peek the first decrypted chunk: it must start with a payload magic, else the key is wrong."""
    first = next(chunks, None)
    if first is None:
        raise FormatError("the encrypted payload is empty", path=path, offset=start, expected="data")
    head = first[1][:8]
    if not any(head.startswith(m) for m in _PAYLOAD_MAGICS):
        raise DecryptionError(
            f"the decrypted payload starts with {head.hex(' ')}, not a dump magic: wrong private key, or "
            "a key blob that does not belong to this dump",
            path=path,
            offset=start,
            field="payload magic",
            expected="\\x7fELF, 'minidump', gzip 1f 8b or zstd 28 b5 2f fd after decryption",
        )

    def _again() -> Iterator[tuple[int, bytes]]:
        yield first
        yield from chunks

    return head, _again()


def _decode_into(
    chunks: Iterator[tuple[int, bytes]], out: SparseWriter, *, path: Path, start: int, decompress: bool
) -> None:
    head, stream = _checked(chunks, path=path, start=start)
    if decompress and head.startswith(GZIP_MAGIC):
        from reader.compression import decompress_gzip

        decompress_gzip(stream, out, path=path)
    elif decompress and head.startswith(ZSTD_MAGIC):
        from reader.compression import decompress_zstd

        decompress_zstd(stream, out, path=path)
    else:
        for _, data in stream:
            out.write(data)


def _need_key(private_key: Any, blob: KeyBlob, *, path: Path, offset: int) -> None:
    if private_key is None:
        raise DecryptionError(
            f"this dump is EKCD-encrypted ({blob.cipher}); give the RSA private key matching the public key "
            "given to `dumpon -k` (private_key= / --private-key)",
            path=path,
            offset=offset,
            field="dumpkeysize",
            expected="a private key",
        )


def open_encrypted_file(
    path: str | os.PathLike[str], key_path: str | os.PathLike[str], *, private_key: Any
) -> Payload:
    """`vmcore_encrypted.N` + `key.N` -> decrypted (and decompressed) payload, spooled sparse."""
    p, kp = Path(path), Path(key_path)
    try:
        raw = kp.read_bytes()
    except OSError as e:
        raise DecryptionError(f"cannot read the key blob: {e.strerror}", path=kp) from e
    blob = parse_key_blob(raw, path=kp)
    _need_key(private_key, blob, path=p, offset=0)
    key = unwrap_key(blob, private_key, path=kp)
    size = os.path.getsize(p)
    return spool_payload(
        p,
        lambda w: _decode_into(
            decrypt_chunks(iter_region(p, 0, size, CHUNK), blob, key, path=p),
            w,
            path=p,
            start=0,
            decompress=True,
        ),
        container="encrypted",
    )


def open_device_encrypted(dd: Any, *, private_key: Any) -> Payload:
    """The payload of an encrypted dump on a device (`reader.device.DeviceDump`), decrypted."""
    raw = dd.key_blob()
    blob = parse_key_blob(raw, path=dd.path, offset=dd.key_offset)
    _need_key(private_key, blob, path=dd.path, offset=dd.key_offset)
    key = unwrap_key(blob, private_key, path=dd.path)
    container = "device+encrypted" + (f"+{dd.compression}" if dd.header.compression else "")
    return spool_payload(
        dd.path,
        lambda w: _decode_into(
            decrypt_chunks(
                iter_region(dd.path, dd.payload_offset, dd.payload_length, CHUNK), blob, key, path=dd.path
            ),
            w,
            path=dd.path,
            start=dd.payload_offset,
            decompress=True,
        ),
        container=container,
        header=dd.header.to_dict(),
        source_offset=dd.payload_offset,
    )


def decrypt_file(
    encrypted: str | os.PathLike[str],
    key_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    private_key: Any,
) -> Path:
    """decryptcore(8): `vmcore_encrypted.N` + `key.N` -> `vmcore.N` (kept compressed if it was).

    The output is created exclusively (never overwrites) and removed again if decryption fails,
    as decryptcore unlinks a partial core.
    """
    src, kp, out = Path(encrypted), Path(key_path), Path(out_path)
    try:
        raw = kp.read_bytes()
    except OSError as e:
        raise DecryptionError(f"cannot read the key blob: {e.strerror}", path=kp) from e
    blob = parse_key_blob(raw, path=kp)
    key = unwrap_key(blob, private_key, path=kp)
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise DecryptionError("refusing to overwrite an existing file", path=out) from e
    ok = False
    try:
        w = SparseWriter(fd, path=out)
        size = os.path.getsize(src)
        _decode_into(
            decrypt_chunks(iter_region(src, 0, size, CHUNK), blob, key, path=src),
            w,
            path=src,
            start=0,
            decompress=False,
        )
        w.close()
        ok = True
    except OSError as e:
        raise ReaderError(f"cannot write the decrypted core: {e.strerror}", path=out) from e
    finally:
        os.close(fd)
        if not ok:
            out.unlink(missing_ok=True)
    return out

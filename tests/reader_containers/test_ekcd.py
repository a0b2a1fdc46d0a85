"""EKCD round trips: key pairs generated here, dumps encrypted by the test writer as the kernel does.

The writer (tests/dumpwriter/containers.py) follows dumpon's `_genkey()` and kern_shutdown.c's
`kerneldumpcrypto_*()` / `dump_encrypt()`; decryption is also cross-checked with the `openssl`
command line, i.e. the same OpenSSL EVP calls decryptcore(8) makes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from reader import device, ekcd, source
from reader.errors import DecryptionError, FormatError
from tests.dumpwriter import containers as cw

FIXTURE = "vmcore-i386-minidump"
CIPHERS = [(cw.ENC_AES_256_CBC, "aes-256-cbc"), (cw.ENC_CHACHA20, "chacha20")]


@pytest.fixture(scope="module")
def payload(lldb_vmcores) -> bytes:
    return lldb_vmcores[FIXTURE].read_bytes()


def _pem(key, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return path


def _encrypted_image(tmp_path: Path, payload: bytes, key, encryption: int, rsa_padding: str = "oaep", **kw):
    e = cw.make_ekcd(key.public_key(), encryption=encryption, rsa_padding=rsa_padding)
    enc = cw.ekcd_encrypt(payload, e)
    img = tmp_path / "dump.img"
    lay = cw.write_device_image(img, enc, key_blob=e.key_blob, architecture="i386", **kw)
    return img, lay, e, enc


@pytest.mark.parametrize(("encryption", "name"), CIPHERS)
@pytest.mark.parametrize("rsa_padding", ["oaep", "pkcs1"])
def test_device_round_trip(
    tmp_path: Path, payload: bytes, rsa_keys, encryption: int, name: str, rsa_padding: str
):
    key = rsa_keys["right"]
    img, lay, e, enc = _encrypted_image(tmp_path, payload, key, encryption, rsa_padding)
    dd = device.find_dump(img)
    assert dd.encrypted and dd.key_size == len(e.key_blob) == 512 and dd.key_offset == lay.key
    assert dd.leader_offset == lay.media_size - 2 * 512 - len(payload) - 512
    blob = ekcd.parse_key_blob(dd.key_blob())
    assert blob.cipher == name and blob.iv == e.iv
    with source.open_payload(img, private_key=key) as p:
        assert p.container == "device+encrypted" and p.buffer == payload

    pem = _pem(key, tmp_path / "private.pem")
    out = tmp_path / "crash"
    res = device.extract(img, out, private_key=pem)
    assert res.key == out / "key.0" and res.key.read_bytes() == e.key_blob
    assert res.encrypted_vmcore == out / "vmcore_encrypted.0" and res.encrypted_vmcore.read_bytes() == enc
    assert res.vmcore == out / "vmcore.0" and res.vmcore.read_bytes() == payload
    assert os_readlink(out / "key.last") == "key.0"
    assert os_readlink(out / "vmcore_encrypted.last") == "vmcore_encrypted.0"
    # savecore's output pair opens directly (key.N found next to vmcore_encrypted.N)
    assert source.detect(res.encrypted_vmcore) == "encrypted"
    with source.open_payload(res.encrypted_vmcore, private_key=pem.read_bytes()) as p:
        assert p.buffer == payload


def os_readlink(p: Path) -> str:
    import os

    return os.readlink(p)


@pytest.mark.parametrize(("encryption", "name"), CIPHERS)
def test_openssl_cli_decrypts_what_we_decrypt(
    tmp_path: Path, payload: bytes, rsa_keys, encryption: int, name: str
):
    if shutil.which("openssl") is None:
        pytest.fail("openssl command missing")
    key = rsa_keys["right"]
    e = cw.make_ekcd(key.public_key(), encryption=encryption)
    data = payload[: 1 << 20]
    enc_path = tmp_path / "enc.bin"
    enc_path.write_bytes(cw.ekcd_encrypt(data, e))
    pem = _pem(key, tmp_path / "private.pem")
    blob = ekcd.parse_key_blob(e.key_blob)
    (tmp_path / "ek.bin").write_bytes(blob.encrypted_key)
    sym = subprocess.run(
        ["openssl", "pkeyutl", "-decrypt", "-inkey", str(pem), "-in", str(tmp_path / "ek.bin"),
         "-pkeyopt", "rsa_padding_mode:oaep"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    assert sym == ekcd.unwrap_key(blob, key) == e.symmetric_key
    iv = blob.iv[:16].hex() if encryption == cw.ENC_AES_256_CBC else ("00" * 8 + blob.iv[:8].hex())
    cipher = "-aes-256-cbc" if encryption == cw.ENC_AES_256_CBC else "-chacha20"
    plain = subprocess.run(
        ["openssl", "enc", "-d", cipher, "-nopad", "-K", sym[:32].hex(), "-iv", iv, "-in", str(enc_path)],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    assert plain == data
    out = tmp_path / "vmcore.0"
    key_file = tmp_path / "key.0"
    key_file.write_bytes(e.key_blob)
    ekcd.decrypt_file(enc_path, key_file, out, private_key=pem)
    assert out.read_bytes() == data


def test_chacha20_with_zstd_compression(tmp_path: Path, payload: bytes, rsa_keys) -> None:
    """dumpon allows compression with ChaCha20 (not with unpadded AES-CBC): compress, then encrypt."""
    key = rsa_keys["right"]
    comp = cw.kernel_zstd(payload)
    e = cw.make_ekcd(key.public_key(), encryption=cw.ENC_CHACHA20)
    img = tmp_path / "dump.img"
    cw.write_device_image(
        img, cw.ekcd_encrypt(comp, e), key_blob=e.key_blob, compression=cw.COMP_ZSTD, dumpextent=len(payload)
    )
    with source.open_payload(img, private_key=key) as p:
        assert p.container == "device+encrypted+zstd" and p.buffer == payload
    res = device.extract(img, tmp_path / "crash", private_key=key)
    assert res.encrypted_vmcore.name == "vmcore_encrypted.0"  # savecore: no suffix when encrypted
    assert res.vmcore.name == "vmcore.0.zst" and res.vmcore.read_bytes() == comp


def test_no_key_wrong_key_and_wrong_size(tmp_path: Path, payload: bytes, rsa_keys) -> None:
    img, lay, _, _ = _encrypted_image(tmp_path, payload, rsa_keys["right"], cw.ENC_CHACHA20)
    with pytest.raises(DecryptionError) as e:
        source.open_payload(img)
    assert "EKCD-encrypted (chacha20)" in str(e.value) and str(img) in str(e.value)
    with pytest.raises(DecryptionError) as e:
        source.open_payload(img, private_key=rsa_keys["wrong"])
    assert "wrong private key" in str(e.value)
    with pytest.raises(DecryptionError) as e:
        source.open_payload(img, private_key=rsa_keys["big"])
    assert "modulus size mismatch" in str(e.value)
    with pytest.raises(DecryptionError):
        source.open_payload(img, private_key=b"not a key")
    with pytest.raises(DecryptionError):
        source.open_payload(img, private_key=tmp_path / "missing.pem")
    # a failed decryption during extract removes the half-written decrypted core, keeps savecore's files
    out = tmp_path / "crash"
    with pytest.raises(DecryptionError):
        device.extract(img, out, private_key=rsa_keys["wrong"])
    assert not (out / "vmcore.0").exists() and (out / "vmcore_encrypted.0").exists()


def test_key_blob_with_bad_fields(tmp_path: Path, payload: bytes, rsa_keys) -> None:
    e = cw.make_ekcd(rsa_keys["right"].public_key())
    bad = bytearray(e.key_blob)
    bad[0] = 9
    with pytest.raises(FormatError) as err:
        ekcd.parse_key_blob(bytes(bad), path="key.0")
    assert err.value.field == "kdk_encryption"
    bad = bytearray(e.key_blob)
    bad[33:37] = (100000).to_bytes(4, "big")
    with pytest.raises(FormatError) as err:
        ekcd.parse_key_blob(bytes(bad))
    assert err.value.field == "kdk_encryptedkeysize"
    with pytest.raises(FormatError):
        ekcd.parse_key_blob(b"\x01" * 10)

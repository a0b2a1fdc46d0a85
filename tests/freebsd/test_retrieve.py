"""Retrieval: (a) on the host from a raw dump-disk image through reader.device.extract, with dump disks
laid out as the kernel does (tests/dumpwriter: plain, gzip, EKCD with our own key pair); (b) savecore's
/var/crash output fetched over SFTP from a real sshd on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from harness.freebsd.dumps import make_dump_keypair
from harness.freebsd.retrieve import (
    RetrieveError,
    from_dump_disk,
    parse_info_file,
    payload_kind,
    via_savecore,
)
from harness.vm.ssh import SshSession
from tests.dumpwriter import containers as cw
from tests.dumpwriter.minidump import Mapping, write_amd64_minidump


@pytest.fixture(scope="module")
def minidump(tmp_path_factory):
    path = tmp_path_factory.mktemp("mini") / "vmcore.src"
    write_amd64_minidump(path, {0x200000: b"hello", 0x201000: None}, [Mapping(0xFFFFFE0000000000, 0x200000)])
    return path


class PausableStandIn:
    """Records pause() like a Guest would be paused (the disk must not change while we read it)."""

    paused = 0

    def pause(self):
        self.paused += 1


def test_host_extract_plain_minidump(minidump, tmp_path):
    image = tmp_path / "dump.raw"
    cw.write_device_image(image, minidump, media_size=64 << 20)
    guest = PausableStandIn()
    dump = from_dump_disk(image, tmp_path / "out", guest=guest, kernel="/nonexistent/kernel")
    assert guest.paused == 1
    assert dump.vmcore.name == "vmcore.0" and dump.vmcore.read_bytes() == minidump.read_bytes()
    assert (dump.kind, dump.method, dump.compression) == ("mini", "host", "none")
    assert dump.info.name == "info.0" and dump.header["dumplength"] == minidump.stat().st_size
    assert dump.sizes["vmcore"] == minidump.stat().st_size and "extract" in dump.timings
    # a second extraction numbers the next dump and never overwrites the first
    again = from_dump_disk(image, tmp_path / "out")
    assert again.vmcore.name == "vmcore.1" and dump.vmcore.read_bytes() == minidump.read_bytes()
    assert dump.to_dict()["kind"] == "mini"


def test_host_extract_gzip_compressed(minidump, tmp_path):
    data = minidump.read_bytes()
    image = tmp_path / "dump.raw"
    cw.write_device_image(
        image, cw.kernel_gzip(data), media_size=64 << 20, compression=cw.COMP_GZIP, dumpextent=len(data)
    )
    dump = from_dump_disk(image, tmp_path / "out")
    assert dump.vmcore.name == "vmcore.0.gz"
    assert (dump.kind, dump.compression) == ("mini", "gzip")


def test_host_extract_encrypted_with_our_key_pair(minidump, tmp_path):
    from cryptography.hazmat.primitives import serialization

    private, public = make_dump_keypair(tmp_path / "keys")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    pub = serialization.load_pem_public_key(public.read_bytes())
    ekcd = cw.make_ekcd(pub, encryption=cw.ENC_AES_256_CBC)
    data = minidump.read_bytes()
    image = tmp_path / "dump.raw"
    cw.write_device_image(image, cw.ekcd_encrypt(data, ekcd), media_size=64 << 20, key_blob=ekcd.key_blob)
    locked = from_dump_disk(image, tmp_path / "locked")
    assert locked.kind == "encrypted" and locked.key is not None
    opened = from_dump_disk(image, tmp_path / "opened", private_key=private)
    assert opened.kind == "mini" and opened.vmcore.read_bytes() == data
    with pytest.raises(FileExistsError):
        make_dump_keypair(tmp_path / "keys")


def test_a_private_key_that_does_not_exist_is_one_clear_error(minidump, tmp_path):
    """`--private-key /nope.pem` used to be ignored silently when the dump was not encrypted."""
    image = tmp_path / "dump.raw"
    cw.write_device_image(image, minidump.read_bytes(), media_size=64 << 20)
    with pytest.raises(RetrieveError, match=r"private key .*nope\.pem does not exist"):
        from_dump_disk(image, tmp_path / "out", private_key=tmp_path / "nope.pem")
    assert not (tmp_path / "out").exists()


def test_host_extract_of_an_empty_disk_says_so(tmp_path):
    image = tmp_path / "blank.raw"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    with pytest.raises(RetrieveError, match="no dump retrievable from dump disk .*blank.raw"):
        from_dump_disk(image, tmp_path / "out")


def _ssh(sshd):
    return SshSession(
        sshd.host,
        sshd.port,
        user=os.environ.get("USER") or "root",
        key=sshd.client_key,
        pinned_host_key=sshd.host_key_pub,
    ).connect()


def test_savecore_output_fetched_over_sftp(sshd, minidump, tmp_path):
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "bounds").write_text("2\n")
    (crash / "vmcore.1").write_bytes(minidump.read_bytes())
    (crash / "info.1").write_text(
        "Dump header from device: /dev/vtbd1\n  Architecture: amd64\n  Dump Length: 45056\n"
        "  Dumptime: 2026-11-26 07:00:00 +0000\n  Panic String: kdb_sysctl_panic\n  Dump Status: good\n"
    )
    (crash / "vmcore.0").write_bytes(b"older dump, not ours")
    kernel = tmp_path / "kernel"
    kernel.write_bytes(os.urandom(300000))
    with _ssh(sshd) as ssh:
        dump = via_savecore(
            ssh,
            tmp_path / "out",
            crashdir=str(crash),
            kernel_path=str(kernel),
            previous_bounds=0,
            progress=True,
        )
    assert dump.vmcore.read_bytes() == minidump.read_bytes() and dump.vmcore.name == "vmcore.1"
    assert dump.kernel.read_bytes() == kernel.read_bytes()
    assert (dump.kind, dump.method) == ("mini", "savecore")
    assert dump.header["Panic String"] == "kdb_sysctl_panic" and dump.header["Dump Status"] == "good"
    assert dump.sizes["kernel"] == 300000 and "fetch" in dump.timings


def test_savecore_without_a_new_dump_fails_with_what_it_found(sshd, tmp_path):
    crash = tmp_path / "crash"
    crash.mkdir()
    (crash / "bounds").write_text("1\n")
    with _ssh(sshd) as ssh:
        with pytest.raises(RetrieveError, match=r"no new dump .*bounds says 0, before the dump 0"):
            via_savecore(ssh, tmp_path / "out", crashdir=str(crash), previous_bounds=0)
        # with a device we run savecore ourselves; this Linux host has none, and the error says so
        with pytest.raises(RetrieveError, match="savecore wrote no dump from /dev/vtbd1"):
            via_savecore(
                ssh, tmp_path / "out", crashdir=str(crash), previous_bounds=0, dump_device="/dev/vtbd1"
            )


def test_payload_kind_and_info_parsing(tmp_path, minidump):
    assert payload_kind(minidump) == ("mini", "none")
    elf = tmp_path / "elf"
    elf.write_bytes(b"\x7fELF" + bytes(600))
    assert payload_kind(elf) == ("full", "none")
    assert parse_info_file("Dump header from device: /dev/ada1\n  Hostname: a:b\n") == {
        "Dump header from device": "/dev/ada1",
        "Hostname": "a:b",
    }

"""SshSession against a real sshd on 127.0.0.1: exit status, SFTP fetch (progress, resume, no overwrite),
and a pinned host key that does not match refuses to connect."""

from __future__ import annotations

import hashlib
import os

import pytest

from harness.vm.ssh import HostKeyMismatch, SshError, SshSession, fingerprint, load_public_key


def session(sshd, pinned=None, **kw) -> SshSession:
    user = os.environ.get("USER") or "root"
    return SshSession(
        sshd.host,
        sshd.port,
        user=user,
        key=sshd.client_key,
        pinned_host_key=pinned if pinned is not None else sshd.host_key_pub,
        **kw,
    )


def test_command_output_and_exit_status(sshd):
    with session(sshd) as s:
        ok = s.run("echo hello; echo oops >&2")
        assert (ok.stdout, ok.stderr, ok.status) == ("hello\n", "oops\n", 0)
        bad = s.run("exit 7")
        assert bad.status == 7 and not bad.ok
        with pytest.raises(SshError, match="exited with status 3"):
            s.run("echo partial; exit 3", check=True)


def test_pinned_key_mismatch_refuses_with_both_fingerprints(sshd, other_host_key):
    with pytest.raises(HostKeyMismatch) as info:
        session(sshd, pinned=other_host_key).connect()
    msg = str(info.value)
    assert fingerprint(load_public_key(other_host_key)) in msg
    assert fingerprint(load_public_key(sshd.host_key_pub)) in msg
    assert "refusing" in msg


def test_no_pin_needs_explicit_trust_on_first_use(sshd):
    with pytest.raises(SshError, match="no pinned host key"):
        SshSession(sshd.host, sshd.port, key=sshd.client_key, pinned_host_key=None)
    tofu = SshSession(
        sshd.host,
        sshd.port,
        user=os.environ.get("USER") or "root",
        key=sshd.client_key,
        pinned_host_key=None,
        trust_on_first_use=True,
    )
    with tofu as s:
        assert fingerprint(s.host_key) == fingerprint(load_public_key(sshd.host_key_pub))


def test_sftp_fetch_with_progress(sshd, tmp_path):
    data = os.urandom(3 * (1 << 20) + 12345)
    remote = tmp_path / "vmcore.0"
    remote.write_bytes(data)
    seen: list[tuple[int, int]] = []
    with session(sshd) as s:
        result = s.fetch(
            str(remote), tmp_path / "got", progress=True, on_progress=lambda d, t: seen.append((d, t))
        )
    assert (tmp_path / "got").read_bytes() == data
    assert result.size == len(data) and result.resumed_from == 0
    assert seen[-1] == (len(data), len(data)) and len(seen) >= 4
    assert not (tmp_path / "got.part").exists()


def test_sftp_fetch_resumes_a_partial_download_and_never_overwrites(sshd, tmp_path):
    data = os.urandom(2 * (1 << 20) + 7)
    remote = tmp_path / "vmcore.1"
    remote.write_bytes(data)
    (tmp_path / "local.part").write_bytes(data[:1000000])
    with session(sshd) as s:
        result = s.fetch(str(remote), tmp_path / "local")
        assert result.resumed_from == 1000000
        assert hashlib.sha256((tmp_path / "local").read_bytes()).digest() == hashlib.sha256(data).digest()
        with pytest.raises(FileExistsError):
            s.fetch(str(remote), tmp_path / "local")
        with pytest.raises(SshError, match="cannot stat"):
            s.fetch(str(tmp_path / "missing"), tmp_path / "x")
    assert (tmp_path / "local").read_bytes() == data


def test_pinned_key_of_another_type_refuses_too(sshd, tmp_path):
    import subprocess

    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "rsa")], check=True
    )
    pinned = (tmp_path / "rsa.pub").read_text().strip()
    with pytest.raises(HostKeyMismatch) as info:
        session(sshd, pinned=pinned).connect()
    assert "ssh-rsa" in str(info.value) and "ssh-ed25519" in str(info.value)
    assert fingerprint(load_public_key(sshd.host_key_pub)) in str(info.value)

"""SSH to a guest: key authentication, a pinned host key, commands with exit status, SFTP downloads.

Why pinned: the harness recorded the guest's host key when it prepared the image; any other key on that
address means we are talking to something else (a stale VM on a reused port, a wrong forward). A
mismatch refuses to connect and names both SHA256 fingerprints (`HostKeyMismatch`). Trust on first use
is available but explicit (`pinned_host_key=None, trust_on_first_use=True`), and the key seen is kept in
`SshSession.host_key` so the caller can pin it next time.

Downloads (`fetch`) use paramiko's SFTP prefetch (many requests in flight: a vmcore is hundreds of MB),
show a progress bar (rich) when asked, write to ``NAME.part`` and rename when complete and size-checked,
resume an interrupted ``.part``, and never overwrite an existing file.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.util.progress import transfer_progress

#: SFTP read requests kept in flight (32 KiB each): fast on a local link, bounded memory for a big vmcore
PREFETCH_REQUESTS = 128


class SshError(RuntimeError):
    """Connecting, authenticating or running a command over SSH failed; says where and what."""


class HostKeyMismatch(SshError):
    """The server presented a host key other than the pinned one."""

    def __init__(self, address: str, expected: paramiko.PKey, got: paramiko.PKey) -> None:
        self.address = address
        self.expected_fingerprint = fingerprint(expected)
        self.got_fingerprint = fingerprint(got)
        super().__init__(
            f"host key of {address} does not match the pinned key: refusing to connect.\n"
            f"  pinned:    {expected.get_name()} {self.expected_fingerprint}\n"
            f"  presented: {got.get_name()} {self.got_fingerprint}\n"
            "  (a different or re-created guest on this address? re-prepare the image to record its key)"
        )


class CommandError(SshError):
    def __init__(self, result: SshResult) -> None:
        self.result = result
        super().__init__(
            f"ssh command {result.command!r} exited with status {result.status}\n"
            f"  stdout: {result.stdout[-2000:]!r}\n  stderr: {result.stderr[-2000:]!r}"
        )


@dataclass(frozen=True)
class SshResult:
    command: str
    stdout: str
    stderr: str
    status: int

    @property
    def ok(self) -> bool:
        return self.status == 0

    @property
    def output(self) -> str:  # same name as Console's CommandResult
        return self.stdout


@dataclass(frozen=True)
class FetchResult:
    remote: str
    local: Path
    size: int
    seconds: float
    resumed_from: int

    @property
    def mib_per_s(self) -> float:
        return (self.size - self.resumed_from) / (1 << 20) / self.seconds if self.seconds > 0 else 0.0


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def load_public_key(value: str | os.PathLike[str] | paramiko.PKey) -> paramiko.PKey:
    """A public key from a PKey, an OpenSSH line (``ssh-ed25519 AAAA... comment``) or a ``.pub`` file."""
    if isinstance(value, paramiko.PKey):
        return value
    text = str(value)
    if not text.startswith(("ssh-", "ecdsa-", "sk-")) and Path(text).is_file():
        text = Path(text).read_text()
    parts = text.split()
    if len(parts) < 2:
        raise SshError(f"not an OpenSSH public key: {text[:80]!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except Exception as exc:  # paramiko raises several types for bad keys
        raise SshError(f"cannot decode public key of type {parts[0]!r}: {exc}") from exc


def load_private_key(value: str | os.PathLike[str] | paramiko.PKey) -> paramiko.PKey:
    if isinstance(value, paramiko.PKey):
        return value
    try:
        return paramiko.PKey.from_path(value)
    except Exception as exc:
        raise SshError(f"cannot load private key {value}: {exc}") from exc


class _Refuse(paramiko.MissingHostKeyPolicy):
    """The server offered no key of the pinned type (e.g. pinned RSA, server presents ed25519)."""

    def __init__(self, pinned: paramiko.PKey, address: str) -> None:
        self.pinned, self.address = pinned, address

    def missing_host_key(self, client, hostname, key):
        raise HostKeyMismatch(self.address, self.pinned, key)


class _Record(paramiko.MissingHostKeyPolicy):
    def __init__(self) -> None:
        self.key: paramiko.PKey | None = None

    def missing_host_key(self, client, hostname, key):
        self.key = key


class SshSession:
    """One SSH connection to a guest (context manager)."""

    def __init__(
        self,
        host: str,
        port: int = 22,
        *,
        user: str = "root",
        key: str | os.PathLike[str] | paramiko.PKey,
        pinned_host_key: str | os.PathLike[str] | paramiko.PKey | None,
        trust_on_first_use: bool = False,
        connect_timeout: float = 30.0,
    ) -> None:
        self.host, self.port, self.user = host, port, user
        self.address = f"{user}@{host}:{port}"
        self._key = load_private_key(key)
        self.pinned = load_public_key(pinned_host_key) if pinned_host_key is not None else None
        if self.pinned is None and not trust_on_first_use:
            raise SshError(f"{self.address}: no pinned host key; pass one or trust_on_first_use=True")
        self.connect_timeout = connect_timeout
        self.client = paramiko.SSHClient()
        self.host_key: paramiko.PKey | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def connect(self) -> SshSession:
        entry = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        record = _Record()
        if self.pinned is not None:
            self.client.get_host_keys().add(entry, self.pinned.get_name(), self.pinned)
            self.client.set_missing_host_key_policy(_Refuse(self.pinned, f"{self.host}:{self.port}"))
        else:
            self.client.set_missing_host_key_policy(record)
        try:
            self.client.connect(
                self.host,
                port=self.port,
                username=self.user,
                pkey=self._key,
                allow_agent=False,
                look_for_keys=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            self.client.close()
            raise HostKeyMismatch(f"{self.host}:{self.port}", exc.expected_key, exc.key) from None
        except HostKeyMismatch:
            self.client.close()
            raise
        except paramiko.AuthenticationException as exc:
            self.client.close()
            raise SshError(f"{self.address}: key authentication failed ({exc})") from exc
        except (OSError, paramiko.SSHException) as exc:
            self.client.close()
            raise SshError(f"{self.address}: cannot connect: {exc}") from exc
        transport = self.client.get_transport()
        self.host_key = transport.get_remote_server_key() if transport else record.key
        return self

    def __enter__(self) -> SshSession:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
            self._sftp = None
        self.client.close()

    # ------------------------------------------------------------ commands
    def run(self, command: str, timeout: float | None = 300.0, *, check: bool = False) -> SshResult:
        """Run `command`, wait for it, return stdout, stderr and exit status."""
        try:
            _stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read().decode("utf-8", "replace")
            err = stderr.read().decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except (OSError, paramiko.SSHException) as exc:  # socket.timeout is an OSError
            raise SshError(f"{self.address}: command {command!r} failed: {exc}") from exc
        result = SshResult(command, out, err, status)
        if check and not result.ok:
            raise CommandError(result)
        return result

    def start(self, command: str) -> paramiko.Channel:
        """Start `command` and return at once (e.g. ``sysctl debug.kdb.enter=1``, which never returns
        while the kernel sits in ddb)."""
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise SshError(f"{self.address}: not connected")
        channel = transport.open_session()
        channel.exec_command(command)
        return channel

    # ------------------------------------------------------------ files
    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def listdir(self, path: str) -> list[str]:
        return self.sftp.listdir(path)

    def fetch(
        self,
        remote: str,
        local: str | os.PathLike[str],
        *,
        progress: bool = False,
        on_progress: Callable[[int, int], None] | None = None,
        resume: bool = True,
        block: int = 1 << 20,
    ) -> FetchResult:
        """Download `remote` to `local` (see module docstring); `on_progress(done, total)` per block."""
        local = Path(local)
        if local.exists():
            raise FileExistsError(f"{local} exists; fetch never overwrites (remote {remote})")
        part = local.with_name(local.name + ".part")
        try:
            st = self.sftp.stat(remote)
        except OSError as exc:
            raise SshError(f"{self.address}: cannot stat {remote}: {exc}") from exc
        if st.st_mode is not None and not stat.S_ISREG(st.st_mode):
            raise SshError(f"{self.address}: {remote} is not a regular file")
        total = int(st.st_size or 0)
        offset = part.stat().st_size if (resume and part.exists()) else 0
        if offset > total:
            raise SshError(f"{part} ({offset} bytes) is longer than {remote} ({total} bytes); remove it")
        started = time.monotonic()
        try:
            with (
                transfer_progress(progress, Path(remote).name, total, start=offset) as bar,
                self.sftp.open(remote, "rb") as rf,
                open(part, "ab" if offset else "wb") as lf,
            ):
                rf.seek(offset)
                rf.prefetch(total, max_concurrent_requests=PREFETCH_REQUESTS)
                done = offset
                while done < total:
                    chunk = rf.read(min(block, total - done))
                    if not chunk:
                        break
                    lf.write(chunk)
                    done += len(chunk)
                    bar(done)
                    if on_progress:
                        on_progress(done, total)
        except OSError as exc:
            got = part.stat().st_size if part.exists() else 0
            raise SshError(
                f"{self.address}: download of {remote} stopped at {got} of {total} bytes ({exc}); "
                "call fetch again to resume"
            ) from exc
        size = part.stat().st_size
        if size != total:
            raise SshError(f"{self.address}: {remote} is {total} bytes but {size} arrived (kept {part})")
        if local.exists():
            raise FileExistsError(f"{local} appeared during the download; the data is kept in {part}")
        os.replace(part, local)
        return FetchResult(remote, local, total, time.monotonic() - started, offset)

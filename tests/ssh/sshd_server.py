"""A real OpenSSH server on 127.0.0.1 (Debian's openssh-server) for the tests of tests/ssh, tests/freebsd.

Started per test module with a temporary host key, an authorized key of ours, and its own config; as root
it needs ``StrictModes no`` (the temporary directory is not owned the way sshd insists on) and
``/run/sshd`` (its privilege-separation directory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    host: str
    port: int
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    root: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, kind: str = "ed25519") -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)], check=True)


@contextmanager
def running_sshd(root: Path) -> Iterator[SshServer]:
    """Start sshd with its keys and config under `root` (an empty directory); stop it afterwards."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        raise FileNotFoundError("openssh-server is not installed (apt-get install openssh-server)")
    _keygen(root / "host_ed25519")
    _keygen(root / "client_ed25519")
    (root / "authorized_keys").write_text((root / "client_ed25519.pub").read_text())
    port = _free_port()
    user = os.environ.get("USER") or "root"
    config = root / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / "host_ed25519"}
AuthorizedKeysFile {root / "authorized_keys"}
PidFile {root / "sshd.pid"}
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
AllowUsers {user}
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""
    )
    with contextlib.suppress(PermissionError):  # only root's sshd needs its privsep directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    log = open(root / "sshd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {(root / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError(f"sshd did not listen on {port}: {(root / 'sshd.log').read_text()}")
    try:
        yield SshServer(
            "127.0.0.1", port, (root / "host_ed25519.pub").read_text().strip(), root / "client_ed25519", root
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    try:
        with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
            yield server
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def other_host_key(tmp_path) -> str:
    """A host key that is not the server's (for the mismatch test)."""
    _keygen(tmp_path / "other")
    return (tmp_path / "other.pub").read_text().strip()

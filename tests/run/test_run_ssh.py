"""The image path's kernel fetch over SSH, against a real sshd on 127.0.0.1 (tests/ssh/sshd_server.py):
the prepared image's key, the recorded host key pinned, the file fetched, and a clear line otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.run.guest_ssh import fetch_kernel_over_ssh
from harness.run.retrieve.savecore_sftp import crash_bounds as _crash_bounds
from tests.ssh.sshd_server import other_host_key, sshd  # noqa: F401 - pytest fixtures


@dataclass
class Prepared:
    """The two fields of images.PreparedImage the fetch uses."""

    ssh_private_key: Path
    host_key: str


@dataclass
class Forwarded:
    """Stands in for the Guest: only its forwarded SSH port is used."""

    ssh_port: int


class RecordingShell:
    """Stands in for the console shell: records commands, answers from a table."""

    def __init__(self, answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.commands: list[str] = []
        self.answers = answers or {}

    def run(self, command: str, deadline: float = 0.0):
        from types import SimpleNamespace

        self.commands.append(command)
        status, output = self.answers.get(command, (0, ""))
        return SimpleNamespace(status=status, output=output)


def test_kernel_fetched_with_the_pinned_host_key(sshd, tmp_path):  # noqa: F811
    kernel = tmp_path / "remote-kernel"
    kernel.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    said: list[str] = []
    shell = RecordingShell()
    path, where = fetch_kernel_over_ssh(
        Forwarded(sshd.port), shell, Prepared(sshd.client_key, sshd.host_key_pub), run_dir, said.append,
        remote=str(kernel),
    )
    assert path == run_dir / "kernel" and path.read_bytes() == kernel.read_bytes()
    assert where.startswith(f"{kernel} of the running image, fetched over SSH (pinned host key")
    assert "dhclient vtnet0" in shell.commands[0]


def test_wrong_host_key_means_no_kernel_and_says_why(sshd, other_host_key, tmp_path):  # noqa: F811
    said: list[str] = []
    path, where = fetch_kernel_over_ssh(
        Forwarded(sshd.port), RecordingShell(), Prepared(sshd.client_key, other_host_key), tmp_path,
        said.append, connect_seconds=0,
    )
    assert path is None and not (tmp_path / "kernel").exists()
    assert where.startswith("none: fetching /boot/kernel/kernel over SSH failed: ")
    assert "does not match the pinned key" in where
    assert said and said[0].startswith("no kernel file for symbols")


def test_no_prepared_image_means_no_kernel(tmp_path):
    path, where = fetch_kernel_over_ssh(Forwarded(22), RecordingShell(), None, tmp_path, lambda _m: None)
    assert path is None and "no prepared image" in where


def test_crash_bounds_before_the_dump():
    assert _crash_bounds(RecordingShell({"cat /var/crash/bounds 2>/dev/null": (0, "3\r\n")})) == 2
    assert _crash_bounds(RecordingShell({"cat /var/crash/bounds 2>/dev/null": (1, "")})) is None

"""Fixtures for the SSH tests: a real sshd on 127.0.0.1 (see sshd_server.py)."""

from tests.ssh.sshd_server import other_host_key, sshd  # noqa: F401 - pytest fixtures

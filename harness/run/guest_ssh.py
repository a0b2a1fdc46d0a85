"""SSH into a prepared image's guest (our key, its recorded host key pinned), and the kernel file for
symbols fetched that way."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from harness.run.config import Progress
from harness.vm.ssh import HostKeyMismatch, SshError, SshSession

#: BASIC-CI may not start DHCP on its own; the console shell can (harmless when it already has an IP)
DHCP_COMMAND = "ifconfig vtnet0 inet | grep -q 'inet ' || dhclient vtnet0"


def ssh_session(guest: Any, prepared: Any, *, seconds: float = 120.0) -> Any:
    """An SSH session to the guest with the prepared image's key, pinning its recorded host key; retried
    while sshd/DHCP come up (the console login can be quicker than rc's sshd)."""
    if prepared is None or getattr(guest, "ssh_port", None) is None:
        raise SshError("no prepared image with our SSH key, or no SSH port forwarded to the guest")
    end = time.monotonic() + seconds
    while True:
        session = SshSession(
            "127.0.0.1", guest.ssh_port, key=prepared.ssh_private_key, pinned_host_key=prepared.host_key
        )
        try:
            return session.connect()
        except HostKeyMismatch:
            raise
        except SshError:
            if time.monotonic() > end:
                raise
            time.sleep(2.0)


def fetch_kernel_over_ssh(
    guest: Any,
    shell: Any,
    prepared: Any,
    run_dir: Path,
    progress: Progress,
    *,
    remote: str = "/boot/kernel/kernel",
    connect_seconds: float = 120.0,
) -> tuple[Path | None, str]:
    """``/boot/kernel/kernel`` of the running image over SFTP (pinned host key), before the trigger, so
    attribution by symbol and the ddb cross-checks work. Returns (path, where it came from); without SSH
    the run goes on without symbols and the report says why."""
    with contextlib.suppress(Exception):
        shell.run(DHCP_COMMAND, 60.0)
    try:
        with ssh_session(guest, prepared, seconds=connect_seconds) as ssh:
            res = ssh.fetch(remote, run_dir / "kernel", progress=True)
            ident = ssh.run("uname -v", 30.0).stdout.strip()
    except (SshError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        progress(f"no kernel file for symbols: {first}")
        return None, f"none: fetching {remote} over SSH failed: {first}"
    progress(f"fetched {remote} over SSH ({res.size >> 20} MiB)")
    return res.local, f"{remote} of the running image, fetched over SSH (pinned host key; {ident})"

"""Driving the tiny Linux test guest: its spec, its boot phase, and getting a prompt after a restore."""

from __future__ import annotations

import re

from harness.util.deadline import Deadline
from harness.vm.domain_xml import GuestSpec, KernelBoot
from harness.vm.guest import Guest

from .builder import KERNEL_LOG_LINE, PROMPT_RE, READY_BANNER, TestGuestFiles

BOOT_SECONDS = 240  # TCG on two busy cores; a normal boot takes ~10 s
PANIC_RE = r"Kernel panic - not syncing[^\r\n]*\r?\n"


def linux_spec(files: TestGuestFiles, **kw) -> GuestSpec:
    """A GuestSpec that boots the test kernel + initramfs directly (512 MiB unless told otherwise)."""
    kw.setdefault("memory_mib", 512)
    kw.setdefault("accel", "auto")
    return GuestSpec(boot=KernelBoot(files.kernel.vmlinuz, files.initramfs, files.cmdline), **kw)


def wait_ready(guest: Guest, seconds: float = BOOT_SECONDS) -> None:
    """Boot phase: banner then first prompt, with a kernel panic ending the wait at once."""
    guest.console.arm_failure("kernel-panic", PANIC_RE)
    guest.console.kernel_lines = re.compile(KERNEL_LOG_LINE)
    dl = Deadline(seconds, "linux boot to shell")
    guest.console.expect({"ready": READY_BANNER}, dl)
    guest.console.expect({"prompt": PROMPT_RE}, dl)


def prompt_again(guest: Guest, seconds: float = 30) -> None:
    """Get a fresh prompt (after a restore the shell sits idle at its old one): poke and wait."""
    guest.console.kernel_lines = re.compile(KERNEL_LOG_LINE)
    guest.console.discard_pending()
    guest.console.sendline("")
    guest.console.expect({"prompt": PROMPT_RE}, Deadline(seconds, "fresh prompt"))

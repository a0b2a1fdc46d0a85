"""Does KVM really work on this host? Decide by booting something under it, never by `/dev/kvm` alone.

On nested or paravirtual hosts `/dev/kvm` can exist while QEMU aborts at vCPU setup ("failed to set MSR
0x10a" for ``-cpu host``) or a guest dies in early FPU setup ("KVM internal error"). The probe therefore
boots real code with ``-accel kvm -cpu host``:

1. a 512-byte boot sector (built below, no files needed) that prints a banner on COM1 and leaves QEMU
   through the isa-debug-exit port: proves vCPU creation and real-mode execution;
2. when a Linux kernel is at hand (the cached test guest kernel, or ``/boot/vmlinuz-$(uname -r)``), that
   kernel booted without a root file system: it only reaches its "VFS: Unable to mount root" panic after
   FPU/XSAVE, APIC and SMP setup, which is where broken nested KVM fails.

Standard library only: `fbsd-hil doctor` runs this before any virtualenv exists.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
BOOT_BANNER = b"FBSDHIL-KVM-OK"
#: where the probe verdict is cached (keyed by host kernel, QEMU binary and /dev/kvm identity)
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fbsd-hil"
CACHE_FILE = CACHE_DIR / "kvm-probe.json"
TEST_KERNEL_DIR = CACHE_DIR / "test-linux-guest"


def probe_boot_sector() -> bytes:
    """A real-mode boot sector: print BOOT_BANNER on COM1, then write 0 to port 0xf4 (isa-debug-exit)."""
    msg_addr = 0x7C00 + 29
    code = bytes(
        [
            0xFA,  # cli
            0x31, 0xC0,  # xor ax, ax
            0x8E, 0xD8,  # mov ds, ax
            0xFC,  # cld
            0xBA, 0xF8, 0x03,  # mov dx, 0x3f8
            0xBE, msg_addr & 0xFF, msg_addr >> 8,  # mov si, msg
            0xAC,  # loop: lodsb
            0x84, 0xC0,  # test al, al
            0x74, 0x03,  # jz done
            0xEE,  # out dx, al
            0xEB, 0xF8,  # jmp loop
            0xBA, 0xF4, 0x00,  # done: mov dx, 0xf4
            0xB0, 0x00,  # mov al, 0
            0xEE,  # out dx, al   -> QEMU exits with status 1
            0xF4,  # hlt
            0xEB, 0xFD,  # jmp hlt
        ]
    )  # fmt: skip
    assert len(code) == 29
    sector = code + BOOT_BANNER + b"\r\n\x00"
    return sector.ljust(510, b"\x00") + b"\x55\xaa"


@dataclass
class KvmVerdict:
    """Outcome of the probe; `usable` decides ``accel="auto"``."""

    usable: bool
    reason: str
    steps: list[str] = field(default_factory=list)
    key: str = ""
    probed_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _cache_key() -> str:
    qemu = shutil.which(QEMU) or ""
    try:
        st = os.stat(qemu)
        qemu_id = f"{qemu}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        qemu_id = "no-qemu"
    try:
        kst = os.stat("/dev/kvm")
        kvm_id = f"{kst.st_rdev}:{kst.st_mode:o}:{kst.st_gid}"
    except OSError:
        kvm_id = "no-kvm"
    return f"{platform.release()}|{qemu_id}|{kvm_id}|{os.geteuid()}"


def find_probe_kernel() -> Path | None:
    """A Linux kernel to boot for probe step 2, if one is on this host."""
    candidates = [TEST_KERNEL_DIR / "vmlinuz", Path(f"/boot/vmlinuz-{platform.release()}")]
    for c in candidates:
        if c.is_file() and os.access(c, os.R_OK):
            return c
    return None


def _run_qemu(args: list[str], timeout: float) -> tuple[int | None, str]:
    try:
        proc = subprocess.run(
            [QEMU, *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return None, out.decode(errors="replace")
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def probe_kvm(*, use_cache: bool = True, timeout: float = 60.0) -> KvmVerdict:
    """Boot under KVM (see module docstring) and say whether KVM is usable for real guests."""
    key = _cache_key()
    if use_cache:
        try:
            cached = json.loads(CACHE_FILE.read_text())
            if cached.get("key") == key:
                return KvmVerdict(**cached)
        except (OSError, ValueError, TypeError):
            pass
    verdict = _probe_uncached(timeout)
    verdict.key = key
    verdict.probed_at = time.time()
    try:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        CACHE_FILE.write_text(verdict.to_json())
    except OSError:
        pass
    return verdict


def _probe_uncached(timeout: float) -> KvmVerdict:
    steps: list[str] = []
    if shutil.which(QEMU) is None:
        return KvmVerdict(False, f"{QEMU} is not installed", steps)
    if not os.path.exists("/dev/kvm"):
        return KvmVerdict(False, "/dev/kvm does not exist", steps)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return KvmVerdict(False, "/dev/kvm is not read/writable by this user", steps)
    common = ["-accel", "kvm", "-cpu", "host", "-display", "none", "-nodefaults", "-no-reboot", "-m", "128"]
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-kvm-probe-") as tmp:
        disk = Path(tmp, "boot.img")
        disk.write_bytes(probe_boot_sector())
        rc, out = _run_qemu(
            [
                *common,
                "-drive",
                f"file={disk},format=raw,if=ide",
                "-serial",
                "stdio",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
            ],  # fmt: skip
            timeout=min(timeout, 30.0),
        )
        if rc != 1 or BOOT_BANNER.decode() not in out:
            detail = out.strip().splitlines()[-3:] if out.strip() else ["(no output)"]
            why = "timed out" if rc is None else f"exit status {rc}"
            return KvmVerdict(False, f"boot sector under KVM failed ({why}): {' | '.join(detail)}", steps)
        steps.append("boot sector ran under -accel kvm -cpu host")
    kernel = find_probe_kernel()
    if kernel is None:
        steps.append("no Linux kernel on this host for the deeper probe (run the vm tests once to cache one)")
        return KvmVerdict(True, "boot sector probe passed (deeper kernel probe not possible)", steps)
    rc, out = _run_qemu(
        [
            *common,
            "-smp",
            "2",
            "-kernel",
            str(kernel),
            "-append",
            "console=ttyS0 panic=-1 loglevel=4",
            "-serial",
            "stdio",
        ],  # fmt: skip
        timeout=timeout,
    )
    if "VFS: Unable to mount root" in out or ("Kernel panic" in out and "not syncing" in out):
        if "KVM internal error" in out:
            return KvmVerdict(False, "KVM internal error while booting the probe kernel", steps)
        steps.append(f"{kernel} booted to its no-root panic under KVM")
        return KvmVerdict(True, "KVM boots a real kernel", steps)
    tail = " | ".join(out.strip().splitlines()[-3:]) or "(no output)"
    why = "timed out" if rc is None else f"exit status {rc}"
    return KvmVerdict(False, f"kernel {kernel} did not boot under KVM ({why}): {tail}", steps)


def resolve_accel(accel: str) -> str:
    """Map ``auto|kvm|tcg`` to what to use: ``auto`` is ``kvm`` only when the probe passed."""
    if accel not in ("auto", "kvm", "tcg"):
        raise ValueError(f"accel must be auto, kvm or tcg, got {accel!r}")
    if accel != "auto":
        return accel
    env = os.environ.get("FBSD_HIL_ACCEL")
    if env in ("kvm", "tcg"):
        return env
    return "kvm" if probe_kvm().usable else "tcg"

"""Build (and cache) the tiny Linux test guest: Debian's own kernel package + a busybox initramfs.

Why Linux: no FreeBSD image can be downloaded on these machines, but every guest-layer feature (serial
console, NMI, BREAK, live memory, save/restore, death and hangs) can be proven honestly with a real
kernel. The kernel comes from Debian's archive with ``apt-get download`` and is unpacked with
``dpkg-deb -x``; its virtio/AHCI drivers are modules, so the needed ``.ko`` files (with their
dependencies, read from each module's ``.modinfo``) go into an initramfs together with
``busybox-static``. The initramfs is a newc cpio written here in Python, so no root or mknod is needed
for ``/dev/console``.

Cache: ``$XDG_CACHE_HOME/fbsd-hil/test-linux-guest/<kernel package>/`` (vmlinuz, config, modules) and a
``vmlinuz`` symlink next to it (the KVM probe boots it). Repeated runs reuse it; building takes a few
seconds after the one download.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.vm.accel import TEST_KERNEL_DIR

#: printed by /init when the shell is about to start
READY_BANNER = "FBSDHIL-LINUX-READY"
#: the shell prompt on the test guest's serial console
PROMPT = "fbh-linux# "
PROMPT_RE = r"fbh-linux# "
#: modules loaded at boot (dependencies are added automatically)
MODULES = ("virtio_pci", "virtio_blk", "virtio_net", "ahci", "sd_mod")
#: kernel command line for the serial console guest (nokaslr: fixed kernel physical placement)
CMDLINE = "console=ttyS0,115200 nokaslr panic=0 loglevel=7 sysrq_always_enabled=1 tsc=reliable"
#: console log level /init sets once booted: only KERN_ERR and worse (0-3) are printed on the console
QUIET_CONSOLE_LOGLEVEL = 4
#: a line the guest's kernel prints on the console unasked (printk with its timestamp), possibly in the
#: middle of a command's output line
KERNEL_LOG_LINE = r"\[ *\d+\.\d{6}\] [^\r\n]*\r*\n"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")


class GuestBuildError(RuntimeError):
    """The test guest could not be built; the message says which step and how to fix it."""


@dataclass(frozen=True)
class LinuxKernel:
    package: str
    vmlinuz: Path
    system_map: Path
    config: Path
    modules_dir: Path


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise GuestBuildError(f"`{' '.join(cmd)}` failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r.stdout


def kernel_package() -> str | None:
    """The versioned package behind Debian's ``linux-image-amd64`` metapackage (None when apt can't say)."""
    try:
        out = _run(["apt-cache", "depends", "linux-image-amd64"])
    except (GuestBuildError, FileNotFoundError):
        return None
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\b", out)
    return m.group(1) if m else None


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", data)
    if not m or not m.group(1):
        return []
    return [d for d in m.group(1).decode().split(",") if d]


def ensure_kernel(cache: Path = TEST_KERNEL_DIR) -> LinuxKernel:
    """Download + unpack the kernel package once; return the cached files."""
    cache.mkdir(parents=True, exist_ok=True)
    package = kernel_package()
    if package is None:
        cached = sorted(p for p in cache.glob("linux-image-*") if (p / "vmlinuz").is_file())
        if not cached:
            raise GuestBuildError("apt-cache cannot name the Debian kernel package and nothing is cached")
        package = cached[-1].name
    dest = cache / package
    if not (dest / "vmlinuz").is_file():
        with tempfile.TemporaryDirectory(prefix="fbsd-hil-kernel-", dir=cache) as tmp:
            tmpd = Path(tmp)
            os.chmod(tmpd, 0o755)  # apt's _apt user must be able to write the download here
            last: GuestBuildError | None = None
            for name in (f"{package}-unsigned", package):
                try:
                    _run(["apt-get", "download", name], cwd=tmpd)
                    break
                except GuestBuildError as exc:
                    last = exc
            else:
                raise GuestBuildError(f"apt-get download of {package} failed: {last}")
            deb = next(tmpd.glob("*.deb"))
            _run(["dpkg-deb", "-x", str(deb), str(tmpd / "x")])
            root = tmpd / "x"
            vmlinuz = next((root / "boot").glob("vmlinuz-*"))
            release = vmlinuz.name.removeprefix("vmlinuz-")
            staging = tmpd / "out"
            (staging / "modules").mkdir(parents=True)
            shutil.copy2(vmlinuz, staging / "vmlinuz")
            shutil.copy2(root / "boot" / f"System.map-{release}", staging / "System.map")
            shutil.copy2(root / "boot" / f"config-{release}", staging / "config")
            kos = {p.name.removesuffix(".ko"): p for p in (root / "lib/modules" / release).rglob("*.ko")}
            wanted: list[str] = []

            def add(mod: str) -> None:
                name = mod.replace("-", "_")
                key = name if name in kos else mod
                if key not in kos:
                    return  # built in
                for dep in _modinfo_depends(kos[key]):
                    add(dep)
                if key not in wanted:
                    wanted.append(key)

            for mod in MODULES:
                add(mod)
            for mod in wanted:
                shutil.copy2(kos[mod], staging / "modules" / f"{mod}.ko")
            (staging / "modules" / "order").write_text("\n".join(wanted) + "\n")
            os.replace(staging, dest)
    link = cache / "vmlinuz"
    if not link.exists() or link.resolve() != (dest / "vmlinuz").resolve():
        tmp_link = cache / "vmlinuz.new"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(dest / "vmlinuz")
        os.replace(tmp_link, link)
    return LinuxKernel(package, dest / "vmlinuz", dest / "System.map", dest / "config", dest / "modules")


INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp && mount -t tmpfs tmp /tmp
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
echo 1 > /proc/sys/kernel/sysrq
# From here on only errors and worse reach the console (panics, NMI reports and sysrq replies still do):
# a warning such as "hrtimer: interrupt took ... ns" on a busy host must not land inside a command's
# output. The boot messages before this point stay on the console.
echo {QUIET_CONSOLE_LOGLEVEL} > /proc/sys/kernel/printk
ip link set lo up 2>/dev/null
if ip link show eth0 >/dev/null 2>&1; then
  ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
fi
echo "{READY_BANNER} $(uname -r)"
export PS1='{PROMPT}'
while true; do setsid cttyhack sh; done
"""


def _newc_entry(
    name: str, mode: int, data: bytes = b"", *, ino: int, rdev: tuple[int, int] = (0, 0)
) -> bytes:
    namez = name.encode() + b"\x00"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
    head = b"070701" + b"".join(f"{f:08x}".encode() for f in fields)
    out = head + namez
    out += b"\x00" * (-len(out) % 4)
    out += data
    out += b"\x00" * (-len(out) % 4)
    return out


def _elf_interpreter(elf: bytes) -> bool:
    """True when a 64-bit little-endian ELF has a PT_INTERP program header (dynamically linked)."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        raise GuestBuildError("busybox is not a 64-bit ELF executable")
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return any(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] == 3 for i in range(phnum))


def build_initramfs(out: Path, kernel: LinuxKernel, *, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write a newc initramfs with busybox, /init, /dev/console and the kernel's modules."""
    busybox = next((Path(p) for p in BUSYBOX_CANDIDATES if Path(p).is_file()), None)
    if busybox is None:
        raise GuestBuildError("busybox not found: apt-get install busybox-static")
    if _elf_interpreter(busybox.read_bytes()):
        raise GuestBuildError(f"{busybox} is dynamically linked: apt-get install busybox-static")
    entries: list[bytes] = []
    ino = 1

    def add(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nonlocal ino
        entries.append(_newc_entry(name, mode, data, ino=ino, rdev=rdev))
        ino += 1

    for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules", "root"):
        add(d, 0o040755)
    add("dev/console", 0o020600, rdev=(5, 1))
    add("dev/ttyS0", 0o020600, rdev=(4, 64))
    add("bin/busybox", 0o100755, busybox.read_bytes())
    add("init", 0o100755, INIT_SCRIPT.encode())
    for ko in sorted(kernel.modules_dir.glob("*.ko")):
        add(f"lib/modules/{ko.name}", 0o100644, ko.read_bytes())
    add("lib/modules/order", 0o100644, (kernel.modules_dir / "order").read_bytes())
    for name, data in (extra_files or {}).items():
        add(name.lstrip("/"), 0o100755, data)
    entries.append(_newc_entry("TRAILER!!!", 0, ino=0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(b"".join(entries))
    os.replace(tmp, out)
    return out


@dataclass(frozen=True)
class TestGuestFiles:
    kernel: LinuxKernel
    initramfs: Path
    cmdline: str


def ensure_test_guest(cache: Path = TEST_KERNEL_DIR) -> TestGuestFiles:
    """Kernel (cached download) + initramfs (rebuilt when busybox, /init or modules change).

    Serialised with a lock file: pytest-xdist workers may all ask for it at once.
    """
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_test_guest_locked(cache)


def _ensure_test_guest_locked(cache: Path) -> TestGuestFiles:
    kernel = ensure_kernel(cache)
    initramfs = kernel.vmlinuz.parent / "initramfs.cpio"
    stamp_src = INIT_SCRIPT + "".join(
        f"{p}:{Path(p).stat().st_mtime_ns}" for p in BUSYBOX_CANDIDATES if Path(p).exists()
    )
    stamp = kernel.vmlinuz.parent / "initramfs.stamp"
    if not initramfs.is_file() or not stamp.is_file() or stamp.read_text() != stamp_src:
        build_initramfs(initramfs, kernel)
        stamp.write_text(stamp_src)
    return TestGuestFiles(kernel=kernel, initramfs=initramfs, cmdline=CMDLINE)

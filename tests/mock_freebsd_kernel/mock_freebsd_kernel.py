"""Build the MockFreeBSDKernel: a test stand-in for a FreeBSD amd64 kernel (it is NOT FreeBSD).

No FreeBSD kernel exists on the machines that run fbsd-hil's own tests, yet `fbsd-hil repro --kernel`
must be exercised end to end. This small freestanding x86-64 program (``src/``: C + asm + linker
script) is booted by GRUB's ``kfreebsd`` exactly like a FreeBSD kernel (ELF64 linked at KERNBASE,
loaded at 2 MiB, kernel environment from GRUB's preload metadata) and imitates FreeBSD's console
protocol (boot banner, mountroot wait, NMI -> ddb, the ddb commands the harness sends) and dump
formats (kerneldumpheader v4 + amd64 minidump v2 or ELF full dump, written by the guest to a legacy
virtio-blk dump disk). See README.md for what it does and does not imitate.

`build_mock_freebsd_kernel(cache)` compiles with the system gcc and caches the ELF under a key made
of the source files' SHA-256 and the compiler version. ``current_kernel=True`` builds the variant that
behaves like a FreeBSD 13+ kernel at GRUB's hand-over (boot metadata only under the module type
"elf kernel"; otherwise a silent triple fault before any output).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parent / "src"
SOURCES = ("start.S", "mock.c", "mock.ld", "mock_release.h")
#: ELF e_ident[EI_OSABI] of FreeBSD binaries (a FreeBSD kernel carries it; GRUB does not insist)
ELFOSABI_FREEBSD = 9
CFLAGS = [
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-no-pie",
    "-fno-pic",
    "-mcmodel=kernel",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-builtin",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=none",
    "-Wl,--no-warn-rwx-segments",
]
#: the kenv knob that makes the mock corrupt the dump's copy of one page (perturbation test)
CORRUPT_KNOB = "mock.corrupt_dump_page"


class MockKernelBuildError(RuntimeError):
    """gcc missing or the build failed; the message carries the command line and compiler output."""


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise MockKernelBuildError("gcc not found: install the Debian package gcc")
    return gcc


#: compiled in by ``current_kernel=True``: at GRUB's hand-over the mock behaves like a FreeBSD 13+
#: kernel (preload_initkmdp(): only the module type "elf kernel"; otherwise a silent triple fault)
CURRENT_KERNEL_DEFINE = "-DMOCK_CURRENT_KERNEL"


def _flags(current_kernel: bool) -> list[str]:
    return [*CFLAGS, CURRENT_KERNEL_DEFINE] if current_kernel else list(CFLAGS)


def source_key(gcc: str | None = None, *, current_kernel: bool = False) -> str:
    """SHA-256 over the sources, the flags and `gcc --version` (what the cached ELF depends on)."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (SRC / name).read_bytes() + b"\0")
    h.update(" ".join(_flags(current_kernel)).encode())
    version = subprocess.run([gcc or _gcc(), "--version"], capture_output=True, text=True, check=False).stdout
    h.update(version.encode())
    return h.hexdigest()


def default_cache() -> Path:
    base = os.environ.get("FBSD_HIL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fbsd-hil"
    )
    return Path(base) / "mock-freebsd-kernel"


def build_mock_freebsd_kernel(cache: Path | None = None, *, current_kernel: bool = False) -> Path:
    """Compile (or reuse) the mock kernel; returns the path of the ELF (``mock_freebsd_kernel``).

    ``current_kernel=True`` builds the variant that, like FreeBSD 13+ kernels, finds its preload
    metadata only under the module type "elf kernel" and triple-faults without a word otherwise
    (and calls itself 15.0-MOCK, writes minidump v3 by default).
    """
    gcc = _gcc()
    cache = Path(cache) if cache is not None else default_cache()
    key = source_key(gcc, current_kernel=current_kernel)
    out = cache / key[:24] / "mock_freebsd_kernel"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mock-kernel.", dir=out.parent) as tmp:
        elf = Path(tmp) / "mock_freebsd_kernel"
        cmd = [
            gcc,
            *_flags(current_kernel),
            f"-Wl,-T,{SRC / 'mock.ld'}",
            "-o",
            str(elf),
            str(SRC / "start.S"),
            str(SRC / "mock.c"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise MockKernelBuildError(
                f"`{' '.join(cmd)}` failed with status {proc.returncode}:\n{proc.stderr}"
            )
        data = bytearray(elf.read_bytes())
        data[7] = ELFOSABI_FREEBSD
        elf.write_bytes(bytes(data))
        elf.chmod(0o644)
        os.replace(elf, out)
    return out


if __name__ == "__main__":  # pragma: no cover - manual use: print the path of a built mock kernel
    import sys

    print(build_mock_freebsd_kernel(current_kernel="--current-kernel" in sys.argv[1:]))

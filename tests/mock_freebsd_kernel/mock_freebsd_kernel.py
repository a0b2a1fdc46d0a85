"""Build the MockFreeBSDKernel: a test stand-in for a FreeBSD amd64 kernel (it is NOT FreeBSD).

No FreeBSD kernel exists on the machines that run fbsd-hil's own tests, yet `fbsd-hil repro --kernel`
must be exercised end to end. This small freestanding x86-64 program (``src/``: C + asm + linker
script) is booted by GRUB's ``kfreebsd`` exactly like a FreeBSD kernel (ELF64 linked at KERNBASE,
loaded at 2 MiB, kernel environment from GRUB's preload metadata) and imitates FreeBSD's console
protocol (boot banner, mountroot wait, NMI -> ddb, the ddb commands the harness sends) and dump
formats (kerneldumpheader v4 + amd64 minidump v2 or ELF full dump, written by the guest to a legacy
virtio-blk dump disk). See README.md for what it does and does not imitate.

`build_mock_freebsd_kernel(cache)` compiles with the system gcc and caches the ELF under a key made
of the source files' SHA-256 and the compiler version. Like a FreeBSD kernel build it is compiled with
DWARF and split: the kernel keeps its `.symtab`, a GNU build ID and a `.gnu_debuglink` naming its
separate debug file (`<kernel>.debug`, FreeBSD's `kernel.debug`), which holds the DWARF
(`build_mock_freebsd_kernel_debug`, `mock_debug_path`, or both at once with `build_mock_kernel`).
``current_kernel=True`` builds the variant that
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
from typing import NamedTuple

SRC = Path(__file__).resolve().parent / "src"
SOURCES = (
    "start.S", "mock.c", "mock_sh.h", "mock.ld", "mock_release.h", "mock_gpt.h", "mock_witness.h",
    "mock_textdump.h", "mock_compress.h", "mock_crc32.h",
)
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
    "-g",
    "-gdwarf-4",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,--build-id=sha1",
    "-Wl,--no-warn-rwx-segments",
]
#: the kenv knob that makes the mock corrupt the dump's copy of one page (perturbation test)
CORRUPT_KNOB = "mock.corrupt_dump_page"
#: the kenv knob that makes the mock's virtio-blk driver submit up to N requests before polling
INFLIGHT_KNOB = "mock.vtblk_inflight"
#: suffix of the separate debug file next to the kernel (FreeBSD: kernel + kernel.debug)
DEBUG_SUFFIX = ".debug"


class MockKernel(NamedTuple):
    """A built mock kernel: the ELF GRUB boots (symbols, no DWARF) and its separate DWARF file.

    (A NamedTuple, not a dataclass: tests load this file by path without registering a module.)"""

    kernel: Path
    debug: Path


class MockKernelBuildError(RuntimeError):
    """gcc missing or the build failed; the message carries the command line and compiler output."""


def _objcopy() -> str:
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        raise MockKernelBuildError("objcopy not found: install the Debian package binutils")
    return objcopy


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise MockKernelBuildError(f"`{' '.join(cmd)}` failed with status {proc.returncode}:\n{proc.stderr}")


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


def mock_debug_path(kernel: Path) -> Path:
    """The separate DWARF file of a kernel `build_mock_freebsd_kernel` returned (it sits beside it)."""
    return Path(str(kernel) + DEBUG_SUFFIX)


def build_mock_freebsd_kernel(cache: Path | None = None, *, current_kernel: bool = False) -> Path:
    """Compile (or reuse) the mock kernel; returns the path of the ELF (``mock_freebsd_kernel``).

    ``current_kernel=True`` builds the variant that, like FreeBSD 13+ kernels, finds its preload
    metadata only under the module type "elf kernel" and triple-faults without a word otherwise
    (and calls itself 15.0-MOCK, writes minidump v3 by default). Its DWARF is in the separate file
    `mock_debug_path(kernel)`, built at the same time.
    """
    gcc = _gcc()
    objcopy = _objcopy()
    cache = Path(cache) if cache is not None else default_cache()
    key = source_key(gcc, current_kernel=current_kernel)
    out = cache / key[:24] / "mock_freebsd_kernel"
    debug = mock_debug_path(out)
    if out.is_file() and debug.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mock-kernel.", dir=out.parent) as tmp:
        elf = Path(tmp) / out.name
        dbg = Path(tmp) / debug.name
        # the DWARF names the sources relative to a fixed directory, not this checkout's path: the same
        # sources give the same bytes from any clone (the cache is keyed by content only)
        prefix_map = f"-ffile-prefix-map={SRC}=mock_freebsd_kernel/src"
        sources = ["start.S", "mock.c"]
        _run([gcc, *_flags(current_kernel), prefix_map, "-Wl,-T,mock.ld", "-o", str(elf), *sources], cwd=SRC)
        _run([objcopy, "--only-keep-debug", str(elf), str(dbg)])
        # the debug link holds the debug file's base name, as FreeBSD's kernel names kernel.debug
        _run([objcopy, "--strip-debug", f"--add-gnu-debuglink={dbg.name}", elf.name], cwd=Path(tmp))
        for path in (elf, dbg):
            data = bytearray(path.read_bytes())
            data[7] = ELFOSABI_FREEBSD
            path.write_bytes(bytes(data))
            path.chmod(0o644)
        os.replace(dbg, debug)
        os.replace(elf, out)
    return out


def build_mock_freebsd_kernel_debug(cache: Path | None = None) -> Path:
    """The separate DWARF file (``mock_freebsd_kernel.debug``) of the kernel built for `cache`."""
    return mock_debug_path(build_mock_freebsd_kernel(cache))


def build_mock_kernel(cache: Path | None = None) -> MockKernel:
    """Both files of the mock kernel: the bootable ELF and its DWARF."""
    kernel = build_mock_freebsd_kernel(cache)
    return MockKernel(kernel, mock_debug_path(kernel))


if __name__ == "__main__":  # pragma: no cover - manual use: print the path of a built mock kernel
    import sys

    print(build_mock_freebsd_kernel(current_kernel="--current-kernel" in sys.argv[1:]))

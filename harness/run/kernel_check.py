"""Refuse a ``--kernel`` file that is not a FreeBSD kernel before anything boots.

Why: a Linux kernel, a derivative's loader or any other ELF file boots into something that never
prints a FreeBSD banner, and the run would only fail minutes later at "boot" with a puzzling console.
What counts as FreeBSD is what FreeBSD puts in the file (`harness.freebsd.kernelfile`): the ABI tag
note, ``ELFOSABI_FREEBSD`` or the ``osreldate`` symbol - never the word "FreeBSD" in a version string,
so derivatives (TrueNAS, pfSense, HardenedBSD, ...) that keep the FreeBSD ABI note pass.
``ReproConfig.force_kernel`` (``fbsd-hil repro --force-kernel``) boots it anyway.
"""

from __future__ import annotations

from pathlib import Path

from harness.freebsd.kernelfile import KernelFile, KernelFileError, inspect_kernel_file
from harness.run.config import ReproError

STEP = "kernel file"
FORCE_HINT = "(--force-kernel boots it anyway)"


def check_kernel_file(path: Path, *, force: bool = False) -> KernelFile | None:
    """The kernel file's facts; `ReproError` (one line, step "kernel file") if it is not an amd64
    FreeBSD kernel, unless `force`. None when forced past a file that cannot be parsed at all."""
    try:
        kernel = inspect_kernel_file(path)
    except KernelFileError as exc:
        if force:
            return None
        raise ReproError(f"{exc} {FORCE_HINT}", step=STEP) from exc
    except OSError as exc:
        raise ReproError(f"{path}: cannot read the kernel file: {exc.strerror or exc}", step=STEP) from exc
    if force:
        return kernel
    if not kernel.is_freebsd:
        raise ReproError(
            f"{path}: not a FreeBSD kernel: no FreeBSD ABI tag note, OS/ABI {kernel.osabi} (FreeBSD: 9) "
            f"and no osreldate symbol {FORCE_HINT}",
            step=STEP,
        )
    if kernel.machine != "amd64":
        raise ReproError(
            f"{path}: a FreeBSD {kernel.machine} kernel (ELF{kernel.elf_class}); the guest is amd64 "
            f"{FORCE_HINT}",
            step=STEP,
        )
    return kernel

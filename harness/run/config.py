"""What a run is asked to do (`ReproConfig`), what it hands back (`ReproOutcome`), how it fails
(`ReproError`: one line naming the step, plus the directory holding the evidence)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.verify.report import VerificationReport

Progress = Callable[[str], None]


class ReproError(RuntimeError):
    """A step failed; ``evidence`` names the directory holding transcript, domain XML and logs."""

    def __init__(self, message: str, *, step: str, evidence: Path | None = None, tail: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.evidence = evidence
        self.tail = tail  # the console text that shows what happened (kept as console-tail.txt)

    def one_line(self) -> str:
        first = str(self).strip().splitlines()[0] if str(self).strip() else type(self).__name__
        where = f" (evidence: {self.evidence})" if self.evidence else ""
        return f"{self.step}: {first}{where}"


class ReproUnsupported(ReproError):
    """This kernel cannot do what the run asks (no ddb, no ``do_minidump``): known only after boot."""


@dataclass
class ReproConfig:
    kernel: Path | None = None
    #: the kernel's DWARF (FreeBSD's kernel.debug) when it is not beside the kernel; names the dump
    #: device's driver state (harness.verify.dumpdevice)
    kernel_debug: Path | None = None
    root_image: Path | None = None  # with `kernel`: a UFS root image loaded as md0, single-user
    image: Path | None = None
    release: str | None = None
    kenv: dict[str, str] = field(default_factory=dict)
    memory_mib: int = 512
    vcpus: int = 1
    accel: str = "auto"
    uri: str | None = None
    minidump: bool = True
    trigger: str = "nmi"
    retrieve: str = "disk"  # a key of harness.run.retrieve.RETRIEVALS
    compression: str = "none"
    device: str = "disk"
    artifacts: Path = field(default_factory=lambda: Path.cwd() / "fbsd-hil-artifacts")
    keep: bool = False
    offline: bool = False
    boot_seconds: float = 600.0
    #: keep the live images and the dump disk of a passing run (a failing run always keeps them)
    keep_images: bool = False
    flow: str | None = None  # None: from the kernel (ddb if it has the backend, else panic); "ddb" | "panic"
    #: panic flow: a live image right before the trigger (the last stop before the kernel's own dump)
    panic_before_image: bool = True
    #: dump twice in one ddb session: a minidump, then ``write/l do_minidump 0`` and a full dump
    dump_twice: bool = False
    #: how minidumps are switched off between the two dumps: "ddb" (write/l do_minidump 0), "sysctl" (`c`,
    #: sysctl debug.minidump=0, sysctl debug.kdb.enter=1), "auto" (sysctl where the guest has a shell)
    dump_twice_via: str = "auto"
    #: the dump disk's size in MiB (None: big enough for a full dump of `memory_mib`)
    dump_disk_mib: int | None = None
    #: device "swap": the size of the dump disk's freebsd-swap partition in MiB (None: all the disk leaves)
    swap_mib: int | None = None
    #: boot a kernel file that does not look like FreeBSD (`harness.run.kernel_check`)
    force_kernel: bool = False
    #: start from this saved booted guest instead of booting (`harness.run.saved_boot`)
    saved_boot: Path | None = None
    #: make a textdump in ddb instead of a memory dump and check its members (`harness.run.textdump`)
    textdump: bool = False

    def source_kind(self) -> str:
        """The key of `harness.run.sources.SOURCES` this configuration boots."""
        if self.kernel is not None:
            return "kernel" if self.root_image is None else "kernel_root_image"
        if self.image is not None:
            return "image"
        return "release"

    def source(self) -> str:
        if self.saved_boot:
            return f"saved boot {self.saved_boot} of kernel {self.kernel}"
        if self.kernel and self.root_image:
            return f"kernel {self.kernel} with root image {self.root_image}"
        if self.kernel:
            return f"kernel {self.kernel}"
        if self.image:
            return f"image {self.image}"
        return f"release {self.release}"


@dataclass
class ReproOutcome:
    report: VerificationReport
    artifacts: Path
    guest_name: str | None = None
    kept: bool = False
    uri: str | None = None
    evidence: dict[str, str] = field(default_factory=dict)
    flow: str = "ddb"  # "ddb": kept guest sits in ddb; "panic": at "Press a key on the console to reboot"
    #: files left in `artifacts` (relative name -> bytes on disk) and big files removed after a pass
    kept_files: dict[str, int] = field(default_factory=dict)
    removed_files: dict[str, int] = field(default_factory=dict)
    #: every dump's report in the order dumped (`report` is the first); two with ``dump_twice``
    reports: list[VerificationReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports or [self.report])

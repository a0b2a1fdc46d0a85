"""What kind of crash dump to make and how: `DumpPlan`, its validation, and the guest commands it needs.

A plan is pure data. It says

* `minidump` on/off and how that is set (`minidump_via`): the ``debug.minidump`` sysctl from a shell,
  the loader tunable of the same name (kernel environment at boot: GRUB ``kFreeBSD.*`` or loader.conf),
  or ``write/l do_minidump N`` typed in ddb just before ``dump``;
* the `trigger` that brings the kernel into ddb (one of the five `DdbRoute` s);
* the dump `device`: a dedicated raw disk (default: the host can read the dump without the guest) or
  the guest's swap partition;
* `compression` (``dumpon -z`` gzip, ``-Z`` zstd) and `encrypt` (``dumpon -k pubkey.pem``, with an RSA
  key pair we generate, `make_dump_keypair`).

`DumpPlan.validate(...)` lists every reason the plan cannot work on a given guest (no shell, no way to set
a tunable, host retrieval from swap, ...) in one error instead of failing half way through a run.
`shell_commands()` are the commands to run in the guest before the trigger, `ddb_commands()` those to
type in ddb before ``dump``.
"""

from __future__ import annotations

import enum
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from harness.freebsd.enter import ROUTES, DdbRoute


class MinidumpVia(enum.StrEnum):
    SYSCTL = "sysctl"
    TUNABLE = "tunable"
    DDB_WRITE = "ddb_write"


class DumpDevice(enum.StrEnum):
    DISK = "disk"
    SWAP = "swap"


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class RetrievalMethod(enum.StrEnum):
    HOST = "host"  # read the raw dump disk on the host (reader.device.extract)
    SAVECORE = "savecore"  # reboot, savecore(8) in the guest, fetch over SFTP


class DumpPlanError(ValueError):
    """The plan cannot work on this guest; the message lists every reason."""

    def __init__(self, plan: DumpPlan, problems: list[str]) -> None:
        self.plan = plan
        self.problems = problems
        super().__init__(
            f"dump plan {plan.describe()} cannot work:\n" + "\n".join(f"  - {p}" for p in problems)
        )


#: Where the guest sees the dedicated dump disk (second virtio disk; ``ada1`` on q35/AHCI).
DEFAULT_DUMP_DISK = "/dev/vtbd1"
#: Where `shell_commands` expects the dump public key inside the guest.
GUEST_PUBLIC_KEY = "/root/fbsd-hil-dump-pub.pem"


@dataclass(frozen=True)
class DumpPlan:
    minidump: bool = True
    minidump_via: MinidumpVia = MinidumpVia.SYSCTL
    trigger: DdbRoute = DdbRoute.NMI
    device: DumpDevice = DumpDevice.DISK
    compression: Compression = Compression.NONE
    encrypt: bool = False
    dump_disk: str = DEFAULT_DUMP_DISK
    retrieval: RetrievalMethod = RetrievalMethod.HOST
    extra_sysctls: dict[str, str] = field(default_factory=dict)
    #: device swap: the swap partition to dump on (GEOM's name, ``/dev/vtbd0p2``); None: the first swap
    #: device swapctl lists (a guest with a full userland)
    swap_device: str | None = None

    def __post_init__(self) -> None:
        # Accept plain strings from a CLI / JSON (DumpPlan(trigger="alt_break")).
        object.__setattr__(self, "minidump_via", MinidumpVia(self.minidump_via))
        object.__setattr__(self, "trigger", DdbRoute(self.trigger))
        object.__setattr__(self, "device", DumpDevice(self.device))
        object.__setattr__(self, "compression", Compression(self.compression))
        object.__setattr__(self, "retrieval", RetrievalMethod(self.retrieval))

    # ------------------------------------------------------------ description
    def describe(self) -> str:
        parts = [
            "minidump" if self.minidump else "full dump",
            f"set via {self.minidump_via.value}",
            f"trigger {self.trigger.value}",
            f"device {self.device.value}"
            + (f" ({self.dump_disk})" if self.device == DumpDevice.DISK else "")
            + (f" ({self.swap_device})" if self.device == DumpDevice.SWAP and self.swap_device else ""),
        ]
        if self.compression != Compression.NONE:
            parts.append(self.compression.value)
        if self.encrypt:
            parts.append("encrypted")
        parts.append(f"retrieve via {self.retrieval.value}")
        return "[" + ", ".join(parts) + "]"

    def to_dict(self) -> dict:
        return {
            "minidump": self.minidump,
            "minidump_via": self.minidump_via.value,
            "trigger": self.trigger.value,
            "device": self.device.value,
            "compression": self.compression.value,
            "encrypt": self.encrypt,
            "dump_disk": self.dump_disk,
            "retrieval": self.retrieval.value,
            "extra_sysctls": dict(self.extra_sysctls),
            "swap_device": self.swap_device,
        }

    # ------------------------------------------------------------ validation
    def problems(
        self,
        *,
        has_shell: bool,
        has_guest: bool = True,
        has_ddb: bool = True,
        can_set_kenv: bool = False,
        has_ssh: bool = False,
        freebsd_version: tuple[int, int] | None = None,
        memory_mib: int | None = None,
        dump_disk_mib: int | None = None,
    ) -> list[str]:
        """Every reason this plan cannot work on a guest with these capabilities (empty: it can)."""
        return [
            *self._route_problems(has_shell=has_shell, has_guest=has_guest, has_ddb=has_ddb),
            *self._setup_problems(has_shell=has_shell, has_ddb=has_ddb, can_set_kenv=can_set_kenv),
            *self._retrieval_problems(has_ssh=has_ssh),
            *self._version_problems(freebsd_version),
            *self._size_problems(memory_mib, dump_disk_mib),
        ]

    def _route_problems(self, *, has_shell: bool, has_guest: bool, has_ddb: bool) -> list[str]:
        out: list[str] = []
        route = ROUTES[self.trigger]
        if not has_ddb:
            out.append("the kernel has no ddb (options KDB + DDB): no route into the debugger, no `dump`")
        if route.needs_shell and not has_shell:
            out.append(
                f"trigger {self.trigger.value} runs a sysctl: needs a root shell (console login or SSH)"
            )
        if route.needs_guest and not has_guest:
            out.append(f"trigger {self.trigger.value} is injected by the hypervisor: needs the Guest")
        return out

    def _setup_problems(self, *, has_shell: bool, has_ddb: bool, can_set_kenv: bool) -> list[str]:
        """Dump kind, compression, encryption and device are set before the trigger: how?"""
        out: list[str] = []
        if self.minidump_via == MinidumpVia.SYSCTL and not has_shell:
            out.append(
                "minidump via sysctl needs a root shell before the trigger (or use ddb_write / tunable)"
            )
        if self.minidump_via == MinidumpVia.DDB_WRITE and not has_ddb:
            out.append("minidump via ddb `write/l do_minidump` needs ddb")
        if self.minidump_via == MinidumpVia.TUNABLE and not can_set_kenv and not has_shell:
            out.append(
                "minidump via loader tunable needs the kernel environment at boot (bare-kernel --kenv) or a "
                "shell to write /boot/loader.conf"
            )
        if self.compression != Compression.NONE and not has_shell:
            out.append(
                f"{self.compression.value} compression is set with `dumpon`: needs a shell before the trigger"
            )
        if self.encrypt and not has_shell:
            out.append("encryption is set with `dumpon -k`: needs a shell before the trigger")
        if self.device == DumpDevice.SWAP and not has_shell:
            out.append("dumping to swap needs `dumpon <swap device>` from a shell (or rc's dumpdev=AUTO)")
        return out

    def _retrieval_problems(self, *, has_ssh: bool) -> list[str]:
        out: list[str] = []
        if self.device == DumpDevice.SWAP and self.retrieval == RetrievalMethod.HOST and not self.swap_device:
            out.append(
                "host-side retrieval reads a dedicated raw dump disk; with swap use retrieval=savecore "
                "(or swap_device: a swap partition on the host's own dump disk)"
            )
        if self.retrieval == RetrievalMethod.SAVECORE and not has_ssh:
            out.append("retrieval via savecore fetches /var/crash over SFTP: needs SSH to the guest")
        return out

    def _version_problems(self, freebsd_version: tuple[int, int] | None) -> list[str]:
        out: list[str] = []
        if freebsd_version is None:
            return out
        if freebsd_version < (12, 0) and self.compression != Compression.NONE:
            out.append(
                f"FreeBSD {freebsd_version[0]}.{freebsd_version[1]}: kernel dump compression needs 12.0+"
            )
        if freebsd_version < (13, 0) and self.compression != Compression.NONE and self.encrypt:
            out.append("FreeBSD 12.x refuses compression together with encryption (EOPNOTSUPP)")
        return out

    def _size_problems(self, memory_mib: int | None, dump_disk_mib: int | None) -> list[str]:
        if (
            not self.minidump
            and self.compression == Compression.NONE
            and memory_mib is not None
            and dump_disk_mib is not None
            and dump_disk_mib < memory_mib + 1
        ):
            return [
                f"a full dump of {memory_mib} MiB does not fit the {dump_disk_mib} MiB dump disk "
                "(needs memory + 64 KiB + 2 sectors)"
            ]
        return []

    def validate(self, **capabilities) -> None:
        if problems := self.problems(**capabilities):
            raise DumpPlanError(self, problems)

    # ------------------------------------------------------------ what to do
    def loader_tunables(self) -> dict[str, str]:
        """Kernel environment at boot (so early panics dump too): ``dumpdev``, maybe ``debug.minidump``."""
        env = {}
        if self.device == DumpDevice.DISK:
            env["dumpdev"] = self.dump_disk
        if self.minidump_via == MinidumpVia.TUNABLE:
            env["debug.minidump"] = "1" if self.minidump else "0"
        return env

    def dumpon_command(self, public_key: str = GUEST_PUBLIC_KEY) -> str:
        flags = ["-v"]
        if self.compression == Compression.GZIP:
            flags.append("-z")
        elif self.compression == Compression.ZSTD:
            flags.append("-Z")
        if self.encrypt:
            flags += ["-k", shlex.quote(public_key)]
        if self.device == DumpDevice.DISK:
            return f"dumpon {' '.join(flags)} {shlex.quote(self.dump_disk)}"
        if self.swap_device:
            return f"dumpon {' '.join(flags)} {shlex.quote(self.swap_device)}"
        # the first swap device swapctl lists (header line first)
        return f"dumpon {' '.join(flags)} \"$(swapctl -l | awk 'NR==2 {{print $1}}')\""

    def shell_commands(
        self, public_key: str = GUEST_PUBLIC_KEY, *, minimal_userland: bool = False
    ) -> list[str]:
        """Commands for a root shell in the guest, in order, before the trigger.

        `minimal_userland`: a single-user root image with only FreeBSD's base tools for dumps (``sh``,
        ``sysctl``, ``dumpon``, ``ddb``, ...; no ``grep``, ``awk`` or ``sysrc``): the ddb check is left
        to the run's own ``sysctl -n debug.kdb.available``, a tunable is set by sysctl for this boot.
        """
        cmds = [] if minimal_userland else [
            # release GENERIC kernels may lack options DDB: say so plainly instead of "unknown oid"
            "sysctl -n debug.kdb.available | grep -qw ddb || (echo 'kernel has no ddb (options DDB)'; false)",
        ]
        cmds += [
            # a pending textdump or a kdb.enter.panic ddb script would replace our dump with a textdump;
            # -i: a kernel without options DDB has no debug.ddb.* (and no textdumps to clear)
            "sysctl -i debug.ddb.textdump.pending=0",
            "ddb unscript kdb.enter.panic >/dev/null 2>&1 || true",
            "dumpon off",
            self.dumpon_command(public_key),
        ]
        value = 1 if self.minidump else 0
        if self.minidump_via == MinidumpVia.SYSCTL:
            cmds.append(f"sysctl debug.minidump={value}")
        elif self.minidump_via == MinidumpVia.TUNABLE and minimal_userland:
            cmds.append(f"sysctl debug.minidump={value}")  # the boot's kenv already holds the tunable
        elif self.minidump_via == MinidumpVia.TUNABLE:
            # the tunable for the next boots (early panics), and the same RWTUN knob for this one
            cmds += [f"sysrc -f /boot/loader.conf debug.minidump={value}", f"sysctl debug.minidump={value}"]
        cmds += [f"sysctl {k}={v}" for k, v in self.extra_sysctls.items()]
        return cmds

    def ddb_commands(self) -> list[str]:
        """Typed in ddb before ``dump``."""
        if self.minidump_via == MinidumpVia.DDB_WRITE:
            return [f"write/l do_minidump {1 if self.minidump else 0}"]
        return []


def make_dump_keypair(directory: str | Path, *, bits: int = 2048) -> tuple[Path, Path]:
    """An RSA key pair for ``dumpon -k`` (public, PEM) and the reader (private, PEM, mode 0600).

    Never overwrites: refuses if either file exists.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / "dump-key.pem", directory / "dump-pub.pem"
    for p in (private_path, public_path):
        if p.exists():
            raise FileExistsError(f"{p} exists; not overwriting a dump key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with open(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path

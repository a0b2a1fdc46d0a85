"""Typed guest description (`GuestSpec`) -> libvirt domain XML.

Choices that matter (measured on Debian 12, libvirt 9.0, QEMU 7.2):
- The serial port is a pty with ``<log file=.../>``: the log keeps every byte even while nobody is
  attached; the domain is started paused so the console is attached before the first byte anyway.
- User networking with an SSH forward goes through ``qemu:commandline`` (``-netdev user,hostfwd=``)
  because libvirt's ``<portForward>`` is silently ignored for user networking here. The forward binds to
  127.0.0.1 only.
- Local guests get a static DAC seclabel with the caller's own uid:gid: QEMU then runs with exactly the
  caller's file permissions (it can read the caller's base images and write the caller's work dir,
  e.g. for ``pmemsave``), and libvirt never chowns the caller's files. Remote guests keep libvirt's
  default labelling.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

OWNER_NS = "https://github.com/fbsd-hil/owner/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: libvirt's chardev id for the first serial port (target of QMP chardev-send-break)
SERIAL_CHARDEV = "charserial0"


class SpecError(ValueError):
    """A GuestSpec that cannot describe a runnable guest; the message names the field."""


@dataclass(frozen=True)
class DiskImageBoot:
    """Boot from a disk image. The image is never written: the guest gets a qcow2 overlay on it."""

    image: Path
    format: str | None = None  # "raw" | "qcow2"; None: detected with qemu-img info
    bus: str = "virtio"  # "virtio" | "sata"


@dataclass(frozen=True)
class IsoBoot:
    """Boot from a CD-ROM image (e.g. a GRUB ISO that loads a FreeBSD kernel)."""

    iso: Path


@dataclass(frozen=True)
class KernelBoot:
    """Direct kernel boot (QEMU loads the kernel and initrd; no firmware boot loader)."""

    kernel: Path
    initrd: Path | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class ExtraDisk:
    """An extra disk such as a raw dump disk. It is attached as is (the guest writes it)."""

    path: Path
    format: str = "raw"  # "raw" | "qcow2"
    bus: str = "virtio"  # "virtio" | "sata"
    readonly: bool = False
    serial: str | None = None


@dataclass(frozen=True)
class UserNetwork:
    """QEMU user networking with one TCP forward 127.0.0.1:host_port -> guest:guest_port.

    host_port None picks a free port when the guest starts (see `Guest.ssh_port`).
    """

    host_port: int | None = None
    guest_port: int = 22
    model: str = "virtio-net-pci"  # or "e1000"


Boot = DiskImageBoot | IsoBoot | KernelBoot


@dataclass(frozen=True)
class GuestSpec:
    """Everything that defines one guest; `Guest` turns it into a transient libvirt domain."""

    memory_mib: int = 512
    vcpus: int = 1
    accel: str = "auto"  # "auto" | "kvm" | "tcg"
    machine: str = "pc"  # "pc" | "q35"
    boot: Boot | None = None
    disks: tuple[ExtraDisk, ...] | list[ExtraDisk] = field(default_factory=tuple)
    network: UserNetwork | None = None
    uri: str | None = None
    name_prefix: str = "fbsd-hil"
    on_reboot: str = "restart"  # "restart" | "destroy"
    cpu_model: str | None = None  # None: host-passthrough under KVM, QEMU's default under TCG
    extra_qemu_args: tuple[str, ...] = ()
    #: how the serial console is attached: "pty" (open QEMU's pty, local only), "virsh" (`virsh
    #: console`, a libvirt stream: works for remote URIs), "auto" (pty when local, else virsh)
    console: str = "auto"
    #: back guest RAM with a shared file the host can map: `Guest.live_memory()` then reads guest
    #: physical memory in place, without copying (local guests)
    shared_memory: bool = False

    def absolute(self) -> GuestSpec:
        """The same spec with every path made absolute (libvirtd does not share our working directory)."""
        boot = self.boot
        if isinstance(boot, DiskImageBoot):
            boot = replace(boot, image=Path(boot.image).absolute())
        elif isinstance(boot, IsoBoot):
            boot = replace(boot, iso=Path(boot.iso).absolute())
        elif isinstance(boot, KernelBoot):
            initrd = Path(boot.initrd).absolute() if boot.initrd is not None else None
            boot = replace(boot, kernel=Path(boot.kernel).absolute(), initrd=initrd)
        disks = tuple(replace(d, path=Path(d.path).absolute()) for d in self.disks)
        return replace(self, boot=boot, disks=disks)

    def validate(self) -> None:
        if self.boot is None:
            raise SpecError("GuestSpec.boot is required: DiskImageBoot, IsoBoot or KernelBoot")
        if self.memory_mib < 16:
            raise SpecError(f"GuestSpec.memory_mib must be >= 16, got {self.memory_mib}")
        if self.vcpus < 1:
            raise SpecError(f"GuestSpec.vcpus must be >= 1, got {self.vcpus}")
        if self.accel not in ("auto", "kvm", "tcg"):
            raise SpecError(f"GuestSpec.accel must be auto, kvm or tcg, got {self.accel!r}")
        if self.machine not in ("pc", "q35"):
            raise SpecError(f"GuestSpec.machine must be pc or q35, got {self.machine!r}")
        if self.console not in ("auto", "pty", "virsh"):
            raise SpecError(f"GuestSpec.console must be auto, pty or virsh, got {self.console!r}")
        if self.on_reboot not in ("restart", "destroy"):
            raise SpecError(f"GuestSpec.on_reboot must be restart or destroy, got {self.on_reboot!r}")
        if not self.name_prefix.replace("-", "").replace("_", "").isalnum():
            raise SpecError(f"GuestSpec.name_prefix must be [A-Za-z0-9_-], got {self.name_prefix!r}")
        buses = [self.boot.bus] if isinstance(self.boot, DiskImageBoot) else []
        buses += [d.bus for d in self.disks]
        for bus in buses:
            if bus not in ("virtio", "sata"):
                raise SpecError(f"disk bus must be virtio or sata, got {bus!r}")
        for d in self.disks:
            if d.format not in ("raw", "qcow2"):
                raise SpecError(f"ExtraDisk.format must be raw or qcow2, got {d.format!r} for {d.path}")
        if self.network and self.network.model not in ("virtio-net-pci", "e1000"):
            raise SpecError(f"UserNetwork.model must be virtio-net-pci or e1000, got {self.network.model!r}")


@dataclass(frozen=True)
class Owner:
    """Who started a domain: the reaper destroys it only when this process is gone."""

    pid: int
    host: str
    boot_id: str
    proc_start: str
    registry: str  # path of the run's registry file (files to remove when reaping)

    def to_xml(self) -> str:
        attrs = " ".join(
            f"{k}={quoteattr(str(v))}"
            for k, v in (
                ("pid", self.pid),
                ("host", self.host),
                ("boot-id", self.boot_id),
                ("proc-start", self.proc_start),
                ("registry", self.registry),
            )
        )
        return f"<fbh:owner xmlns:fbh={quoteattr(OWNER_NS)} {attrs}/>"


def _q(value: object) -> str:
    return quoteattr(str(value))


def _disk_xml(path: Path, fmt: str, bus: str, index: int, *, readonly: bool, serial: str | None) -> str:
    dev = f"vd{chr(ord('a') + index)}" if bus == "virtio" else f"sd{chr(ord('a') + index)}"
    parts = [
        "    <disk type='file' device='disk'>",
        f"      <driver name='qemu' type={_q(fmt)} cache='unsafe' discard='unmap'/>",
        f"      <source file={_q(path)}/>",
        f"      <target dev={_q(dev)} bus={_q(bus)}/>",
    ]
    if readonly:
        parts.append("      <readonly/>")
    if serial:
        parts.append(f"      <serial>{serial}</serial>")
    parts.append("    </disk>")
    return "\n".join(parts)


def build_domain_xml(
    spec: GuestSpec,
    *,
    name: str,
    accel: str,
    console_log: Path,
    boot_disk: Path | None,
    boot_disk_format: str = "qcow2",
    owner: Owner | None = None,
    host_port: int | None = None,
    dac_label: str | None = None,
) -> str:
    """The domain XML for `spec`. `boot_disk` is the overlay Guest created for a DiskImageBoot."""
    spec.validate()
    if accel not in ("kvm", "tcg"):
        raise SpecError(f"accel must be resolved to kvm or tcg before building XML, got {accel!r}")
    dom_type = "kvm" if accel == "kvm" else "qemu"
    lines = [f"<domain type={_q(dom_type)} xmlns:qemu={_q(QEMU_NS)}>", f"  <name>{name}</name>"]
    if owner is not None:
        lines += ["  <metadata>", f"    {owner.to_xml()}", "  </metadata>"]
    lines += [
        f"  <memory unit='MiB'>{spec.memory_mib}</memory>",
        f"  <vcpu>{spec.vcpus}</vcpu>",
        *_os_xml(spec),
        "  <features><acpi/><apic/></features>",
    ]
    if spec.cpu_model:
        lines.append(
            f"  <cpu mode='custom' match='exact'><model fallback='allow'>{spec.cpu_model}</model></cpu>"
        )
    elif accel == "kvm":
        lines.append("  <cpu mode='host-passthrough'/>")
    if spec.shared_memory:
        lines.append("  <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>")
    lines += [
        "  <clock offset='utc'/>",
        "  <on_poweroff>destroy</on_poweroff>",
        f"  <on_reboot>{spec.on_reboot}</on_reboot>",
        "  <on_crash>destroy</on_crash>",
        "  <devices>",
        *_disks_xml(spec, boot_disk, boot_disk_format),
        "    <serial type='pty'>",
        f"      <log file={_q(console_log)} append='off'/>",
        "      <target port='0'/>",
        "    </serial>",
        "    <console type='pty'><target type='serial' port='0'/></console>",
        "    <controller type='usb' model='none'/>",
        "    <memballoon model='none'/>",
        "  </devices>",
    ]
    if dac_label is not None:
        lines.append(
            f"  <seclabel type='static' model='dac' relabel='no'><label>{dac_label}</label></seclabel>"
        )
    lines += _qemu_commandline_xml(spec, host_port)
    lines.append("</domain>")
    return "\n".join(lines) + "\n"


def _os_xml(spec: GuestSpec) -> list[str]:
    """``<os>``: a direct kernel boot, or boot from the CD-ROM (ISO) or the first disk."""
    lines = ["  <os>", f"    <type arch='x86_64' machine={_q(spec.machine)}>hvm</type>"]
    boot = spec.boot
    if isinstance(boot, KernelBoot):
        lines.append(f"    <kernel>{_esc(boot.kernel)}</kernel>")
        if boot.initrd is not None:
            lines.append(f"    <initrd>{_esc(boot.initrd)}</initrd>")
        if boot.cmdline:
            lines.append(f"    <cmdline>{_esc(boot.cmdline)}</cmdline>")
    elif isinstance(boot, IsoBoot):
        lines.append("    <boot dev='cdrom'/>")
    else:
        lines.append("    <boot dev='hd'/>")
    return [*lines, "  </os>"]


def _disks_xml(spec: GuestSpec, boot_disk: Path | None, boot_disk_format: str) -> list[str]:
    """The boot overlay first (it is the guest's first disk on its bus), the extra disks, the ISO."""
    lines: list[str] = []
    boot = spec.boot
    index = {"virtio": 0, "sata": 0}
    if isinstance(boot, DiskImageBoot):
        if boot_disk is None:
            raise SpecError("DiskImageBoot needs the overlay path (boot_disk)")
        lines.append(
            _disk_xml(boot_disk, boot_disk_format, boot.bus, index[boot.bus], readonly=False, serial=None)
        )
        index[boot.bus] += 1
    for d in spec.disks:
        lines.append(
            _disk_xml(Path(d.path), d.format, d.bus, index[d.bus], readonly=d.readonly, serial=d.serial)
        )
        index[d.bus] += 1
    if isinstance(boot, IsoBoot):
        lines += [
            "    <disk type='file' device='cdrom'>",
            "      <driver name='qemu' type='raw'/>",
            f"      <source file={_q(boot.iso)}/>",
            "      <target dev='sdz' bus='sata'/>"
            if spec.machine == "q35"
            else "      <target dev='hdc' bus='ide'/>",
            "      <readonly/>",
            "    </disk>",
        ]
    return lines


def _qemu_commandline_xml(spec: GuestSpec, host_port: int | None) -> list[str]:
    """QEMU arguments libvirt has no element for: user networking with the SSH forward, extras."""
    qemu_args: list[str] = []
    if spec.network is not None:
        if host_port is None:
            raise SpecError("UserNetwork needs a host port (Guest picks a free one)")
        net = spec.network
        qemu_args += [
            "-netdev",
            f"user,id=fbhnet0,hostfwd=tcp:127.0.0.1:{host_port}-:{net.guest_port}",
            "-device",
            # an explicit slot libvirt never assigns: QEMU creates this device before libvirt's own
            f"{net.model},netdev=fbhnet0,bus={'pcie.0' if spec.machine == 'q35' else 'pci.0'},addr=0x1e",
        ]
    qemu_args += list(spec.extra_qemu_args)
    if not qemu_args:
        return []
    args = [f"    <qemu:arg value={_q(a)}/>" for a in qemu_args]
    return ["  <qemu:commandline>", *args, "  </qemu:commandline>"]


def _esc(value: object) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def own_dac_label() -> str:
    """``+uid:+gid`` of this process: QEMU runs as us (see module docstring)."""
    return f"+{os.getuid()}:+{os.getgid()}"

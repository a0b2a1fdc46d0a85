"""`Guest`: one transient libvirt domain built from a `GuestSpec`, with its serial console attached.

Lifecycle: create a qcow2 overlay when booting a disk image (the base is only ever a read-only backing
file), register ownership (see `harness.vm.reaper`), ``createXML`` *paused*, open the serial pty with a
`Console` (which drains it continuously into a transcript), then resume: not a byte of output is lost.
Leaving the ``with`` block for any reason (exception, KeyboardInterrupt, interpreter exit) destroys the
domain and removes the overlay; a run killed outright is cleaned up by the next `reap()`.

Launch failures raise `GuestLaunchError` carrying the domain XML, the tail of QEMU's log and the
console tail.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import weakref
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from harness.util.deadline import Deadline, as_deadline
from harness.vm import memory as memory_mod
from harness.vm.accel import resolve_accel
from harness.vm.console import Console, ConsoleClosed
from harness.vm.domain_xml import (
    SERIAL_CHARDEV,
    DiskImageBoot,
    ExtraDisk,
    GuestSpec,
    IsoBoot,
    KernelBoot,
    SpecError,
    UserNetwork,
    build_domain_xml,
    own_dac_label,
)
from harness.vm.libvirt_conn import connect, default_uri, import_libvirt, is_local
from harness.vm.reaper import REGISTRY_DIR, current_owner, write_registry

__all__ = [
    "DiskImageBoot",
    "ExtraDisk",
    "Guest",
    "GuestError",
    "GuestLaunchError",
    "GuestSpec",
    "IsoBoot",
    "KernelBoot",
    "UserNetwork",
]

QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")

#: Linux input keycodes for `Guest.send_keys` names
KEYCODES: dict[str, int] = {
    "esc": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6, "6": 7, "7": 8, "8": 9, "9": 10, "0": 11,
    "minus": 12, "equal": 13, "backspace": 14, "tab": 15,
    "q": 16, "w": 17, "e": 18, "r": 19, "t": 20, "y": 21, "u": 22, "i": 23, "o": 24, "p": 25,
    "enter": 28, "ctrl": 29, "a": 30, "s": 31, "d": 32, "f": 33, "g": 34, "h": 35, "j": 36, "k": 37,
    "l": 38, "shift": 42, "z": 44, "x": 45, "c": 46, "v": 47, "b": 48, "n": 49, "m": 50,
    "alt": 56, "space": 57, "f1": 59, "f2": 60, "f3": 61, "f4": 62, "f5": 63, "f6": 64, "f7": 65,
    "f8": 66, "f9": 67, "f10": 68, "f11": 87, "f12": 88, "sysrq": 99, "delete": 111, "pause": 119,
}  # fmt: skip

_live_guests: weakref.WeakSet[Guest] = weakref.WeakSet()


@atexit.register
def _close_leftover_guests() -> None:
    for g in list(_live_guests):
        with contextlib.suppress(Exception):
            g.close()


class GuestError(RuntimeError):
    """A guest operation failed; carries the evidence (domain XML, QEMU log tail, console tail)."""

    def __init__(self, message: str, *, domain_xml: str = "", qemu_log: str = "", console_tail: str = ""):
        self.domain_xml = domain_xml
        self.qemu_log = qemu_log
        self.console_tail = console_tail
        parts = [message]
        if qemu_log:
            parts.append("  QEMU log tail:\n" + _indent(qemu_log))
        if console_tail:
            parts.append("  console tail:\n" + _indent(console_tail))
        if domain_xml:
            parts.append("  domain XML:\n" + _indent(domain_xml))
        super().__init__("\n".join(parts))


class GuestLaunchError(GuestError):
    """The domain could not be created or its console attached."""


def _indent(text: str) -> str:
    return "\n".join("    | " + line for line in text.rstrip().splitlines())


def free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_format(path: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SpecError(f"cannot read disk image {path}: {out.stderr.strip()}")
    return json.loads(out.stdout)["format"]


def create_overlay(base: Path, overlay: Path, base_format: str | None = None) -> None:
    """A qcow2 overlay whose backing file is `base` (QEMU opens backing files read-only)."""
    base = base.resolve()
    if not base.is_file():
        raise SpecError(f"boot image {base} does not exist")
    fmt = base_format or image_format(base)
    if overlay.exists():
        raise FileExistsError(f"refusing to overwrite {overlay}")
    r = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base), str(overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise SpecError(f"qemu-img could not create an overlay on {base}: {r.stderr.strip()}")


class Guest:
    """A running guest (see module docstring). Use as a context manager."""

    def __init__(
        self,
        spec: GuestSpec,
        workdir: str | os.PathLike[str],
        *,
        keep: bool = False,
        conn: Any = None,
    ) -> None:
        spec.validate()
        self.spec = spec.absolute()
        self.uri = spec.uri or default_uri()
        self.local = is_local(self.uri)
        self.keep = keep
        self._conn = conn
        self._own_conn = conn is None
        token = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.name = f"{spec.name_prefix}-{token}"
        self.dir = Path(workdir).resolve() / self.name
        self.console_log = self.dir / "console.log"
        #: every serial <log> file of this guest in order (a restore in place starts a new one)
        self.console_logs: list[Path] = []
        self.transcript_path = self.dir / "console.transcript"
        self.registry = REGISTRY_DIR / f"{self.name}.json"
        self.accel: str | None = None
        self.domain = None
        self.domain_xml = ""
        self.console: Console | None = None  # type: ignore[assignment]
        self.ssh_port: int | None = None
        self.overlay: Path | None = None
        self.created_files: list[Path] = []
        self.started_at: float | None = None
        self.resumed_at: float | None = None
        self._closed = False
        self._owner_dict: dict[str, str] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Guest:
        if self.domain is None:  # a restored guest (harness.vm.savestate.restore) is already running
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self):
        if self._conn is None:
            self._conn = connect(self.uri)
        return self._conn

    def _qemu_log_path(self) -> Path:
        if self.uri.startswith("qemu:///session"):
            return Path.home() / ".cache/libvirt/qemu/log" / f"{self.name}.log"
        return QEMU_LOG_DIR / f"{self.name}.log"

    def _registry_record(self) -> dict:
        return {
            "name": self.name,
            "uri": self.uri,
            "dir": str(self.dir),
            "owner": self._owner_dict,
            "files": [str(p) for p in self.created_files],
        }

    def start(self, *, paused_hook=None) -> Guest:
        """Create the domain paused, attach the console, resume."""
        libvirt = import_libvirt()
        _live_guests.add(self)
        try:
            if self.local or self.spec.accel != "auto":
                self.accel = resolve_accel(self.spec.accel)
            else:  # the KVM probe runs locally and says nothing about a remote host
                self.accel = os.environ.get("FBSD_HIL_ACCEL", "tcg")
            self.dir.mkdir(parents=True, exist_ok=False)
            boot = self.spec.boot
            if isinstance(boot, DiskImageBoot):
                self.overlay = self.dir / "boot-overlay.qcow2"
                self.created_files.append(self.overlay)
                create_overlay(Path(boot.image), self.overlay, boot.format)
            for path in self._input_paths():
                if not Path(path).exists():
                    raise SpecError(f"{path} (named in the GuestSpec) does not exist")
            if self.spec.network is not None:
                self.ssh_port = self.spec.network.host_port or free_local_port()
            owner = current_owner(self.registry)
            self._owner_dict = {
                "pid": str(owner.pid),
                "host": owner.host,
                "boot-id": owner.boot_id,
                "proc-start": owner.proc_start,
            }
            write_registry(self.registry, self._registry_record())
            self.domain_xml = build_domain_xml(
                self.spec,
                name=self.name,
                accel=self.accel,
                console_log=self.console_log,
                boot_disk=self.overlay,
                owner=owner,
                host_port=self.ssh_port,
                dac_label=own_dac_label() if self.local else None,
            )
            self.started_at = time.monotonic()
            self.console_logs.append(self.console_log)
            try:
                self.domain = self.conn.createXML(self.domain_xml, libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as exc:
                raise GuestLaunchError(
                    f"libvirt could not start {self.name} ({self.accel}): {exc}",
                    domain_xml=self.domain_xml,
                    qemu_log=self.log_tail(),
                ) from exc
            self._attach_console(new=True)
            if paused_hook is not None:
                paused_hook(self)
            self.resume()
            self.resumed_at = time.monotonic()
        except BaseException:
            self.close()
            raise
        return self

    def _input_paths(self) -> list[Path]:
        boot = self.spec.boot
        paths = [Path(d.path) for d in self.spec.disks]
        if isinstance(boot, KernelBoot):
            paths.append(Path(boot.kernel))
            if boot.initrd:
                paths.append(Path(boot.initrd))
        elif isinstance(boot, IsoBoot):
            paths.append(Path(boot.iso))
        return paths

    def pty_path(self) -> str:
        root = ET.fromstring(self.domain.XMLDesc(0))
        src = root.find("./devices/serial/source")
        if src is None or not src.get("path"):
            raise GuestLaunchError(
                f"{self.name}: the live domain XML has no serial pty path",
                domain_xml=self.domain.XMLDesc(0),
                qemu_log=self.log_tail(),
            )
        return src.get("path")

    @property
    def console_via(self) -> str:
        if self.spec.console != "auto":
            return self.spec.console
        return "pty" if self.local else "virsh"

    def disk_paths(self) -> dict[str, Path]:
        """Target device (``vda``, ``sdb``...) -> host file of every disk of the running domain.

        For a guest restored from saved state the extra disks are private copies: read them here.
        """
        root = ET.fromstring(self.domain.XMLDesc(0))
        out = {}
        for d in root.findall("./devices/disk"):
            src, tgt = d.find("source"), d.find("target")
            if src is not None and tgt is not None and src.get("file"):
                out[tgt.get("dev")] = Path(src.get("file"))
        return out

    def _attach_console(self, *, new: bool) -> None:
        try:
            if self.console_via == "virsh":
                if new or self.console is None:
                    self.console = Console.open_virsh(
                        self.uri, self.name, self.transcript_path, name=f"{self.name} serial"
                    )
                else:
                    self.console.reattach(Console.virsh_spawn(self.uri, self.name))
                return
            path = self.pty_path()
            if new or self.console is None:
                self.console = Console.open_pty(path, self.transcript_path, name=f"{self.name} serial")
            else:
                self.console.reattach(Console.pty_spawn(path))
        except (OSError, ConsoleClosed) as exc:
            raise GuestLaunchError(
                f"{self.name}: cannot open the serial console: {exc}",
                domain_xml=self.domain_xml,
                qemu_log=self.log_tail(),
            ) from exc

    def close(self) -> None:
        """Destroy the domain, close the console, remove the overlay (unless keep). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _live_guests.discard(self)
        if self.console is not None:
            self.console.close()
        failure: Exception | None = None
        if self.domain is not None and not self.keep:
            libvirt = import_libvirt()
            try:
                self.domain.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    failure = exc
        if self.keep and self.registry.exists():
            # kept on purpose (--keep-vm): the reaper must leave this domain and its files alone
            write_registry(self.registry, {**self._registry_record(), "kept": True})
        if not self.keep and failure is None:
            for f in self.created_files:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            self.registry.unlink(missing_ok=True)
        if self._own_conn and self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        if failure is not None:  # the registry stays, so a later reap() can finish the job
            raise GuestError(f"{self.name}: could not destroy the domain: {failure}") from failure

    # ------------------------------------------------------------------ state
    def is_active(self) -> bool:
        libvirt = import_libvirt()
        try:
            return bool(self.domain is not None and self.domain.isActive())
        except libvirt.libvirtError:
            return False

    def state(self) -> str:
        """libvirt's domain state as a word: running, paused, shutoff, crashed, ... or gone."""
        libvirt = import_libvirt()
        names = {
            libvirt.VIR_DOMAIN_RUNNING: "running",
            libvirt.VIR_DOMAIN_PAUSED: "paused",
            libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
            libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
            libvirt.VIR_DOMAIN_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_BLOCKED: "blocked",
            libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
        }
        try:
            st, _reason = self.domain.state()
        except libvirt.libvirtError:
            return "gone"
        return names.get(st, f"state-{st}")

    def wait_gone(self, deadline: Deadline | float) -> None:
        """Wait until the domain stopped (powered off / crashed and destroyed by libvirt)."""
        dl = as_deadline(deadline, f"{self.name} stop")
        while self.is_active():
            if dl.expired():
                raise self.error(f"{self.name} still {self.state()} after {dl.seconds:g} s")
            time.sleep(0.2)

    def error(self, message: str) -> GuestError:
        """A GuestError for `message` with the current evidence attached."""
        return GuestError(
            message,
            domain_xml=self.domain_xml,
            qemu_log=self.log_tail(),
            console_tail=self.console.tail() if self.console else "",
        )

    def log_tail(self, lines: int = 40) -> str:
        """Tail of QEMU's own log for this domain (command line, warnings, why it exited)."""
        if not self.local:
            return f"(QEMU's log is on the libvirt host of {self.uri}: /var/log/libvirt/qemu/{self.name}.log)"
        path = self._qemu_log_path()
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError as exc:
            return f"(cannot read {path}: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ control
    def _libvirt_call(self, what: str, fn, *args):
        libvirt = import_libvirt()
        try:
            return fn(*args)
        except libvirt.libvirtError as exc:
            raise self.error(f"{self.name}: {what} failed: {exc}") from exc

    def pause(self) -> None:
        self._libvirt_call("pause", self.domain.suspend)

    def resume(self) -> None:
        self._libvirt_call("resume", self.domain.resume)

    def inject_nmi(self) -> None:
        """Deliver an NMI to the guest (FreeBSD enters ddb on NMI with debug.kdb.break_to_debugger...)."""
        self._libvirt_call("inject NMI", self.domain.injectNMI, 0)

    def send_break(self) -> None:
        """Send a serial BREAK on the console line (QMP chardev-send-break)."""
        self.qmp("chardev-send-break", id=SERIAL_CHARDEV)

    def send_keys(self, keys: list[str | int] | str, *, hold_ms: int = 50) -> None:
        """Press keys together on the guest's keyboard (names from KEYCODES, or Linux keycodes),
        e.g. ``["ctrl", "alt", "esc"]``; a string like ``"ctrl+alt+esc"`` works too."""
        libvirt = import_libvirt()
        if isinstance(keys, str):
            keys = keys.split("+")
        codes = []
        for k in keys:
            if isinstance(k, int):
                codes.append(k)
            elif k.lower() in KEYCODES:
                codes.append(KEYCODES[k.lower()])
            else:
                raise ValueError(f"unknown key name {k!r}; known: {', '.join(sorted(KEYCODES))}")
        self._libvirt_call(
            "send keys", self.domain.sendKey, libvirt.VIR_KEYCODE_SET_LINUX, hold_ms, codes, len(codes), 0
        )

    def qmp(self, cmd: str, **args: Any) -> Any:
        """Run a QMP command through libvirt and return its ``return`` value."""
        import libvirt_qemu

        request: dict[str, Any] = {"execute": cmd}
        if args:
            request["arguments"] = args
        raw = self._libvirt_call(
            f"QMP {cmd}", libvirt_qemu.qemuMonitorCommand, self.domain, json.dumps(request), 0
        )
        reply = json.loads(raw)
        if "error" in reply:
            raise self.error(f"{self.name}: QMP {cmd} {args} failed: {reply['error']}")
        return reply.get("return", {})

    def hmp(self, cmd: str) -> str:
        """Run a human monitor command (e.g. ``info registers``) and return its text."""
        import libvirt_qemu

        return self._libvirt_call(
            f"HMP {cmd!r}",
            libvirt_qemu.qemuMonitorCommand,
            self.domain,
            cmd,
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
        )

    # ------------------------------------------------------------------ memory
    def ram_ranges(self) -> list[tuple[int, int]]:
        """Guest-physical RAM ranges [(pa, size)] for this machine type and memory size."""
        return memory_mod.ram_ranges(self.spec.machine, self.spec.memory_mib * 1024 * 1024)

    def read_phys(self, pa: int, size: int) -> bytes:
        """Read guest-physical memory (chunked memoryPeek; works while running or paused)."""
        return memory_mod.read_phys(self.domain, pa, size, self.ram_ranges())

    def memory_image(
        self, path: str | os.PathLike[str], *, pause: bool = True
    ) -> memory_mod.PhysicalMemoryImage:
        """Write all guest RAM to `path` (QMP pmemsave) and return it as a PhysicalMemoryImage.

        With `pause` (default) the guest is paused for the copy so the image is one instant.
        """
        was_running = self.state() == "running"
        if pause and was_running:
            self.pause()
        try:
            return memory_mod.save_image(self, Path(path), self.ram_ranges())
        finally:
            if pause and was_running:
                self.resume()

    def live_memory(self) -> memory_mod.PhysicalMemoryImage:
        """Guest RAM itself, mapped read-only from its shared backing file (no copy at all).

        Needs ``GuestSpec(shared_memory=True)`` and a local guest. The view changes while the guest
        runs: pause it (or freeze it in ddb) for a consistent picture, or take `memory_image` for a
        copy that stays.
        """
        if not self.spec.shared_memory or not self.local:
            raise GuestError(
                f"{self.name}: live_memory() needs a local guest with GuestSpec(shared_memory=True)"
            )
        path = self.qmp("qom-get", path="/objects/pc.ram", property="mem-path")
        return memory_mod.PhysicalMemoryImage(path, memory_mod.image_layout(self.ram_ranges()))

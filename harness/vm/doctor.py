"""Host readiness: check (and with ``fix=True`` repair) what real libvirt/QEMU guests need on this host.

Standard library only: `.ci/run` calls ``python3 -m harness doctor --fix`` on a fresh machine before
any virtualenv or the libvirt binding exists.

What it handles, and why:
- Debian packages from ``harness/data/debian-packages.txt`` (``apt-get update`` first, no recommends, so
  apt does not drag systemd pieces in).
- ``/dev/kvm`` group/mode: without udev it stays ``root:root 0600`` and libvirt then re-probes QEMU's
  capabilities on every ``createXML`` (~64 s each). ``chgrp kvm; chmod 0660`` fixes it.
- virtlogd + libvirtd: started with ``--daemon`` when no init system runs them, and waited for (the
  first start takes 8-12 s while libvirt probes QEMU). What doctor started is recorded in a state file
  so ``--stop`` stops exactly those and nothing else.
- a real KVM probe (`harness.vm.accel`): `/dev/kvm` existing proves nothing.
- the libvirt Python binding in *this* interpreter's environment (it compiles; needs libvirt-dev,
  pkg-config, gcc, python3-dev).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES_FILE = Path(__file__).resolve().parents[1] / "data" / "debian-packages.txt"
LIBVIRT_SOCKETS = ("/run/libvirt/libvirt-sock", "/var/run/libvirt/libvirt-sock")
#: program or file that shows a package is there, for hosts without dpkg
PACKAGE_EVIDENCE = {
    "qemu-system-x86": "qemu-system-x86_64",
    "qemu-utils": "qemu-img",
    "libvirt-daemon-system": "libvirtd",
    "libvirt-daemon-system-sysv": None,
    "libvirt-clients": "virsh",
    "libvirt-dev": "pkg-config --exists libvirt",
    "pkg-config": "pkg-config",
    "gcc": "gcc",
    "python3-dev": None,
    "busybox-static": "busybox",
    "cpio": "cpio",
    "xz-utils": "xz",
    "bzip2": "bzip2",
    "zstd": "zstd",
    "openssh-server": "sshd",
    "openssh-client": "ssh",
    "grub-pc-bin": "grub-mkrescue",
    "grub-common": "grub-mkrescue",
    "xorriso": "xorriso",
    "mtools": "mcopy",
    "binutils": "objdump",
    "openssl": "openssl",
    "tcsh": "tcsh",
}


@dataclass
class Report:
    """What doctor checked and did, one line each; `problems` decide the exit status."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    started: list[dict] = field(default_factory=list)

    def ok(self, what: str, detail: str) -> None:
        self._emit("ok", what, detail)

    def did(self, what: str, detail: str) -> None:
        self._emit("fixed", what, detail)

    def note(self, what: str, detail: str) -> None:
        self._emit("note", what, detail)

    def problem(self, what: str, detail: str) -> None:
        self.problems.append(f"{what}: {detail}")
        self._emit("PROBLEM", what, detail)

    def _emit(self, tag: str, what: str, detail: str) -> None:
        line = f"{tag:<8}{what}: {detail}"
        self.lines.append(line)
        print(line, flush=True)


# ------------------------------------------------------------------ privilege
def privilege_prefix() -> list[str] | None:
    """``[]`` as root, ``["sudo", "-n"]`` with passwordless sudo, None when we cannot act as root."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        r = subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False)
        if r.returncode == 0:
            return ["sudo", "-n"]
    return None


def _run(cmd: list[str], *, timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)


# ------------------------------------------------------------------ packages
def required_packages(path: Path = PACKAGES_FILE) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and shutil.which("dpkg-query") is not None


def missing_debian_packages(packages: list[str]) -> list[str]:
    r = _run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n", *packages])
    installed = set()
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].startswith("ii"):
            installed.add(parts[0].split(":")[0])
    return [p for p in packages if p not in installed]


def _evidence_present(evidence: str) -> bool:
    argv = evidence.split()
    if len(argv) == 1:
        return shutil.which(argv[0]) is not None or os.path.exists(f"/usr/sbin/{argv[0]}")
    return shutil.which(argv[0]) is not None and _run(argv).returncode == 0


def check_packages(report: Report, fix: bool, prefix: list[str] | None) -> None:
    packages = required_packages()
    if not is_debian():
        missing = [
            p for p in packages if PACKAGE_EVIDENCE.get(p) and not _evidence_present(PACKAGE_EVIDENCE[p])
        ]
        if missing:
            wanted = ", ".join(f"{p} (provides `{PACKAGE_EVIDENCE[p]}`)" for p in missing)
            report.problem(
                "packages",
                "not a Debian host, install the equivalents of these Debian packages yourself: " + wanted,
            )
        else:
            report.ok("packages", "not a Debian host; every program the harness runs was found")
        return
    missing = missing_debian_packages(packages)
    if not missing:
        report.ok("packages", f"all {len(packages)} Debian packages from {PACKAGES_FILE.name} installed")
        return
    if not fix or prefix is None:
        how = "run `fbsd-hil doctor --fix` as root" if prefix is None or not fix else "use --fix"
        report.problem(
            "packages",
            f"missing {' '.join(missing)}; {how} or: "
            f"apt-get install --no-install-recommends {' '.join(missing)}",
        )
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    upd = _run([*prefix, "apt-get", "update"], env=env)
    if upd.returncode != 0:
        report.note("apt-get update", f"failed (status {upd.returncode}): {upd.stderr.strip()[-300:]}")
    inst = _run([*prefix, "apt-get", "install", "-y", "--no-install-recommends", *missing], env=env)
    if inst.returncode != 0:
        err = inst.stderr.strip()[-500:]
        report.problem("packages", f"apt-get install {' '.join(missing)} failed: {err}")
        return
    report.did("packages", f"installed {' '.join(missing)}")


# ------------------------------------------------------------------ /dev/kvm
def check_dev_kvm(report: Report, fix: bool, prefix: list[str] | None) -> None:
    path = "/dev/kvm"
    if not os.path.exists(path):
        report.note(path, "absent: guests use TCG (software emulation)")
        return
    st = os.stat(path)
    import grp

    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        report.note(path, "no 'kvm' group on this host; leaving permissions as they are")
        return
    mode = st.st_mode & 0o777
    if st.st_gid == kvm_gid and mode & 0o660 == 0o660:
        report.ok(path, f"group kvm, mode {mode:04o}")
        return
    was = f"gid {st.st_gid} mode {mode:04o}"
    if not fix or prefix is None:
        report.problem(
            path,
            f"{was}: libvirt re-probes QEMU on every domain start (~64 s each); "
            "fix: chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (or `fbsd-hil doctor --fix`)",
        )
        return
    r1 = _run([*prefix, "chgrp", "kvm", path])
    r2 = _run([*prefix, "chmod", "0660", path])
    if r1.returncode or r2.returncode:
        report.problem(path, f"could not fix permissions: {(r1.stderr + r2.stderr).strip()}")
        return
    report.did(path, f"{was} -> group kvm, mode 0660")


# ------------------------------------------------------------------ daemons
def _pids_named(name: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                pids.append(int(entry.name))
        except OSError:
            continue
    return sorted(pids)


def libvirt_answers(uri: str = "qemu:///system") -> bool:
    """Does libvirtd answer on `uri`? Uses virsh when present, else the system socket."""
    if shutil.which("virsh"):
        try:
            r = _run(["virsh", "-c", uri, "uri"], timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0
    for path in LIBVIRT_SOCKETS:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(path)
            return True
    return False


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def _start_daemon(name: str, prefix: list[str], report: Report) -> int | None:
    exe = shutil.which(name) or f"/usr/sbin/{name}"
    if not os.path.exists(exe):
        report.problem(name, f"{name} is not installed (Debian: libvirt-daemon-system)")
        return None
    before = set(_pids_named(name))
    r = _run([*prefix, exe, "--daemon"], timeout=60)
    if r.returncode != 0:
        report.problem(name, f"`{exe} --daemon` failed (status {r.returncode}): {r.stderr.strip()[-300:]}")
        return None
    for _ in range(50):
        new = [p for p in _pids_named(name) if p not in before]
        if new:
            return new[0]
        time.sleep(0.1)
    report.problem(name, f"`{exe} --daemon` returned 0 but no {name} process appeared")
    return None


def check_daemons(report: Report, fix: bool, prefix: list[str] | None, wait: float = 90.0) -> None:
    if _systemd_running():
        for unit in ("virtlogd", "libvirtd"):
            if _run(["systemctl", "is-active", "--quiet", unit]).returncode == 0:
                report.ok(unit, "active under systemd")
            elif fix and prefix is not None:
                r = _run([*prefix, "systemctl", "start", unit])
                if r.returncode:
                    report.problem(unit, f"systemctl start {unit} failed: {r.stderr.strip()}")
                else:
                    report.did(unit, "started with systemctl (not recorded: systemd owns it)")
            else:
                report.problem(unit, f"not active; run: systemctl start {unit}")
    else:
        for name in ("virtlogd", "libvirtd"):
            pids = _pids_named(name)
            if pids:
                report.ok(name, f"running (pid {', '.join(map(str, pids))})")
                continue
            if not fix or prefix is None:
                report.problem(
                    name, f"not running; start it: {name} --daemon (as root), or `fbsd-hil doctor --fix`"
                )
                continue
            pid = _start_daemon(name, prefix, report)
            if pid is not None:
                report.started.append({"name": name, "pid": pid, "prefix": prefix})
                report.did(name, f"started `{name} --daemon` (pid {pid})")
    if report.problems and any(p.startswith(("libvirtd", "virtlogd")) for p in report.problems):
        return
    t0 = time.monotonic()
    while not libvirt_answers():
        if time.monotonic() - t0 > wait:
            report.problem("libvirt", f"qemu:///system did not answer within {wait:.0f} s")
            return
        time.sleep(0.5)
    report.ok("libvirt", f"qemu:///system answers (waited {time.monotonic() - t0:.1f} s)")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as stopped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int, sig: signal.Signals, prefix: list[str]) -> None:
    if prefix:
        _run([*prefix, "kill", f"-{sig.name.removeprefix('SIG')}", str(pid)])
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def stop_started(state_file: Path, report: Report) -> None:
    """Stop the daemons a previous `--fix` run recorded in `state_file`, newest first; nothing else."""
    try:
        state = json.loads(state_file.read_text() or "{}")
    except (OSError, ValueError) as exc:
        report.problem("stop", f"cannot read state file {state_file}: {exc}")
        return
    entries = state.get("started", [])
    if not entries:
        report.ok("stop", f"{state_file} records nothing started by doctor")
        return
    for entry in reversed(entries):
        name, pid = entry["name"], int(entry["pid"])
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            report.ok(name, f"pid {pid} already gone")
            continue
        if comm != name:
            report.note(name, f"pid {pid} is now {comm!r}, not ours: left alone")
            continue
        prefix = entry.get("prefix") or []
        _kill(pid, signal.SIGTERM, prefix)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        if _alive(pid):
            _kill(pid, signal.SIGKILL, prefix)
        report.did(name, f"stopped pid {pid}")
    state["started"] = []
    state_file.write_text(json.dumps(state, indent=1))


def record_started(state_file: Path, started: list[dict]) -> None:
    try:
        state = json.loads(state_file.read_text() or "{}")
    except (OSError, ValueError):
        state = {}
    state.setdefault("started", []).extend(started)
    state_file.write_text(json.dumps(state, indent=1))


# ------------------------------------------------------------------ KVM, python binding
def check_kvm(report: Report) -> None:
    from harness.vm import accel

    verdict = accel.probe_kvm()
    if verdict.usable:
        report.ok("kvm", f"usable: {verdict.reason}")
    else:
        report.note("kvm", f"not usable, guests use TCG: {verdict.reason}")


def _externally_managed() -> bool:
    if sys.prefix != sys.base_prefix:
        return False
    return Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists()


def check_libvirt_python(report: Report, fix: bool) -> None:
    try:
        libvirt = importlib.import_module("libvirt")
        report.ok("libvirt-python", f"importable in {sys.executable} (libvirt {libvirt.getVersion()})")
        return
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "libvirt-python"]
    if _externally_managed():
        report.note(
            "libvirt-python",
            f"not in {sys.executable}, an externally managed system Python: left alone "
            "(tox/venvs install it themselves; or apt-get install python3-libvirt)",
        )
        return
    if not fix:
        report.problem("libvirt-python", f"`import libvirt` fails in {sys.executable}; run: {' '.join(cmd)}")
        return
    r = _run(cmd)
    if r.returncode != 0:
        report.problem(
            "libvirt-python",
            f"`{' '.join(cmd)}` failed (needs libvirt-dev, pkg-config, gcc, python3-dev): "
            f"{r.stderr.strip()[-500:]}",
        )
        return
    importlib.invalidate_caches()
    report.did("libvirt-python", f"installed into {sys.prefix}")


def check_leftover_guests(report: Report) -> None:
    """Reap domains and overlays whose owning run died (SIGKILL, CI timeout); see harness.vm.reaper."""
    try:
        importlib.import_module("libvirt")
    except ImportError:
        return
    from harness.vm.reaper import reap

    try:
        r = reap()
    except Exception as exc:  # noqa: BLE001 - a report line, not a crash, when libvirt is unhappy
        report.note("leftover guests", f"could not check: {str(exc).splitlines()[0]}")
        return
    if r.destroyed or r.removed_files:
        report.did(
            "leftover guests",
            f"reaped {len(r.destroyed)} domain(s) and {len(r.removed_files)} file(s) of dead runs",
        )
    else:
        report.ok("leftover guests", f"none ({len(r.kept)} live guest(s) of running owners left alone)")
    for err in r.errors:
        report.problem("leftover guests", err)


# ------------------------------------------------------------------ entry
def run_doctor(*, fix: bool = False, state_file: Path | None = None, probe_kvm: bool = True) -> Report:
    report = Report()
    prefix = privilege_prefix()
    if fix and prefix is None:
        report.note("privilege", "not root and no passwordless sudo: can only check, not fix")
    check_packages(report, fix, prefix)
    check_dev_kvm(report, fix, prefix)
    check_daemons(report, fix, prefix)
    if state_file is not None and report.started:
        record_started(state_file, report.started)
        report.note("state", f"recorded what was started in {state_file} (`fbsd-hil doctor --stop` stops it)")
    if probe_kvm:
        check_kvm(report)
    check_libvirt_python(report, fix)
    if not any(p.startswith("libvirt") for p in report.problems):
        check_leftover_guests(report)
    return report


def ensure_local_libvirt(uri: str | None = None) -> Report | None:
    """Make a local libvirt usable before a run: start virtlogd/libvirtd and fix /dev/kvm if needed.

    `fbsd-hil repro` calls this so a by-hand run works on a host where nobody ran `doctor --fix`
    yet (no init system starts libvirtd here). Returns None when libvirt already answers or the URI
    is remote; otherwise the report of what was checked and done (its `problems` say what is left).
    """
    from harness.vm.libvirt_conn import default_uri, is_local

    uri = uri or default_uri()
    if not is_local(uri) or libvirt_answers(uri):
        return None
    report = Report()
    prefix = privilege_prefix()
    check_dev_kvm(report, True, prefix)
    check_daemons(report, True, prefix)
    return report

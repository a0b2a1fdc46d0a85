"""Reap guests and files left behind by a killed run (SIGKILL, OOM, a CI job timeout).

Ownership is marked twice when a guest starts:
- in the domain XML, ``<metadata><fbh:owner pid= host= boot-id= proc-start= registry=/></metadata>``;
- in a registry file (``~/.cache/fbsd-hil/guests/<name>.json``) listing the files the run created
  (overlays, frozen save-state disks), because a domain that already died takes its metadata with it.

A domain or registry entry is reaped only when its owner is provably gone: same host and boot, and the
pid is dead or now belongs to a process that started at a different time. Domains without our owner
element are never touched, whatever their name. Only files listed in the registry are removed.
"""

from __future__ import annotations

import json
import os
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from harness.vm.accel import CACHE_DIR
from harness.vm.domain_xml import OWNER_NS, Owner

REGISTRY_DIR = CACHE_DIR / "guests"


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def proc_start(pid: int) -> str | None:
    """Start time (clock ticks since boot) of `pid`, or None when it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces/parentheses: fields after the last ')' are fixed
    return stat.rsplit(")", 1)[1].split()[19]


def current_owner(registry: Path) -> Owner:
    pid = os.getpid()
    return Owner(
        pid=pid,
        host=socket.gethostname(),
        boot_id=boot_id(),
        proc_start=proc_start(pid) or "",
        registry=str(registry),
    )


def owner_gone(owner: dict[str, str]) -> bool:
    """True only when we can prove the owning process no longer exists."""
    if owner.get("host") != socket.gethostname():
        return False  # another machine's guest on a shared libvirtd: not ours to judge
    if owner.get("boot-id", owner.get("boot_id")) != boot_id():
        return True  # started before this host rebooted
    try:
        pid = int(owner["pid"])
    except (KeyError, ValueError):
        return False
    start = proc_start(pid)
    return start is None or start != owner.get("proc-start", owner.get("proc_start"))


def write_registry(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def owner_from_xml(xml: str) -> dict[str, str] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    el = root.find(f"./metadata/{{{OWNER_NS}}}owner")
    return dict(el.attrib) if el is not None else None


@dataclass
class ReapReport:
    destroyed: list[str] = field(default_factory=list)
    removed_files: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _kept(owner: dict[str, str]) -> bool:
    """The run closed this guest with keep=True (e.g. --keep-vm): it stays until a human removes it."""
    try:
        return bool(json.loads(Path(owner.get("registry", "")).read_text()).get("kept"))
    except (OSError, ValueError, AttributeError):
        return False


def _remove_listed_files(record: dict, report: ReapReport) -> None:
    for f in record.get("files", []):
        p = Path(f)
        try:
            if p.is_file() and not p.is_symlink():
                p.unlink()
                report.removed_files.append(str(p))
        except OSError as exc:
            report.errors.append(f"cannot remove {p}: {exc}")


def reap(uri: str | None = None, *, prefix: str = "fbsd-hil", conn=None) -> ReapReport:
    """Destroy our dead owners' domains on `uri` and remove their registered files."""
    from harness.vm.libvirt_conn import connect, import_libvirt

    libvirt = import_libvirt()
    report = ReapReport()
    own_conn = conn is None
    conn = conn or connect(uri)
    try:
        for dom in conn.listAllDomains(0):
            name = dom.name()
            if not name.startswith(prefix + "-"):
                continue
            try:
                owner = owner_from_xml(dom.XMLDesc(0))
            except libvirt.libvirtError:
                continue  # vanished meanwhile
            if owner is None or not owner_gone(owner) or _kept(owner):
                report.kept.append(name)
                continue
            try:
                persistent = dom.isPersistent()
                if dom.isActive():
                    dom.destroy()  # a transient domain is gone after this
                report.destroyed.append(name)
                if persistent:
                    dom.undefine()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    report.errors.append(f"cannot destroy {name}: {exc}")
        live = {d.name() for d in conn.listAllDomains(0)}
    finally:
        if own_conn:
            conn.close()
    if REGISTRY_DIR.is_dir():
        for reg in sorted(REGISTRY_DIR.glob(f"{prefix}-*.json")):
            try:
                record = json.loads(reg.read_text())
            except (OSError, ValueError):
                continue
            if record.get("name") in live or not owner_gone(record.get("owner", {})):
                continue
            if not record.get("kept"):  # a kept guest's files stay for inspection
                _remove_listed_files(record, report)
            reg.unlink(missing_ok=True)
    return report

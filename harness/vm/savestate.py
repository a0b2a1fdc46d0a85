"""Save a running guest's state once, then start guests from it in seconds ("booted and ready").

`save(guest, dir)` uses libvirt's save (the domain's RAM and device state go to ``dir/state.sav``) and
freezes the guest's writable disks alongside it, because a restored guest must see its disks exactly
as they were at the save:
- the boot overlay moves into the directory and becomes a read-only backing file; every restore gets
  its own new qcow2 overlay on top (cheap, any number of restores);
- extra disks (e.g. a raw dump disk the host reads directly) are copied sparsely; every restore gets
  its own sparse copy, so the host-side file stays a plain raw disk.
The saved guest itself carries on running from the same state (restored in place, still writing
its own extra disk files), so a session fixture can save once and keep using its guest. Restored
guests name their disk copies in `Guest.disk_paths()`.

`restore(saved, workdir)` restores under a new unique name (libvirt accepts a changed name, disk
paths and serial log path in the restore XML), paused; the console is attached before it resumes.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import struct
import subprocess
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from harness.vm.domain_xml import OWNER_NS, QEMU_NS, GuestSpec
from harness.vm.libvirt_conn import import_libvirt
from harness.vm.reaper import current_owner, write_registry

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("fbh", OWNER_NS)


@dataclass
class SavedDisk:
    target: str  # e.g. "vda"
    frozen: Path  # the disk as it was at save time (never written again)
    format: str  # format of `frozen`: "qcow2" | "raw"
    mode: str  # "overlay": restores get a qcow2 overlay on it; "copy": restores get a sparse copy
    boot: bool = False  # the guest's boot overlay (becomes `Guest.overlay` after a restore)


@dataclass
class SavedState:
    dir: Path
    state_file: Path
    spec: GuestSpec
    disks: list[SavedDisk] = field(default_factory=list)
    saved_in: float = 0.0  # seconds libvirt took to save

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SavedState:
        """Re-open a saved state directory written by `save` (e.g. by an earlier session)."""
        path = Path(directory) / "saved.pickle"
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise ValueError(
                f"{path}: not a saved guest state written by harness.vm.savestate: {exc}"
            ) from exc
        if not isinstance(saved, cls):
            raise ValueError(f"{path}: not a saved guest state written by harness.vm.savestate")
        return saved


def _sparse_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        raise FileExistsError(f"refusing to overwrite {dst}")
    r = subprocess.run(
        ["cp", "--sparse=always", "--reflink=auto", str(src), str(dst)], capture_output=True, text=True
    )
    if r.returncode != 0:
        raise OSError(f"cannot copy {src} to {dst}: {r.stderr.strip()}")


#: libvirt's save image header (src/qemu/qemu_saveimage.h): magic, then 5 u32 fields, 14 unused u32
SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_HEADER = struct.Struct("<16s5I56x")


def _copy_state_with_xml(src: Path, dst: Path, xml: str) -> None:
    """Copy a libvirt save image with a different embedded domain XML.

    libvirt insists that a restore keeps the saved domain's name and UUID (its ABI check compares
    them), so a second guest from the same state needs its own image whose header XML carries its
    own name and UUID. The header has room for this: libvirt pads the XML area (QEMU_SAVE_PAD).
    """
    with open(src, "rb", buffering=0) as fin:
        head = fin.read(SAVE_HEADER.size)
        magic, version, data_len, running, compressed, cookie_off = SAVE_HEADER.unpack(head)
        if magic != SAVE_MAGIC:
            raise ValueError(f"{src}: not a libvirt QEMU save image (magic {magic!r}, want {SAVE_MAGIC!r})")
        data = fin.read(data_len)
        cookie = data[cookie_off:].split(b"\x00", 1)[0] + b"\x00" if cookie_off else b""
        xml_b = xml.encode() + b"\x00"
        new_data = xml_b + cookie
        if len(new_data) > data_len:
            raise ValueError(f"{src}: the new domain XML ({len(xml_b)} bytes) does not fit the save header")
        new_cookie_off = len(xml_b) if cookie else 0
        with open(dst, "xb", buffering=0) as fout:
            fout.write(SAVE_HEADER.pack(magic, version, data_len, running, compressed, new_cookie_off))
            fout.write(new_data.ljust(data_len, b"\x00"))
            total = os.fstat(fin.fileno()).st_size - fin.tell()
            while total > 0:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), total)
                if n == 0:
                    raise OSError(f"short copy of {src}")
                total -= n


def _file_disks(root: ET.Element) -> list[ET.Element]:
    return [
        d
        for d in root.findall("./devices/disk")
        if d.get("device") == "disk" and d.find("readonly") is None and d.find("source") is not None
    ]


def save(guest, dest: Path) -> SavedState:
    """Save `guest` into directory `dest` (must not exist yet); the guest continues from the save."""
    libvirt = import_libvirt()
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=False)
    state_file = dest / "state.sav"
    live_xml = guest.domain.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    t0 = time.monotonic()
    try:
        guest.domain.saveFlags(str(state_file), None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
    except libvirt.libvirtError as exc:
        raise guest.error(f"{guest.name}: libvirt save to {state_file} failed: {exc}") from exc
    saved_in = time.monotonic() - t0
    disks: list[SavedDisk] = []
    for disk in _file_disks(ET.fromstring(live_xml)):
        target = disk.find("target").get("dev")
        src = Path(disk.find("source").get("file"))
        fmt = disk.find("driver").get("type", "raw")
        frozen = dest / f"disk-{target}.{fmt}"
        if guest.overlay is not None and src == guest.overlay:
            shutil.move(src, frozen)
            guest.created_files.remove(src)
            disks.append(SavedDisk(target, frozen, fmt, "overlay", boot=True))
        else:
            _sparse_copy(src, frozen)
            disks.append(SavedDisk(target, frozen, fmt, "copy" if fmt == "raw" else "overlay"))
        frozen.chmod(0o444)
    saved = SavedState(dir=dest, state_file=state_file, spec=guest.spec, disks=disks, saved_in=saved_in)
    with open(dest / "saved.pickle", "wb") as f:
        pickle.dump(saved, f)
    # carry on: the same Guest object (and its Console) continues from the saved state
    _restore_into(guest, saved, same_guest=True)
    return saved


def restore(
    saved: SavedState,
    workdir: str | os.PathLike[str],
    *,
    keep: bool = False,
    conn=None,
    copies: dict[str, Path] | None = None,
):
    """A new running `Guest` started from `saved` (paused restore, console attached, then resumed).

    `copies`: target -> where to put this guest's copy of that copied disk (the caller's file: it
    outlives the guest, e.g. a run's dump disk kept as evidence); other copies go into the guest's dir."""
    from harness.vm.guest import Guest

    guest = Guest(saved.spec, workdir, keep=keep, conn=conn)
    try:
        guest.dir.mkdir(parents=True, exist_ok=False)
        _restore_into(guest, saved, same_guest=False, copies=copies or {})
    except BaseException:
        guest.close()
        raise
    return guest


def _restore_into(
    guest, saved: SavedState, *, same_guest: bool, copies: dict[str, Path] | None = None
) -> None:
    from harness.vm import guest as guest_mod

    libvirt = import_libvirt()
    guest_mod._live_guests.add(guest)
    tag = f"r{int(time.time() * 1000) % 10**8}"
    xml = guest.conn.saveImageGetXMLDesc(str(saved.state_file), libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)
    root = ET.fromstring(xml)
    root.find("name").text = guest.name
    new_paths = _disk_copies(guest, saved, tag, same_guest=same_guest, copies=copies or {})
    _point_disks_at_copies(root, guest, saved, new_paths)
    if not same_guest and guest.spec.network is not None:
        # the saved guest may still hold its forward port: a new guest forwards from its own port
        guest.ssh_port = guest_mod.free_local_port()
        for arg in root.iter(f"{{{QEMU_NS}}}arg"):
            value = arg.get("value", "")
            if "hostfwd=tcp:127.0.0.1:" in value:
                new = f"hostfwd=tcp:127.0.0.1:{guest.ssh_port}-"
                arg.set("value", re.sub(r"hostfwd=tcp:127\.0\.0\.1:\d+-", new, value))
    guest.console_log = guest.dir / f"console-{tag}.log"
    for log in [*root.findall("./devices/serial/log"), *root.findall("./devices/console/log")]:
        log.set("file", str(guest.console_log))
    guest.console_logs.append(guest.console_log)
    _claim_ownership(root, guest)
    _restore_domain(guest, saved, root, tag, same_guest=same_guest)
    guest._attach_console(new=not same_guest)
    guest.resume()
    guest.resumed_at = time.monotonic()


def _disk_copies(
    guest, saved: SavedState, tag: str, *, same_guest: bool, copies: dict[str, Path]
) -> dict[str, Path]:
    """A private overlay (or sparse copy) of each saved disk for this guest: target -> path."""
    from harness.vm import guest as guest_mod

    new_paths: dict[str, Path] = {}
    for d in saved.disks:
        if same_guest and not d.boot:
            continue  # the saved guest itself carries on with its own extra disks (the frozen copy is saved)
        if d.mode == "overlay":
            path = guest.dir / f"{d.target}-{tag}.qcow2"
            guest_mod.create_overlay(d.frozen, path, d.format)
            if d.boot:
                guest.overlay = path
        elif d.target in copies:  # the caller's file: not the guest's to delete
            path = Path(copies[d.target])
            _sparse_copy(d.frozen, path)
            new_paths[d.target] = path
            continue
        else:
            path = guest.dir / f"{d.target}-{tag}.{d.format}"
            _sparse_copy(d.frozen, path)
        guest.created_files.append(path)
        new_paths[d.target] = path
    return new_paths


def _point_disks_at_copies(root, guest, saved: SavedState, new_paths: dict[str, Path]) -> None:
    for disk in _file_disks(root):
        target = disk.find("target").get("dev")
        if target in new_paths:
            disk.find("source").set("file", str(new_paths[target]))
            if any(sd.target == target and sd.mode == "overlay" for sd in saved.disks):
                disk.find("driver").set("type", "qcow2")


def _claim_ownership(root, guest) -> None:
    """This process owns the restored domain (the reaper's metadata), not the one that saved it."""
    metadata = root.find("metadata")
    if metadata is None:
        metadata = ET.SubElement(root, "metadata")
    for old in list(metadata):
        if old.tag == f"{{{OWNER_NS}}}owner":
            metadata.remove(old)
    owner = current_owner(guest.registry)
    guest._owner_dict = {
        "pid": str(owner.pid),
        "host": owner.host,
        "boot-id": owner.boot_id,
        "proc-start": owner.proc_start,
    }
    metadata.append(ET.fromstring(owner.to_xml()))


def _restore_domain(guest, saved: SavedState, root, tag: str, *, same_guest: bool) -> None:
    """libvirt restore, paused; a new guest restores from a private copy carrying its own XML."""
    from harness.vm import guest as guest_mod

    libvirt = import_libvirt()
    state_file = saved.state_file
    dxml: str | None
    if same_guest:
        guest.domain_xml = dxml = ET.tostring(root, encoding="unicode")
    else:
        # a new guest: own name and UUID, so a private image copy (see _copy_state_with_xml)
        uuid_el = root.find("uuid")
        if uuid_el is not None:
            uuid_el.text = str(uuidlib.uuid4())
        guest.domain_xml = ET.tostring(root, encoding="unicode")
        dxml = None
        state_file = guest.dir / f"state-{tag}.sav"
        try:
            _copy_state_with_xml(saved.state_file, state_file, guest.domain_xml)
        except BaseException:
            state_file.unlink(missing_ok=True)
            raise
    write_registry(guest.registry, guest._registry_record())
    guest.started_at = time.monotonic()
    try:
        guest.conn.restoreFlags(str(state_file), dxml, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        guest.domain = guest.conn.lookupByName(guest.name)
    except libvirt.libvirtError as exc:
        raise guest_mod.GuestLaunchError(
            f"libvirt could not restore {state_file} as {guest.name}: {exc}",
            domain_xml=guest.domain_xml,
            qemu_log=guest.log_tail(),
        ) from exc
    finally:
        if state_file != saved.state_file:
            state_file.unlink(missing_ok=True)

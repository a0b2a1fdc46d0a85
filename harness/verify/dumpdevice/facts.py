"""What the hypervisor knows about the dump device: virtio devices, their queues and ring addresses.

Read from QEMU's QMP (``x-query-virtio``, ``x-query-virtio-status``, ``x-query-virtio-queue-status``,
QEMU >= 7.2) while the guest sits in ddb after the dump, and saved into the run directory as
``dump-device-state.json`` so verification can be re-run from artifacts alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: the file name in a run directory
STATE_FILE = "dump-device-state.json"


@dataclass(frozen=True)
class QueueFacts:
    """One virtqueue as QEMU reports it (guest-physical ring addresses)."""

    index: int
    num: int
    desc: int
    avail: int
    used: int
    used_idx: int | None = None
    last_avail_idx: int | None = None
    inuse: int | None = None


@dataclass(frozen=True)
class VirtioDeviceFacts:
    path: str  # QOM path, e.g. /machine/peripheral/virtio-disk0/virtio-backend
    name: str  # "virtio-blk"
    queues: tuple[QueueFacts, ...] = ()
    capacity_bytes: int | None = None  # the disk's size when known (bounds a request's sector)

    @property
    def short(self) -> str:
        """A readable device name: the QOM id ("virtio-disk0") rather than the whole path."""
        parts = [p for p in self.path.split("/") if p]
        return parts[2] if len(parts) > 2 and parts[1] == "peripheral" else self.path


@dataclass
class DumpDeviceState:
    """Every virtio-blk device and queue QEMU reported, plus notes on what could not be read."""

    devices: list[VirtioDeviceFacts] = field(default_factory=list)
    source: str = "qemu"
    notes: list[str] = field(default_factory=list)
    #: [start, end) bytes of the dump device the dump occupies, when known: a dump write lands there
    dump_extent: tuple[int, int] | None = None

    @property
    def queues(self) -> list[tuple[VirtioDeviceFacts, QueueFacts]]:
        return [(d, q) for d in self.devices for q in d.queues]

    # -- from QEMU -----------------------------------------------------------------------------------
    @classmethod
    def from_qemu(cls, qmp: Any) -> DumpDeviceState:
        """Ask QEMU through ``qmp(command, **arguments) -> return value`` (e.g. `Guest.qmp`). A QEMU that
        lacks the x-query-virtio commands gives an empty state with a note, never an exception."""
        state = cls()
        try:
            listed = [d for d in qmp("x-query-virtio") if d.get("name") == "virtio-blk"]
        except Exception as exc:  # noqa: BLE001 - old QEMU or no monitor: evidence only
            state.notes.append(f"x-query-virtio failed ({type(exc).__name__}: {exc})")
            return state
        sizes = _disk_sizes(qmp)
        for d in listed:
            path = str(d["path"])
            try:
                nvq = int(qmp("x-query-virtio-status", path=path).get("num-vqs", 1))
                queues = []
                for q in range(nvq):
                    st = qmp("x-query-virtio-queue-status", path=path, queue=q)
                    if not int(st.get("vring-num", 0)) or not int(st.get("vring-desc", 0)):
                        continue
                    queues.append(
                        QueueFacts(
                            index=q,
                            num=int(st["vring-num"]),
                            desc=int(st["vring-desc"]),
                            avail=int(st["vring-avail"]),
                            used=int(st["vring-used"]),
                            used_idx=_opt_int(st.get("used-idx")),
                            last_avail_idx=_opt_int(st.get("last-avail-idx")),
                            inuse=_opt_int(st.get("inuse")),
                        )
                    )
            except Exception as exc:  # noqa: BLE001
                state.notes.append(f"{path}: queue status not read ({type(exc).__name__}: {exc})")
                continue
            state.devices.append(VirtioDeviceFacts(path, "virtio-blk", tuple(queues), sizes.get(path)))
        return state

    # -- serialization ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for dev in d["devices"]:
            for q in dev["queues"]:
                for k in ("desc", "avail", "used"):
                    q[k] = f"{q[k]:#x}"
        if self.dump_extent is not None:
            d["dump_extent"] = [f"{x:#x}" for x in self.dump_extent]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DumpDeviceState:
        devices = []
        for dev in d.get("devices", []):
            queues = tuple(
                QueueFacts(
                    index=int(q["index"]),
                    num=int(q["num"]),
                    desc=int(str(q["desc"]), 0),
                    avail=int(str(q["avail"]), 0),
                    used=int(str(q["used"]), 0),
                    used_idx=_opt_int(q.get("used_idx")),
                    last_avail_idx=_opt_int(q.get("last_avail_idx")),
                    inuse=_opt_int(q.get("inuse")),
                )
                for q in dev.get("queues", [])
            )
            devices.append(
                VirtioDeviceFacts(
                    str(dev["path"]),
                    str(dev.get("name", "virtio-blk")),
                    queues,
                    _opt_int(dev.get("capacity_bytes")),
                )
            )
        ext = d.get("dump_extent")
        extent = (int(str(ext[0]), 0), int(str(ext[1]), 0)) if ext else None
        return cls(devices, str(d.get("source", "qemu")), list(d.get("notes", [])), extent)

    @classmethod
    def from_json(cls, text: str) -> DumpDeviceState:
        return cls.from_dict(json.loads(text))

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON (refuses to overwrite: it may be a user's file)."""
        path = Path(path)
        with open(path, "x", encoding="utf-8") as f:
            f.write(self.to_json() + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DumpDeviceState:
        """Load a saved state; a file that is not one gives a one-line error naming it."""
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a dump-device state file ({type(exc).__name__}: {exc})") from None

    def describe(self) -> str:
        """One line for the report."""
        if not self.devices:
            return "dump device state from QEMU: no virtio-blk device" + (
                f" ({'; '.join(self.notes)})" if self.notes else ""
            )
        qs = ", ".join(
            f"{d.short} queue {q.index} (desc {q.desc:#x}, {q.num} entries)" for d, q in self.queues
        )
        return f"dump device state from QEMU: {qs}"


def _disk_sizes(qmp: Any) -> dict[str, int]:
    """virtio backend QOM path -> the disk's virtual size, from ``query-block`` (empty if unanswered)."""
    out: dict[str, int] = {}
    try:
        blocks = qmp("query-block")
    except Exception:  # noqa: BLE001 - the size only sharpens a rule
        return out
    for b in blocks or []:
        qdev = str(b.get("qdev") or "")
        size = (b.get("inserted") or {}).get("image", {}).get("virtual-size")
        if qdev and size:
            path = qdev if qdev.endswith("/virtio-backend") else f"/machine/peripheral/{qdev}/virtio-backend"
            out[path] = int(size)
    return out


def _opt_int(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return int(str(v), 0)
    except ValueError:
        return None

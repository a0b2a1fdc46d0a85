"""Getting a written crash dump out of the guest: `RetrievedDump` by two independent routes.

(a) `from_dump_disk`: on the host, straight from the raw dump disk image with ``reader.device.extract``
    (savecore semantics: ``vmcore.N``, ``info.N``, ``bounds``; never overwrites). No guest userland is
    needed, which is what makes early-boot and bare-kernel dumps retrievable. The guest must be paused
    (or gone) so the disk does not change under us; pass the `Guest` and it is paused for you.
(b) `via_savecore`: the FreeBSD way. After the guest rebooted, rc's savecore(8) copies the dump to
    ``/var/crash/vmcore.N``; we find N from ``/var/crash/bounds`` (running savecore ourselves if rc did
    not), then fetch ``vmcore.N`` (or ``.gz`` / ``.zst`` / ``vmcore_encrypted.N`` + ``key.N``), ``info.N``
    and ``/boot/kernel/kernel`` over SFTP with a progress bar.

Both return a `RetrievedDump` with paths, the decoded dump header, the kind (``mini`` / ``full``, read
from the payload itself), the method, sizes and timings.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.freebsd.stages import FreeBSDStageError


class RetrieveError(FreeBSDStageError):
    """The dump could not be retrieved; says from where and what was found instead."""


@dataclass
class RetrievedDump:
    vmcore: Path  # what `reader.open_vmcore` opens (decrypted when a key was given)
    info: Path | None
    kernel: Path | None
    header: dict[str, Any]
    kind: str  # "mini" | "full" | "text" | "encrypted" | "unknown"
    method: str  # "host" | "savecore"
    sizes: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    key: Path | None = None
    compression: str = "none"
    #: where on the disk image the dump was found (leader/trailer offsets, the partition if any)
    placement: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "vmcore": str(self.vmcore),
            "info": str(self.info) if self.info else None,
            "kernel": str(self.kernel) if self.kernel else None,
            "header": self.header,
            "kind": self.kind,
            "method": self.method,
            "sizes": dict(self.sizes),
            "timings": dict(self.timings),
            "key": str(self.key) if self.key else None,
            "compression": self.compression,
        }


def payload_kind(path: Path) -> tuple[str, str]:
    """(kind, compression) from the first bytes of a vmcore file (decompressing .gz / .zst)."""
    with open(path, "rb") as f:
        head = f.read(512)
    compression = "none"
    if head[:2] == b"\x1f\x8b":
        compression = "gzip"
        try:
            with gzip.open(path, "rb") as g:
                head = g.read(512)
        except (OSError, EOFError):
            # the kernel writes a minimal 10-byte header + raw deflate; gzip module copes, but be safe
            head = b""
    elif head[:4] == b"\x28\xb5\x2f\xfd":
        compression = "zstd"
        import zstandard

        with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as r:
            head = r.read(512)
    if head.startswith(b"minidump"):
        return "mini", compression
    if head.startswith(b"\x7fELF"):
        return "full", compression
    if len(head) > 262 and head[257:262] == b"ustar":
        return "text", compression
    return "unknown", compression


def parse_info_file(text: str) -> dict[str, str]:
    """savecore's ``info.N``: ``Key: value`` lines -> dict (first colon splits)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _check_private_key(private_key: Any) -> None:
    """A private key given as a path must exist before anything is extracted: a mistyped path was
    silently ignored whenever the dump turned out not to be encrypted."""
    if isinstance(private_key, str | os.PathLike) and not Path(private_key).is_file():
        raise RetrieveError(
            f"private key {os.fspath(private_key)} does not exist (want a PEM RSA private key)"
        )


# ----------------------------------------------------------------------------- (a) host
def from_dump_disk(
    image: str | Path,
    outdir: str | Path,
    *,
    guest=None,
    private_key: Any = None,
    kernel: str | Path | None = None,
    partition: int | None = None,
) -> RetrievedDump:
    """Extract the dump from a raw dump-disk image on the host (see module docstring); `partition`
    (1-based, as in ``vtbd0pN``): the dump device was that GPT partition, its end holds the dump."""
    from reader.device import extract
    from reader.errors import ReaderError

    image = Path(image)
    _check_private_key(private_key)
    timings: dict[str, float] = {}
    if guest is not None:
        t = time.monotonic()
        guest.pause()
        timings["pause"] = time.monotonic() - t
    t = time.monotonic()
    try:
        ex = extract(image, outdir, private_key=private_key, partition=partition)
    except ReaderError as exc:
        where = f" (partition {partition})" if partition is not None else ""
        raise RetrieveError(f"no dump retrievable from dump disk {image}{where}: {exc}") from exc
    timings["extract"] = time.monotonic() - t
    kind, compression = payload_kind(ex.vmcore)
    if ex.kind == "textdump":
        kind = "text"
    elif ex.encrypted_vmcore is not None and ex.vmcore == ex.encrypted_vmcore:
        kind = "encrypted"
    sizes = {"vmcore": ex.vmcore.stat().st_size, "image": image.stat().st_size}
    if ex.info:
        sizes["info"] = ex.info.stat().st_size
    return RetrievedDump(
        vmcore=ex.vmcore,
        info=ex.info,
        kernel=Path(kernel) if kernel else None,
        header=dict(ex.header),
        kind=kind,
        method="host",
        sizes=sizes,
        timings=timings,
        key=ex.key,
        compression=compression,
        placement=_placement(ex.device),
    )


def _placement(dd) -> str:
    """Where savecore's rules found the dump: leader and trailer, and the partition they lie in."""
    if dd is None:
        return ""
    where = f"leader at {dd.leader_offset:#x}, trailer at {dd.trailer_offset:#x}"
    if dd.partition is not None:
        p = dd.partition
        where += (f", the last sector of partition {p.index} ({p.kind}, bytes {p.offset:#x}.."
                  f"{p.offset + p.size:#x})")
    return where


# ----------------------------------------------------------------------------- (b) savecore + SFTP
def _new_dump_number(
    ssh, crashdir: str, dump_device: str | None, previous_bounds: int | None, wait_seconds: float
) -> int:
    """N of the dump savecore wrote after ours; runs savecore itself when rc's did not."""
    n = _latest_number(ssh, crashdir)
    if n is not None and (previous_bounds is None or n > previous_bounds):
        return n
    if dump_device is None:
        raise RetrieveError(
            f"no new dump in {crashdir} (bounds says {n}, before the dump {previous_bounds}) and no "
            "dump device given to run savecore on"
        )
    r = ssh.run(f"savecore -v {crashdir} {dump_device}", timeout=wait_seconds)
    n = _latest_number(ssh, crashdir)
    if n is None or (previous_bounds is not None and n <= previous_bounds):
        raise RetrieveError(
            f"savecore wrote no dump from {dump_device} into {crashdir} (status {r.status}):\n"
            f"{r.stdout}{r.stderr}"
        )
    return n


def _core_name(names: list[str], n: int, crashdir: str) -> str:
    """The dump file savecore wrote as number N (plain, compressed, encrypted or a textdump)."""
    cores = [
        name
        for name in names
        if re.fullmatch(rf"(?:vmcore|vmcore_encrypted|textdump\.tar)\.{n}(?:\.gz|\.zst)?", name)
    ]
    if not cores:
        raise RetrieveError(f"{crashdir} has bounds {n + 1} but no vmcore.{n}*: {sorted(names)}")
    return sorted(cores, key=lambda c: c.startswith("vmcore_encrypted"))[0]


def _latest_number(ssh, crashdir: str) -> int | None:
    r = ssh.run(f"cat {crashdir}/bounds 2>/dev/null")
    if r.status != 0 or not r.stdout.strip().isdigit():
        return None
    return int(r.stdout.strip()) - 1


def via_savecore(
    ssh,
    outdir: str | Path,
    *,
    crashdir: str = "/var/crash",
    dump_device: str | None = None,
    previous_bounds: int | None = None,
    kernel_path: str = "/boot/kernel/kernel",
    fetch_kernel: bool = True,
    private_key: Any = None,
    progress: bool = True,
    wait_seconds: float = 300.0,
) -> RetrievedDump:
    """Fetch the newest savecore output over SFTP (see module docstring).

    `previous_bounds` is ``bounds - 1`` before the dump (None: none existed); a dump number not newer
    than that means rc's savecore did not run, so we run ``savecore -v crashdir dump_device`` ourselves.
    """
    _check_private_key(private_key)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    n = _new_dump_number(ssh, crashdir, dump_device, previous_bounds, wait_seconds)
    timings["savecore"] = time.monotonic() - t0
    names = ssh.listdir(crashdir)
    core = _core_name(names, n, crashdir)
    fetched: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    t = time.monotonic()
    wanted = [core, f"info.{n}"] + ([f"key.{n}"] if f"key.{n}" in names else [])
    for name in wanted:
        res = ssh.fetch(f"{crashdir}/{name}", outdir / name, progress=progress)
        fetched[name], sizes[name] = res.local, res.size
    timings["fetch"] = time.monotonic() - t
    kernel = None
    if fetch_kernel:
        t = time.monotonic()
        res = ssh.fetch(kernel_path, outdir / f"kernel.{n}", progress=progress)
        kernel, sizes["kernel"] = res.local, res.size
        timings["fetch_kernel"] = time.monotonic() - t
    vmcore = fetched[core]
    key = fetched.get(f"key.{n}")
    if core.startswith("vmcore_encrypted") and private_key is not None:
        from reader import ekcd

        decrypted = outdir / f"vmcore.{n}"
        ekcd.decrypt_file(vmcore, key, decrypted, private_key=private_key)
        vmcore = decrypted
    info_path = fetched[f"info.{n}"]
    kind, compression = payload_kind(vmcore)
    if core.startswith("vmcore_encrypted") and vmcore == fetched[core]:
        kind = "encrypted"
    if core.startswith("textdump"):
        kind = "text"
    return RetrievedDump(
        vmcore=vmcore,
        info=info_path,
        kernel=kernel,
        header=parse_info_file(info_path.read_text(errors="replace")),
        kind=kind,
        method="savecore",
        sizes=sizes,
        timings=timings,
        key=key,
        compression=compression,
    )

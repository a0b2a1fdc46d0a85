"""Prepare an official image for the harness, once per (base image, recipe), cached read-only.

A BASIC-CI image boots with a serial console and an empty root password, but the harness needs
more: a short autoboot, a dedicated raw dump disk as dump device from the loader on (so early
panics dump too), the serial BREAK / ALT-break routes into ddb, savecore, *no* ddb scripts (with
``ddb_enable=YES`` FreeBSD's stock ``/etc/ddb.conf`` turns every panic into a textdump and a
reset, silently defeating minidumps), our SSH key for root, and the guest's SSH host key
recorded so later connections can pin it.

The recipe is data: a list of `Step`s with the exact single-line ``/bin/sh`` commands, rendered
by `recipe()`. Its digest is part of the cache key, so editing it re-prepares. The commands only
use POSIX sh, ``sed -i.SUFFIX`` (same meaning in FreeBSD and GNU sed) and printf, which lets the
unit tests run them against a scratch directory (``root=``) without a guest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from images.cache import ImageCache, make_read_only
from images.catalogue import Catalogue, load_catalogue
from images.checksums import sha256_file
from images.errors import PreparationError

RECIPE_VERSION = 1
#: dump disk device name in the guest by disk bus: the boot disk and the dump disk share one bus,
#: so the dump disk is the second disk there (vtbd1 on virtio-blk, ada1 on SATA/AHCI)
DUMP_DEVICES = {"virtio": "/dev/vtbd1", "sata": "/dev/ada1"}
HOST_KEY_FILE = "/etc/ssh/ssh_host_ed25519_key.pub"
#: replaces /etc/ddb.conf: the stock kdb.enter.panic script would make a textdump and reset
DDB_CONF_NOTE = "# fbsd-hil: no ddb scripts (stock file kept as ddb.conf.fbsd-hil-orig)"
_SAFE_VALUE = re.compile(r"^[^'\n\r\\]*$")


@dataclass(frozen=True)
class Step:
    """One named part of the recipe: shell commands run in order, each must exit 0."""

    name: str
    why: str
    commands: tuple[str, ...]


def _quote(value: str) -> str:
    if not _SAFE_VALUE.match(value):
        raise PreparationError(f"recipe value {value!r} contains a quote, backslash or newline")
    return f"'{value}'"


def set_conf_line(path: str, key: str, value: str, *, quoted: bool = True) -> str:
    """A command that leaves exactly one ``key=value`` line in ``path`` (created if missing).

    ``quoted`` writes ``key="value"`` (rc.conf, loader.conf); else ``key=value`` (sysctl.conf).
    """
    if not re.fullmatch(r"[A-Za-z0-9_.]+", key):
        raise PreparationError(f"config key {key!r} is not a plain variable name")
    pattern = re.escape(key).replace("\\_", "_")
    line = f'{key}="{value}"' if quoted else f"{key}={value}"
    return (
        f"touch {path} && sed -i.fbsdhil -e '/^[[:space:]]*{pattern}[[:space:]]*=/d' {path} && "
        f"rm -f {path}.fbsdhil && printf '%s\\n' {_quote(line)} >> {path}"
    )


def recipe(*, dump_device: str, authorized_key: str, root: str = "") -> list[Step]:
    """The preparation steps; ``root`` prefixes every path (tests run them in a scratch dir)."""
    if not re.fullmatch(r"/dev/[a-z]+[0-9]+", dump_device):
        raise PreparationError(f"dump device {dump_device!r} does not look like /dev/vtbd1 or /dev/ada1")
    if not re.fullmatch(r"ssh-[a-z0-9-]+ [A-Za-z0-9+/=]+( [^'\n]*)?", authorized_key):
        raise PreparationError(f"not an OpenSSH public key line: {authorized_key!r}")
    loader = f"{root}/boot/loader.conf"
    rc = f"{root}/etc/rc.conf"
    sysctl = f"{root}/etc/sysctl.conf"
    ddb = f"{root}/etc/ddb.conf"
    sshd = f"{root}/etc/ssh/sshd_config"
    ssh_dir = f"{root}/root/.ssh"
    keys = f"{ssh_dir}/authorized_keys"
    return [
        Step(
            "loader.conf",
            "serial console and 1 s autoboot; the dump device is set before the kernel starts, so a "
            "panic during boot already dumps; BREAK and ALT break enter ddb from the first instant",
            (
                f"mkdir -p {root}/boot",
                set_conf_line(loader, "autoboot_delay", "1"),
                set_conf_line(loader, "console", "comconsole"),
                set_conf_line(loader, "dumpdev", dump_device),
                set_conf_line(loader, "debug.kdb.break_to_debugger", "1"),
                set_conf_line(loader, "debug.kdb.alt_break_to_debugger", "1"),
            ),
        ),
        Step(
            "sysctl.conf",
            "keep the debugger routes enabled after rc (sysctl.conf is applied late in boot)",
            (
                set_conf_line(sysctl, "debug.kdb.break_to_debugger", "1", quoted=False),
                set_conf_line(sysctl, "debug.kdb.alt_break_to_debugger", "1", quoted=False),
            ),
        ),
        Step(
            "rc.conf",
            "the dedicated dump disk instead of BASIC-CI's dumpdev=AUTO (swap), savecore on boot, no ddb "
            "scripts loaded by rc.d/ddb, sshd on",
            (
                set_conf_line(rc, "dumpdev", dump_device),
                set_conf_line(rc, "savecore_enable", "YES"),
                set_conf_line(rc, "ddb_enable", "NO"),
                set_conf_line(rc, "sshd_enable", "YES"),
            ),
        ),
        Step(
            "ddb.conf",
            "neutralise the stock ddb scripts (textdump + reset on panic) even if ddb_enable is turned on",
            (
                f"if [ -f {ddb} ] && [ ! -f {ddb}.fbsd-hil-orig ]; then cp -p {ddb} {ddb}.fbsd-hil-orig; fi",
                f"printf '%s\\n' {_quote(DDB_CONF_NOTE)} > {ddb}",
            ),
        ),
        Step(
            "authorized_keys",
            "the harness logs in over SSH with its own key (never a password)",
            (
                f"mkdir -p {ssh_dir} && chmod 700 {ssh_dir}",
                f"touch {keys} && chmod 600 {keys}",
                f"grep -qxF {_quote(authorized_key)} {keys} || "
                f"printf '%s\\n' {_quote(authorized_key)} >> {keys}",
            ),
        ),
        Step(
            "sshd_config",
            "root may log in with a key only; sshd uses the first value it reads, so ours goes first",
            (
                f"mkdir -p {root}/etc/ssh && touch {sshd}",
                f"sed -i.fbsdhil -e '/^[[:space:]]*PermitRootLogin[[:space:]]/d' {sshd} && "
                f"rm -f {sshd}.fbsdhil",
                f"{{ printf '%s\\n' 'PermitRootLogin without-password'; cat {sshd}; }} > {sshd}.new && "
                f"mv {sshd}.new {sshd}",
            ),
        ),
        Step(
            "ssh host keys",
            "generate any missing host keys now, so the key we record is the one sshd will present",
            (f"mkdir -p {root}/etc/ssh && ssh-keygen -A" + (f" -f {root}" if root else ""),),
        ),
        Step("sync", "everything on disk before the clean shutdown", ("sync",)),
    ]


def recipe_digest(steps: list[Step]) -> str:
    """Digest of the rendered recipe (with RECIPE_VERSION): part of the prepared image's cache key."""
    text = json.dumps({"version": RECIPE_VERSION, "steps": [asdict(s) for s in steps]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------- SSH keys
@dataclass(frozen=True)
class SshKeyPair:
    private_key: Path
    public_key: str  # "ssh-ed25519 AAAA... fbsd-hil"


def ensure_ssh_keypair(cache: ImageCache) -> SshKeyPair:
    """The cache's ed25519 key pair for guests (created once, private key mode 0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = cache.keys_dir / "id_ed25519"
    public = cache.keys_dir / "id_ed25519.pub"
    with cache.lock("ssh-key"):
        if not private.is_file() or not public.is_file():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            line = key.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ).decode() + " fbsd-hil"
            tmp = private.with_name("id_ed25519.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
            os.replace(tmp, private)
            public.write_text(line + "\n")
    return SshKeyPair(private, public.read_text().strip())


# ----------------------------------------------------------------------------------- running it
@dataclass
class PreparedImage:
    """A prepared, read-only qcow2 and what a test needs to use it."""

    image: Path
    base: Path
    base_sha256: str
    release: str | None
    disk_bus: str
    dump_device: str
    root: str
    ssh_private_key: Path
    ssh_public_key: str
    host_key: str  # "ssh-ed25519 AAAA..." as the guest's sshd presents it
    recipe_version: int = RECIPE_VERSION
    recipe_digest: str = ""
    created: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("image", "base", "ssh_private_key"):
            data[key] = str(data[key])
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedImage:
        data = dict(data)
        for key in ("image", "base", "ssh_private_key"):
            data[key] = Path(data[key])
        return cls(**data)

    def known_hosts_line(self, host: str = "127.0.0.1", port: int = 22) -> str:
        """An OpenSSH known_hosts line pinning the recorded host key."""
        where = host if port == 22 else f"[{host}]:{port}"
        return f"{where} {' '.join(self.host_key.split()[:2])}"


def run_recipe(shell, steps: list[Step], *, deadline: float = 300.0) -> list[dict[str, Any]]:
    """Run every command of ``steps`` on a logged-in shell (``ConsoleShell``-like ``run``).

    Stops at the first failing command with the step, the command, its status and its output.
    """
    done = []
    for step in steps:
        for command in step.commands:
            result = shell.run(command, deadline)
            if result.status != 0:
                raise PreparationError(
                    f"preparation step {step.name!r} failed: `{command}` exited {result.status}: "
                    f"{result.output.strip()[-1000:]}"
                )
        done.append({"name": step.name, "commands": list(step.commands)})
    return done


def read_host_key(shell, *, deadline: float = 60.0, path: str = HOST_KEY_FILE) -> str:
    result = shell.run(f"cat {path}", deadline)
    match = re.search(r"(ssh-ed25519 [A-Za-z0-9+/=]+)", result.output)
    if result.status != 0 or not match:
        raise PreparationError(f"cannot read the guest's SSH host key {path}: {result.output.strip()[-500:]}")
    return match.group(1)


def _qemu_img(*args: str) -> None:
    cmd = ["qemu-img", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PreparationError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()}")


def _guest_spec(base: Path, dump_disk: Path, *, disk_bus: str, memory_mib: int, vcpus: int, accel: str,
                uri: str | None):
    """The preparation guest: the base (Guest puts a qcow2 overlay on it) and the raw dump disk, both
    on ``disk_bus`` so that the dump disk is the second disk of that bus (see DUMP_DEVICES)."""
    try:
        from harness.freebsd.handover import HANDOVER_QEMU_ARGS
        from harness.vm.guest import DiskImageBoot, ExtraDisk, GuestSpec
    except ImportError as exc:  # pragma: no cover - depends on the guest layer being installed
        raise PreparationError(f"preparation needs the guest layer (harness.vm.guest): {exc}") from exc
    return GuestSpec(
        memory_mib=memory_mib,
        vcpus=vcpus,
        accel=accel,
        boot=DiskImageBoot(image=base, format=_image_format(base), bus=disk_bus),
        disks=(ExtraDisk(path=dump_disk, format="raw", bus=disk_bus),),
        uri=uri,
        name_prefix="fbsd-hil-prepare",
        # SeaBIOS on COM1: a file that is no bootable disk fails at once ("Boot failed: ...", BootFailed)
        extra_qemu_args=HANDOVER_QEMU_ARGS,
    )


def prepare(
    release_or_base: str | Path,
    *,
    cache: ImageCache | Path | str | None = None,
    offline: bool = False,
    catalogue: Catalogue | None = None,
    disk_bus: str = "virtio",
    memory_mib: int = 1024,
    vcpus: int = 2,
    accel: str = "auto",
    uri: str | None = None,
    boot_timeout: float = 1200.0,
    progress: bool = True,
) -> PreparedImage:
    """The prepared image for a release (``"14.3"``) or a base image file, preparing it if needed.

    Boots the base once on a throw-away overlay, logs in on the serial console, runs `recipe()`,
    records the SSH host key, shuts down cleanly and stores the flattened result read-only.
    """
    cache = cache if isinstance(cache, ImageCache) else ImageCache(cache)
    if disk_bus not in DUMP_DEVICES:
        raise PreparationError(f"disk bus {disk_bus!r} unknown; use one of {sorted(DUMP_DEVICES)}")
    src = _base_image(release_or_base, cache=cache, offline=offline, catalogue=catalogue, progress=progress)
    keys = ensure_ssh_keypair(cache)
    dump_device = DUMP_DEVICES[disk_bus]
    steps = recipe(dump_device=dump_device, authorized_key=keys.public_key)
    digest = recipe_digest(steps)
    target = cache.prepared_dir / f"{src.sha256[:16]}-r{RECIPE_VERSION}-{digest[:12]}-{disk_bus}.qcow2"
    meta = target.with_suffix(".json")
    with cache.lock(target.stem):
        if (cached := _cached_record(target, meta)) is not None:
            return cached
        with tempfile.TemporaryDirectory(prefix="prepare.", dir=cache.prepared_dir) as tmp:
            work = Path(tmp)
            dump_disk = work / "dump.raw"
            _qemu_img("create", "-q", "-f", "raw", str(dump_disk), "256M")
            spec = _guest_spec(src.path, dump_disk, disk_bus=disk_bus, memory_mib=memory_mib, vcpus=vcpus,
                               accel=accel, uri=uri)
            done, host_key = _prepare_on_overlay(src, spec, work, steps, target, boot_timeout)
        prepared = PreparedImage(
            image=target, base=src.path, base_sha256=src.sha256, release=src.release, disk_bus=disk_bus,
            dump_device=dump_device, root=src.root_fs, ssh_private_key=keys.private_key,
            ssh_public_key=keys.public_key, host_key=host_key, recipe_digest=digest,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), steps=done,
        )
        cache.write_json(meta, prepared.to_json())
        return prepared


@dataclass(frozen=True)
class _Base:
    """The image a prepared image is made from, and how to log into it."""

    path: Path
    sha256: str
    login: str = "root"
    password: str = ""
    root_fs: str = "ufs:/dev/gpt/rootfs"
    release: str | None = None


def _base_image(
    release_or_base: str | Path,
    *,
    cache: ImageCache,
    offline: bool,
    catalogue: Catalogue | None,
    progress: bool,
) -> _Base:
    """A base image file as it is, or a release from the catalogue (downloaded and cached)."""
    from images.download import fetch

    if isinstance(release_or_base, Path) or Path(str(release_or_base)).is_file():
        base = Path(release_or_base)
        return _Base(base, sha256_file(base))
    image = (catalogue or load_catalogue()).lookup(str(release_or_base))
    base = fetch(image.key, cache=cache, offline=offline, progress=progress, catalogue=catalogue)
    return _Base(base, base.stem, image.login, image.password, image.root, image.release)


def _cached_record(target: Path, meta: Path) -> PreparedImage | None:
    """The prepared image already in the cache (None: not there, or a record we replace)."""
    if not (target.is_file() and meta.is_file()):
        return None
    try:
        return PreparedImage.from_json(json.loads(meta.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        # A record from another fbsd-hil version: ours to replace, prepare again.
        target.unlink()
        meta.unlink()
        return None


def _prepare_on_overlay(
    src: _Base, spec, work: Path, steps, target: Path, boot_timeout: float
) -> tuple[list, str]:
    """Boot the base on a throw-away overlay, log in, run the recipe, note the host key, power off,
    flatten the overlay into `target` (read-only). Returns (the steps done, the SSH host key)."""
    from harness.freebsd.session import ConsoleShell
    from harness.util.deadline import Deadline
    from harness.vm.guest import Guest

    transcript = target.with_suffix(".console.log")
    guest = None
    try:
        with Guest(spec, work) as guest:
            shell = ConsoleShell(guest.console)
            try:
                shell.login(Deadline(boot_timeout, "first boot to login"), user=src.login,
                            password=src.password)
                done = run_recipe(shell, steps)
                host_key = read_host_key(shell)
                shell.start("shutdown -p now")
                guest.console.wait_closed(Deadline(300, "clean shutdown"))
                guest.wait_gone(60)
            except PreparationError as exc:
                raise PreparationError(f"{exc} (console transcript: {transcript})") from exc
            except Exception as exc:
                raise PreparationError(
                    f"preparing {src.path} failed: {exc}\n--- console tail ---\n{guest.console.tail()}"
                    f"\n(console transcript: {transcript})"
                ) from exc
            # The guest powered itself off: its overlay is consistent. Flatten it before the
            # Guest removes it.
            partial = target.with_name(target.name + ".tmp")
            _qemu_img("convert", "-q", "-O", "qcow2", str(guest.overlay), str(partial))
    finally:
        if guest is not None:  # after the Guest closed its console: the transcript is complete
            _keep_transcript(guest, transcript)
    os.replace(partial, target)
    make_read_only(target)
    return done, host_key


def _keep_transcript(guest, transcript: Path) -> None:
    """Keep every byte of the preparation console next to the prepared image (it is evidence)."""
    source = getattr(guest, "transcript_path", None)
    if source is not None and Path(source).is_file():
        shutil.copyfile(source, transcript)


def _image_format(path: Path) -> str:
    with open(path, "rb") as handle:
        return "qcow2" if handle.read(4) == b"QFI\xfb" else "raw"


def overlay_on(prepared: PreparedImage | Path, overlay: Path) -> Path:
    """Create a qcow2 overlay for one test run on a prepared (read-only) image."""
    base = prepared.image if isinstance(prepared, PreparedImage) else Path(prepared)
    if overlay.exists():
        raise PreparationError(f"{overlay} already exists; refusing to overwrite it")
    _qemu_img("create", "-q", "-f", "qcow2", "-F", _image_format(base), "-b", str(base.resolve()),
              str(overlay))
    return overlay


__all__ = [
    "DUMP_DEVICES",
    "RECIPE_VERSION",
    "PreparedImage",
    "SshKeyPair",
    "Step",
    "ensure_ssh_keypair",
    "overlay_on",
    "prepare",
    "read_host_key",
    "recipe",
    "recipe_digest",
    "run_recipe",
    "set_conf_line",
]

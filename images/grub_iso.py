"""Boot a bare FreeBSD kernel file: a GRUB rescue ISO whose grub.cfg runs ``kfreebsd``.

Debian 12's GRUB 2.06 (grub-pc-bin 2.06-13) cannot hand over to an amd64 FreeBSD kernel: in
``relocator.mod`` the 64-bit trampoline ends with ``cld; jmp *0(%rip)`` but its 8-byte target,
``grub_relocator64_rip``, sits 4 bytes further on, so the CPU jumps to ``entry << 32``
(non-canonical) and triple-faults. We never touch ``/usr/lib/grub``: we copy the module
directory into the cache, correct that one displacement (0 -> 4) and run ``grub-mkrescue -d COPY``.
Any other byte pattern there means a GRUB we do not know, and we refuse rather than guess.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from images.cache import ImageCache
from images.errors import GrubError

SYSTEM_GRUB_DIR = Path("/usr/lib/grub/i386-pc")
RIP_SYMBOL = "grub_relocator64_rip"

# The end of relocator64.S as assembled for i386-pc: cld; jmp *disp32(%rip); <gap>; then the 8-byte
# target (grub_relocator64_rip). Offsets are relative to the symbol.
_DEFECT = bytes.fromhex("fc" "ff25" "00000000" "00000000")  # disp 0 but target 4 bytes later
_FIXED = bytes.fromhex("fc" "ff25" "04000000" "00000000")  # what we write
_UPSTREAM_OK = bytes.fromhex("fc" "ff25" "00000000")  # target immediately after the jmp: fine
_DISP_OFFSET = -8  # the disp32 field, relative to the symbol, in the defect layout


@dataclass(frozen=True)
class RelocatorState:
    """What we found at the end of the amd64 trampoline in one relocator.mod."""

    state: str  # "defective" | "patched" | "correct"
    rip_file_offset: int  # file offset of grub_relocator64_rip
    disp_file_offset: int | None  # file offset of the jmp's disp32 (defect layout)
    found: bytes  # the bytes we looked at, for messages


def _text_and_symbol(data: bytes, source: str) -> tuple[int, int, list[int]]:
    """(.text file offset, symbol value, text offsets touched by relocations) from the ELF module."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    try:
        elf = ELFFile(io.BytesIO(data))
        text = elf.get_section_by_name(".text")
        symtab = elf.get_section_by_name(".symtab")
        if text is None or symtab is None:
            raise GrubError(f"{source}: no .text or .symtab section; not a GRUB module we know")
        text_index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".text")
        symbols = symtab.get_symbol_by_name(RIP_SYMBOL) or []
        symbol = next((s for s in symbols if s["st_shndx"] == text_index), None)
        if symbol is None:
            raise GrubError(f"{source}: symbol {RIP_SYMBOL} not found in .text; not a GRUB module we know")
        relocated: list[int] = []
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection) and section["sh_info"] == text_index:
                relocated.extend(r["r_offset"] for r in section.iter_relocations())
        return text["sh_offset"], symbol["st_value"], relocated
    except ELFError as exc:
        raise GrubError(f"{source}: not an ELF GRUB module: {exc}") from exc


def inspect_relocator(data: bytes, *, source: str = "relocator.mod") -> RelocatorState:
    """Classify the amd64 handover jump; GrubError when the bytes are not a layout we know."""
    text_offset, rip_value, relocated = _text_and_symbol(data, source)
    rip = text_offset + rip_value
    if rip < len(_DEFECT) or rip + 8 > len(data):
        raise GrubError(f"{source}: {RIP_SYMBOL} at file offset {rip:#x} is outside the file")
    tail = data[rip - len(_DEFECT) : rip]
    disp_field = range(rip_value + _DISP_OFFSET, rip_value + _DISP_OFFSET + 4)
    if any(r in disp_field for r in relocated):
        raise GrubError(f"{source}: a relocation applies to the jmp displacement; unknown GRUB build")
    if tail == _DEFECT:
        return RelocatorState("defective", rip, rip + _DISP_OFFSET, tail)
    if tail == _FIXED:
        return RelocatorState("patched", rip, rip + _DISP_OFFSET, tail)
    if tail[-len(_UPSTREAM_OK) :] == _UPSTREAM_OK:
        return RelocatorState("correct", rip, None, tail[-len(_UPSTREAM_OK) :])
    raise GrubError(
        f"{source}: unknown bytes before {RIP_SYMBOL} (file offset {rip:#x}): {tail.hex(' ')}; "
        f"expected the Debian GRUB 2.06 defect {_DEFECT.hex(' ')} or a correct {_UPSTREAM_OK.hex(' ')}. "
        "This GRUB version is not one fbsd-hil knows how to fix; refusing to patch it blindly"
    )


def patch_relocator(data: bytes, *, source: str = "relocator.mod") -> tuple[bytes, RelocatorState]:
    """The module with the jmp displacement corrected (unchanged if it was already right)."""
    found = inspect_relocator(data, source=source)
    if found.state != "defective":
        return data, found
    assert found.disp_file_offset is not None
    patched = bytearray(data)
    patched[found.disp_file_offset : found.disp_file_offset + 4] = (4).to_bytes(4, "little")
    after = inspect_relocator(bytes(patched), source=source)
    if after.state != "patched":  # pragma: no cover - guards our own arithmetic
        raise GrubError(f"{source}: patch did not produce the expected bytes ({after.found.hex(' ')})")
    return bytes(patched), found


def _fingerprint(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def patched_grub_dir(
    source: Path = SYSTEM_GRUB_DIR, *, cache: ImageCache | Path | str | None = None
) -> Path:
    """A cached copy of GRUB's i386-pc module directory whose relocator hands over correctly.

    Keyed by the SHA-256 of the original relocator.mod; the system directory is only read.
    """
    cache = cache if isinstance(cache, ImageCache) else ImageCache(cache)
    module = source / "relocator.mod"
    try:
        original = module.read_bytes()
    except OSError as exc:
        raise GrubError(
            f"cannot read {module}: {exc}; install Debian packages grub-pc-bin and grub-common"
        ) from exc
    digest = hashlib.sha256(original).hexdigest()
    patched, found = patch_relocator(original, source=str(module))
    home = cache.grub_dir / digest
    target = home / "i386-pc"
    stamp = home / "fbsd-hil.json"
    fingerprint = _fingerprint(source)
    with cache.lock(f"grub-{digest}"):
        recorded = cache.read_json(stamp)
        if (
            target.is_dir()
            and recorded
            and recorded.get("source_files") == fingerprint
            and (target / "relocator.mod").is_file()
            and (target / "relocator.mod").read_bytes() == patched
        ):
            return target
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        staging = Path(tempfile.mkdtemp(prefix="i386-pc.", dir=home))
        shutil.copytree(source, staging, dirs_exist_ok=True, symlinks=False)
        (staging / "relocator.mod").write_bytes(patched)
        os.replace(staging, target)
        cache.write_json(
            stamp,
            {
                "source": str(source),
                "relocator_sha256": digest,
                "relocator_state": found.state,
                "patched_disp_file_offset": found.disp_file_offset,
                "source_files": fingerprint,
            },
        )
    return target


_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")
# hw.uart.console: GRUB is not loader(8), which sets it ("io:%d,br:%d", stand/i386/libi386/comconsole.c);
# without it a kernel with no compiled-in hints (amd64 GENERIC) finds no uart console and stays silent on
# COM1. debug.kdb.alt_break_to_debugger: lets the harness panic a kernel without ddb (CR ~ Ctrl-P) and
# enter ddb (CR ~ Ctrl-B) with no shell; both are tunables. (Added by the freebsd-layer helper.)
DEFAULT_KENV = {
    "console": "comconsole",
    "boot_serial": "YES",
    "hw.uart.console": "io:1016,br:115200",
    "debug.kdb.alt_break_to_debugger": "1",
}
NO_ROOT_KENV = {"vfs.root.mountfrom": "devfs:/dev/nosuchdisk", "vfs.mountroot.timeout": "3600"}


def normalise_kenv(kenv: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    """Accept {"k": "v"} or ["k=v", ...] (the --kenv form); reject what grub.cfg cannot quote."""
    if kenv is None:
        return {}
    pairs: list[tuple[str, str]] = []
    if isinstance(kenv, Mapping):
        pairs = [(str(k), str(v)) for k, v in kenv.items()]
    else:
        for item in kenv:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise GrubError(f"kernel environment entry {item!r} is not KEY=VALUE")
            pairs.append((key, value))
    result: dict[str, str] = {}
    for key, value in pairs:
        if not _KEY.match(key):
            raise GrubError(f"kernel environment name {key!r} may only use letters, digits, '_', '.', '-'")
        if "'" in value or "\n" in value or "\r" in value:
            raise GrubError(f"kernel environment value for {key!r} contains a quote or newline: {value!r}")
        result[key] = value
    return result


def grub_cfg(
    kernel_name: str,
    kenv: Mapping[str, str],
    *,
    boot_flags: str = "-h",
    root: str | None = None,
    title: str | None = None,
    modules: Iterable[str] = (),
) -> str:
    """The grub.cfg text: serial terminal, no menu delay, kfreebsd + kFreeBSD.* variables.

    ``modules`` are file names under /boot/kernel/ loaded with ``kfreebsd_module_elf`` (kernel
    modules your kernel config does not compile in, e.g. virtio_blk.ko).
    """
    env = dict(DEFAULT_KENV)
    env.update(NO_ROOT_KENV if root is None else {"vfs.root.mountfrom": root})
    env.update(kenv)
    if not re.fullmatch(r"(-[A-Za-z]+(\s+-[A-Za-z]+)*)?", boot_flags.strip()):
        raise GrubError(f"boot flags {boot_flags!r} must look like '-h' or '-h -d'")
    title = title or f"fbsd-hil: FreeBSD kernel {kernel_name} flags={boot_flags or '(none)'}"
    if "'" in title:
        raise GrubError(f"title {title!r} must not contain a single quote")
    lines = [
        "# generated by fbsd-hil (images/grub_iso.py)",
        "serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1",
        "terminal_input serial console",
        "terminal_output serial console",
        "set timeout=0",
        "set default=0",
        f"menuentry '{title}' {{",
        "    echo 'GRUB: loading FreeBSD kernel'",
        f"    kfreebsd /boot/kernel/{kernel_name} {boot_flags}".rstrip(),
    ]
    for module in modules:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", module):
            raise GrubError(f"module file name {module!r} may only use letters, digits, '_', '.', '-'")
        lines.append(f"    kfreebsd_module_elf /boot/kernel/{module}")
    lines += [f"    set kFreeBSD.{key}='{value}'" for key, value in env.items()]
    lines += ["    echo 'GRUB: booting'", "}", ""]
    return "\n".join(lines)


def build_kernel_iso(
    kernel: Path | str,
    kenv: Mapping[str, str] | Iterable[str] | None,
    out: Path | str,
    *,
    boot_flags: str = "-h",
    root: str | None = None,
    patch: bool = True,
    grub_source: Path = SYSTEM_GRUB_DIR,
    cache: ImageCache | Path | str | None = None,
    title: str | None = None,
    timeout: float = 300.0,
    modules: Iterable[Path | str] = (),
) -> Path:
    """Make a bootable GRUB ISO at ``out`` that boots ``kernel`` with ``kenv``.

    ``root=None`` leaves the kernel waiting for a root device that never comes (a quiet state to
    enter ddb from); ``root="ufs:/dev/gpt/rootfs"`` mounts an official image's root. ``patch=False``
    uses the system's GRUB modules as they are (only to demonstrate the defect).
    """
    kernel = Path(kernel)
    out = Path(out)
    if not kernel.is_file():
        raise GrubError(f"kernel file {kernel} does not exist")
    module_paths = [Path(m) for m in modules]
    for module in module_paths:
        if not module.is_file():
            raise GrubError(f"kernel module file {module} does not exist")
    names = [m.name for m in module_paths]
    if len(set(names)) != len(names) or "kernel" in names:
        raise GrubError(f"kernel module file names must be distinct (and not 'kernel'): {names}")
    if out.exists():
        raise GrubError(f"{out} already exists; refusing to overwrite it")
    mkrescue = shutil.which("grub-mkrescue")
    if mkrescue is None:
        raise GrubError(
            "grub-mkrescue not found: install Debian packages grub-common grub-pc-bin xorriso mtools"
        )
    moddir = patched_grub_dir(grub_source, cache=cache) if patch else grub_source
    env = normalise_kenv(kenv)
    cfg = grub_cfg("kernel", env, boot_flags=boot_flags, root=root, modules=names,
                   title=title or f"fbsd-hil: FreeBSD kernel {kernel.name} flags={boot_flags or '(none)'}")
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-iso.") as tmp:
        tree = Path(tmp) / "iso"
        (tree / "boot" / "grub").mkdir(parents=True)
        (tree / "boot" / "kernel").mkdir(parents=True)
        shutil.copyfile(kernel, tree / "boot" / "kernel" / "kernel")
        for module in module_paths:
            shutil.copyfile(module, tree / "boot" / "kernel" / module.name)
        (tree / "boot" / "grub" / "grub.cfg").write_text(cfg, encoding="utf-8")
        partial = out.with_name(out.name + ".part")
        cmd = [mkrescue, "-d", str(moddir), "--fonts=", "--locales=", "--themes=", "-o", str(partial),
               str(tree)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            partial.unlink(missing_ok=True)
            raise GrubError(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from exc
        if proc.returncode != 0 or not partial.is_file():
            partial.unlink(missing_ok=True)
            raise GrubError(
                f"`{' '.join(cmd)}` failed with status {proc.returncode}:\n{proc.stderr.strip()[-2000:]}"
            )
        os.replace(partial, out)
    (out.with_name(out.name + ".json")).write_text(
        json.dumps(
            {"kernel": str(kernel.resolve()), "modules": [str(m.resolve()) for m in module_paths],
             "kenv": env, "boot_flags": boot_flags, "root": root,
             "grub_modules": str(moddir), "relocator_patched": patch, "grub_cfg": cfg},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return out

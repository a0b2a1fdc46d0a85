"""Boot a bare FreeBSD kernel file: a GRUB rescue ISO whose grub.cfg runs ``kfreebsd``.

Debian 12's GRUB 2.06 (grub-pc-bin 2.06-13) needs two fixes to boot current amd64 FreeBSD kernels.
We never touch ``/usr/lib/grub``: we copy the module directory into the cache, fix the copy and run
``grub-mkrescue -d COPY``. Each fix first recognises the exact bytes it expects; any other layout
means a GRUB we do not know, and we refuse rather than guess.

* ``relocator`` (relocator.mod): the 64-bit trampoline ends with ``cld; jmp *0(%rip)`` but its
  8-byte target, ``grub_relocator64_rip``, sits 4 bytes further on, so the CPU jumps to
  ``entry << 32`` (non-canonical) and triple-faults. We correct that one displacement (0 -> 4).
* ``kernel-type`` (bsd.mod): ``kfreebsd`` registers a 64-bit kernel's preload metadata under the
  module type ``"elf64 kernel"``; FreeBSD's loader(8) uses ``"elf kernel"``. 12.x kernels look for
  either, kernels with ``preload_initkmdp()`` (sys/kern/subr_module.c, KERNTYPE in sys/sys/linker.h)
  only for ``"elf kernel"``: they panic "unable to find kernel metadata" before their console exists
  and triple-fault silently. We overwrite the 13-byte string with ``"elf kernel"`` + NUL padding; the
  string is found through the relocation that passes it to the metadata code, not at a fixed offset.

``FBSD_HIL_GRUB_FIXES`` (comma list of fix names, or ``none``) selects the fixes, e.g. to reproduce
what an unfixed GRUB does; by default both are applied.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
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


# ------------------------------------------------------------------ bsd.mod: the amd64 kernel's module type
KERNEL_TYPE_64 = b"elf64 kernel"  # what Debian's GRUB 2.06 registers for an amd64 kernel
KERNEL_TYPE = b"elf kernel"  # what loader(8) registers, and all that current kernels accept
_KERNEL_TYPE_FIXED = KERNEL_TYPE.ljust(len(KERNEL_TYPE_64) + 1, b"\0")  # same 13 bytes, NUL-padded


@dataclass(frozen=True)
class KernelTypeState:
    """What we found in one bsd.mod: the module type ``kfreebsd`` gives a 64-bit kernel."""

    state: str  # "defective" ("elf64 kernel") | "patched" (our fix) | "correct" (already "elf kernel")
    string_file_offset: int | None  # file offset of the amd64 type string (defective / patched)
    kernel_type: str  # the type string an amd64 kernel's metadata will carry


def _string_refs(data: bytes, source: str) -> list[tuple[int, int, bytes]]:
    """(section file offset, offset in section, NUL-terminated string there) for every relocation that
    points into an allocated read-only data section of the ELF module."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection

    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_type"] != "ET_REL":
            raise GrubError(f"{source}: ELF type {elf['e_type']}, expected a relocatable GRUB module")
        modname = elf.get_section_by_name(".modname")
        if modname is None or modname.data().rstrip(b"\0") != b"bsd":
            raise GrubError(f"{source}: no .modname 'bsd'; not GRUB's bsd module")
        sections = list(elf.iter_sections())
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise GrubError(f"{source}: no .symtab section; not a GRUB module we know")
        refs: list[tuple[int, int, bytes]] = []
        for rel in sections:
            if not isinstance(rel, RelocationSection):
                continue
            patched = sections[rel["sh_info"]]
            for r in rel.iter_relocations():
                sym = symtab.get_symbol(r["r_info_sym"])
                shndx = sym["st_shndx"]
                if not isinstance(shndx, int) or shndx >= len(sections):
                    continue
                target = sections[shndx]
                if not target.name.startswith(".rodata") or target["sh_type"] != "SHT_PROGBITS":
                    continue
                if rel.is_RELA():
                    addend = r["r_addend"]
                else:  # REL (i386): the addend is the 32-bit value at the patched place
                    at = patched["sh_offset"] + r["r_offset"]
                    addend = struct.unpack_from("<i", data, at)[0]
                offset = sym["st_value"] + addend
                if not 0 <= offset < target["sh_size"]:
                    continue
                start = target["sh_offset"] + offset
                end = data.find(b"\0", start, target["sh_offset"] + target["sh_size"])
                refs.append((target["sh_offset"], offset, data[start : end if end >= 0 else start]))
        return refs
    except ELFError as exc:
        raise GrubError(f"{source}: not an ELF GRUB module: {exc}") from exc
    except struct.error as exc:
        raise GrubError(f"{source}: truncated relocation data: {exc}") from exc
    except (ValueError, IndexError, KeyError, AttributeError) as exc:  # pyelftools on a malformed file
        raise GrubError(f"{source}: malformed ELF GRUB module ({type(exc).__name__}: {exc})") from exc


def inspect_bsd_module(data: bytes, *, source: str = "bsd.mod") -> KernelTypeState:
    """Classify the module type ``kfreebsd`` registers for a 64-bit kernel; GrubError if unknown.

    Recognised: exactly one reference to a NUL-terminated ``"elf64 kernel"`` (the amd64 branch) beside
    one to ``"elf kernel"`` (the i386 branch), nothing pointing into the middle of the string, which
    must be exactly 13 bytes; after our fix two references to ``"elf kernel"``, one of them our
    NUL-padded copy.
    """
    refs = _string_refs(data, source)
    kind = {s for _, _, s in refs if re.fullmatch(rb"elf\w* kernel", s)}
    to64 = [(base, off) for base, off, s in refs if s == KERNEL_TYPE_64]
    to32 = [(base, off) for base, off, s in refs if s == KERNEL_TYPE]
    spans = {(b, o, len(KERNEL_TYPE_64)) for b, o in to64} | {(b, o, len(KERNEL_TYPE)) for b, o in to32}
    for base, off, length in spans:
        inside = [o for b, o, _ in refs if b == base and off < o < off + length]
        if inside:
            raise GrubError(
                f"{source}: a reference points into the module type string at file offset "
                f"{base + off:#x} (+{inside[0] - off}); unknown GRUB build, refusing to patch it"
            )
    if kind == {KERNEL_TYPE_64, KERNEL_TYPE} and len(to64) == 1:
        base, off = to64[0]
        return KernelTypeState("defective", base + off, KERNEL_TYPE_64.decode())
    if kind == {KERNEL_TYPE} and len(set(to32)) == 2:
        padded = [
            base + off for base, off in set(to32)
            if data[base + off : base + off + len(_KERNEL_TYPE_FIXED)] == _KERNEL_TYPE_FIXED
        ]
        if len(padded) == 1:
            return KernelTypeState("patched", padded[0], KERNEL_TYPE.decode())
    if kind == {KERNEL_TYPE} and len(set(to32)) == 1:
        return KernelTypeState("correct", None, KERNEL_TYPE.decode())
    seen = sorted(s.decode(errors="replace") for s in kind)
    raise GrubError(
        f"{source}: the kfreebsd module type strings are not laid out as in Debian's GRUB 2.06 "
        f"(referenced kernel types: {seen or 'none'}; {len(to64)} x {KERNEL_TYPE_64.decode()!r}, "
        f"{len(to32)} x {KERNEL_TYPE.decode()!r}); this GRUB version is not one fbsd-hil knows how to "
        "fix; refusing to patch it blindly"
    )


def patch_bsd_module(data: bytes, *, source: str = "bsd.mod") -> tuple[bytes, KernelTypeState]:
    """The module with the amd64 kernel type ``"elf kernel"`` (unchanged if it already was)."""
    found = inspect_bsd_module(data, source=source)
    if found.state != "defective":
        return data, found
    assert found.string_file_offset is not None
    at = found.string_file_offset
    patched = bytearray(data)
    patched[at : at + len(_KERNEL_TYPE_FIXED)] = _KERNEL_TYPE_FIXED
    after = inspect_bsd_module(bytes(patched), source=source)
    if after.state != "patched" or after.string_file_offset != at:  # pragma: no cover - our arithmetic
        raise GrubError(f"{source}: the kernel type patch did not verify ({after})")
    return bytes(patched), found


# ------------------------------------------------------------------ the fixed module directory
#: fix name -> (module file, patch function); FBSD_HIL_GRUB_FIXES picks a subset
GRUB_FIXES = {"relocator": ("relocator.mod", patch_relocator), "kernel-type": ("bsd.mod", patch_bsd_module)}
FIXES_ENV = "FBSD_HIL_GRUB_FIXES"


def selected_fixes(fixes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The fixes to apply: `fixes`, else ``$FBSD_HIL_GRUB_FIXES``, else all of them."""
    if fixes is None:
        env = os.environ.get(FIXES_ENV)
        if env is None:
            return tuple(GRUB_FIXES)
        names = [f.strip() for f in env.split(",") if f.strip()]
        fixes = [] if env.strip().lower() in ("", "none") else names
    unknown = [f for f in fixes if f not in GRUB_FIXES]
    if unknown:
        raise GrubError(
            f"unknown GRUB fix {unknown[0]!r} (in {FIXES_ENV} or fixes=); known: {', '.join(GRUB_FIXES)}"
        )
    return tuple(f for f in GRUB_FIXES if f in fixes)


def amd64_kernel_type(moddir: Path) -> str | None:
    """The module type the ``kfreebsd`` of `moddir` gives an amd64 kernel (None: unrecognised bsd.mod)."""
    try:
        module = moddir / "bsd.mod"
        return inspect_bsd_module(module.read_bytes(), source=str(module)).kernel_type
    except (OSError, GrubError):
        return None


def _fingerprint(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file()}


def patched_grub_dir(
    source: Path = SYSTEM_GRUB_DIR,
    *,
    cache: ImageCache | Path | str | None = None,
    fixes: Sequence[str] | None = None,
) -> Path:
    """A cached copy of GRUB's i386-pc module directory with `fixes` applied (default: all, see
    `selected_fixes`): its relocator hands over correctly and its kfreebsd registers "elf kernel".

    Keyed by the SHA-256 of the original modules and the fix names; the system directory is only read.
    """
    cache = cache if isinstance(cache, ImageCache) else ImageCache(cache)
    chosen = selected_fixes(fixes)
    originals: dict[str, bytes] = {}
    for name in ("relocator", "kernel-type"):
        module = source / GRUB_FIXES[name][0]
        try:
            originals[name] = module.read_bytes()
        except OSError as exc:
            raise GrubError(
                f"cannot read {module}: {exc}; install Debian packages grub-pc-bin and grub-common"
            ) from exc
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in originals.items()}
    patched: dict[str, bytes] = {}
    states: dict[str, dict[str, object]] = {}
    for name in chosen:
        filename, patch = GRUB_FIXES[name]
        data, found = patch(originals[name], source=str(source / filename))
        patched[filename] = data
        states[name] = {"module": filename, "sha256": digests[name], **found.__dict__}
        states[name].pop("found", None)
    key_text = "".join(f"{n}:{digests[n]}\n" for n in sorted(digests)) + "fixes:" + ",".join(chosen)
    key = hashlib.sha256(key_text.encode()).hexdigest()
    home = cache.grub_dir / key
    target = home / "i386-pc"
    stamp = home / "fbsd-hil.json"
    fingerprint = _fingerprint(source)
    with cache.lock(f"grub-{key}"):
        recorded = cache.read_json(stamp)
        if (
            target.is_dir()
            and recorded
            and recorded.get("source_files") == fingerprint
            and recorded.get("fixes") == list(chosen)
            and all((target / f).is_file() and (target / f).read_bytes() == d for f, d in patched.items())
        ):
            return target
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        staging = Path(tempfile.mkdtemp(prefix="i386-pc.", dir=home))
        shutil.copytree(source, staging, dirs_exist_ok=True, symlinks=False)
        for filename, data in patched.items():
            (staging / filename).write_bytes(data)
        os.replace(staging, target)
        relocator = states.get("relocator", {})
        cache.write_json(
            stamp,
            {
                "source": str(source),
                "fixes": list(chosen),
                "states": states,
                "relocator_sha256": digests["relocator"],
                "relocator_state": relocator.get("state", "not patched"),
                "patched_disp_file_offset": relocator.get("disp_file_offset"),
                "bsd_sha256": digests["kernel-type"],
                "amd64_kernel_type": amd64_kernel_type(target),
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
#: the root of a kernel booted with a root image module (``type=mfs_root``): md(4)'s preloaded disk
MFS_ROOT = "ufs:/dev/md0"
#: the root image's name on the ISO (a copy: the user's file is never written)
ROOT_IMAGE_NAME = "mfsroot.ufs"


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
    root_image: str | None = None,
) -> str:
    """The grub.cfg text: serial terminal, no menu delay, kfreebsd + kFreeBSD.* variables.

    ``modules`` are file names under /boot/kernel/ loaded with ``kfreebsd_module_elf`` (kernel
    modules your kernel config does not compile in, e.g. virtio_blk.ko). ``root_image`` is a file name
    under /boot/ loaded with ``kfreebsd_module ... type=mfs_root``: the kernel's md(4) attaches it as
    ``md0`` and mounts it as root (``vfs.root.mountfrom=ufs:/dev/md0`` unless `root` says otherwise).
    """
    env = dict(DEFAULT_KENV)
    if root is None and root_image is not None:
        root = MFS_ROOT
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
        # serial only: with SeaBIOS's serial console (QEMU graphics=off) "console" would print twice
        "terminal_input serial",
        "terminal_output serial",
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
    if root_image is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", root_image):
            raise GrubError(f"root image file name {root_image!r}: only letters, digits, '_', '.', '-'")
        lines.append(f"    kfreebsd_module /boot/{root_image} type=mfs_root")
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
    fixes: Sequence[str] | None = None,
    root_image: Path | str | None = None,
) -> Path:
    """Make a bootable GRUB ISO at ``out`` that boots ``kernel`` with ``kenv``.

    ``root_image`` (a UFS file system image) is copied onto the ISO and loaded as the kernel's
    memory-disk root (``type=mfs_root``, root ``ufs:/dev/md0``); add ``-s`` to `boot_flags` for
    single-user mode.

    ``root=None`` leaves the kernel waiting for a root device that never comes (a quiet state to
    enter ddb from); ``root="ufs:/dev/gpt/rootfs"`` mounts an official image's root. ``patch=False``
    uses the system's GRUB modules as they are (only to demonstrate the defects); `fixes` picks
    which fixes a patched copy gets (`selected_fixes`). A ``OUT.json`` beside the ISO records the
    kernel, its environment and the GRUB modules (the hand-over diagnosis reads it).
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
    if root_image is not None and not Path(root_image).is_file():
        raise GrubError(f"root image file {root_image} does not exist")
    if out.exists():
        raise GrubError(f"{out} already exists; refusing to overwrite it")
    mkrescue = shutil.which("grub-mkrescue")
    if mkrescue is None:
        raise GrubError(
            "grub-mkrescue not found: install Debian packages grub-common grub-pc-bin xorriso mtools"
        )
    moddir = patched_grub_dir(grub_source, cache=cache, fixes=fixes) if patch else grub_source
    applied = selected_fixes(fixes) if patch else ()
    env = normalise_kenv(kenv)
    cfg = grub_cfg("kernel", env, boot_flags=boot_flags, root=root, modules=names,
                   root_image=ROOT_IMAGE_NAME if root_image is not None else None,
                   title=title or f"fbsd-hil: FreeBSD kernel {kernel.name} flags={boot_flags or '(none)'}")
    with tempfile.TemporaryDirectory(prefix="fbsd-hil-iso.") as tmp:
        tree = Path(tmp) / "iso"
        (tree / "boot" / "grub").mkdir(parents=True)
        (tree / "boot" / "kernel").mkdir(parents=True)
        shutil.copyfile(kernel, tree / "boot" / "kernel" / "kernel")
        for module in module_paths:
            shutil.copyfile(module, tree / "boot" / "kernel" / module.name)
        if root_image is not None:
            shutil.copyfile(root_image, tree / "boot" / ROOT_IMAGE_NAME)
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
             "root_image": str(Path(root_image).resolve()) if root_image is not None else None,
             "grub_modules": str(moddir), "relocator_patched": patch and "relocator" in applied,
             "grub_fixes": list(applied), "amd64_kernel_type": amd64_kernel_type(moddir), "grub_cfg": cfg},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return out

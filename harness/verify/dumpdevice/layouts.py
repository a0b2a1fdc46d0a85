"""Struct layouts (member offsets and sizes) from the kernel's own DWARF, never hard-coded.

`Layouts.from_dwarf(kernel.debug, names)` reads the complete definitions of the named structs with
pyelftools, flattening nested members to dotted paths ("vtblk_mtx.mtx_lock",
"vtblk_dump_request.vbr_hdr.sector"), as the evidence files write them. A FreeBSD kernel.debug holds
thousands of compilation units: units whose source name a hint matches are searched first, and the search
stops as soon as every struct is found. `check_debug_matches` refuses a kernel.debug built for another
kernel (GNU build-id, else the `.gnu_debuglink` CRC).
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class KernelDebugError(Exception):
    """kernel.debug unusable: not ELF, no DWARF, another kernel's, or lacking the types (one line)."""


@dataclass(frozen=True)
class Member:
    offset: int
    size: int
    type: str = ""


@dataclass
class StructLayout:
    name: str
    size: int
    members: dict[str, Member] = field(default_factory=dict)

    def has(self, path: str) -> bool:
        return path in self.members

    def off(self, path: str) -> int:
        try:
            return self.members[path].offset
        except KeyError:
            raise KeyError(f"struct {self.name} has no member {path!r} in this kernel's DWARF") from None

    def size_of(self, path: str) -> int:
        return self.members[path].size


@dataclass
class Layouts:
    structs: dict[str, StructLayout] = field(default_factory=dict)
    source: str = ""  # where they came from ("DWARF of kernel.debug", "evidence JSON", ...)

    def __contains__(self, name: str) -> bool:
        return name in self.structs

    def __getitem__(self, name: str) -> StructLayout:
        return self.structs[name]

    def missing(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self.structs]

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], source: str = "layout table") -> Layouts:
        """From {"struct NAME": {"size": N, "fields": [{"field", "offset", "size", "type"}]}} (the shape of
        the evidence JSON's ``layouts_from_dwarf``)."""
        out = cls(source=source)
        for key, spec in d.items():
            name = key.split()[1] if key.startswith("struct ") else key
            lay = StructLayout(name, int(spec["size"]))
            for m in spec["fields"]:
                lay.members[m["field"]] = Member(
                    int(str(m["offset"]), 0), int(m["size"]), str(m.get("type", ""))
                )
            out.structs[name] = lay
        return out

    @classmethod
    def from_dwarf(
        cls,
        path: str | os.PathLike[str],
        names: Iterable[str],
        *,
        cu_hints: Iterable[str] = (),
        budget_s: float = 120.0,
    ) -> Layouts:
        """Complete definitions of ``names`` from the DWARF in ``path``; raises `KernelDebugError` with the
        reason when the file has no DWARF or lacks some of them."""
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        want = set(names)
        out = cls(source=f"DWARF of {Path(path).name}")
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                if not elf.has_dwarf_info() or elf.get_section_by_name(".debug_info") is None:
                    raise KernelDebugError(f"{path}: no DWARF (.debug_info) in this file")
                dwarf = elf.get_dwarf_info()
                hints = tuple(cu_hints)
                cus = list(dwarf.iter_CUs())

                def rank(cu: Any) -> int:
                    nm = cu.get_top_DIE().attributes.get("DW_AT_name")
                    name = nm.value.decode(errors="replace") if nm is not None else ""
                    return 0 if any(name.endswith(h) for h in hints) else 1

                cus.sort(key=rank)
                deadline = time.monotonic() + budget_s
                for cu in cus:
                    for die in cu.iter_DIEs():
                        if die.tag != "DW_TAG_structure_type" or "DW_AT_declaration" in die.attributes:
                            continue
                        nm = die.attributes.get("DW_AT_name")
                        name = nm.value.decode(errors="replace") if nm is not None else ""
                        if name in want and name not in out.structs:
                            out.structs[name] = _struct_layout(name, die)
                    if not want - set(out.structs) or time.monotonic() > deadline:
                        break
        except KernelDebugError:
            raise
        except (OSError, ELFError, ValueError, KeyError, struct.error) as exc:
            raise KernelDebugError(f"{path}: cannot read DWARF ({type(exc).__name__}: {exc})") from None
        return out


def _strip(die: Any) -> Any:
    """Follow typedef/const/volatile to the type that has the size."""
    seen = 0
    while (
        die is not None
        and die.tag
        in (
            "DW_TAG_typedef",
            "DW_TAG_const_type",
            "DW_TAG_volatile_type",
            "DW_TAG_restrict_type",
            "DW_TAG_atomic_type",
        )
        and seen < 32
    ):
        die = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
        seen += 1
    return die


def _type_name(die: Any) -> str:
    if die is None:
        return "void"
    nm = die.attributes.get("DW_AT_name")
    base = nm.value.decode(errors="replace") if nm is not None else ""
    tag = die.tag
    if tag == "DW_TAG_pointer_type":
        inner = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
        return _type_name(inner) + " *"
    if tag == "DW_TAG_structure_type":
        return f"struct {base or '<anonymous>'}"
    if tag == "DW_TAG_union_type":
        return f"union {base or '<anonymous>'}"
    if tag == "DW_TAG_array_type":
        inner = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
        return _type_name(inner) + " []"
    return base or tag


def _byte_size(die: Any) -> int:
    t = _strip(die)
    if t is None:
        return 0
    if "DW_AT_byte_size" in t.attributes:
        return int(t.attributes["DW_AT_byte_size"].value)
    if t.tag == "DW_TAG_pointer_type":
        return t.cu.header["address_size"]
    if t.tag == "DW_TAG_array_type":
        elem = _byte_size(t.get_DIE_from_attribute("DW_AT_type"))
        count = 1
        for sub in t.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            if "DW_AT_count" in sub.attributes:
                count *= int(sub.attributes["DW_AT_count"].value)
            elif "DW_AT_upper_bound" in sub.attributes:
                count *= int(sub.attributes["DW_AT_upper_bound"].value) + 1
            else:
                count = 0  # flexible array member
        return elem * count
    return 0


def _member_offset(die: Any) -> int:
    a = die.attributes.get("DW_AT_data_member_location")
    if a is None:
        return 0
    if isinstance(a.value, int):
        return a.value
    # DWARF 2 location expression: DW_OP_plus_uconst ULEB128
    raw = bytes(a.value)
    if raw and raw[0] == 0x23:
        v, shift = 0, 0
        for b in raw[1:]:
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return v
    raise ValueError(f"member location form not understood: {a.value!r}")


def _struct_layout(name: str, die: Any) -> StructLayout:
    lay = StructLayout(
        name, int(die.attributes["DW_AT_byte_size"].value) if "DW_AT_byte_size" in die.attributes else 0
    )
    _add_members(lay, die, "", 0, depth=0)
    return lay


def _add_members(lay: StructLayout, die: Any, prefix: str, base: int, depth: int) -> None:
    for m in die.iter_children():
        if m.tag != "DW_TAG_member":
            continue
        nm = m.attributes.get("DW_AT_name")
        mname = nm.value.decode(errors="replace") if nm is not None else ""
        off = base + _member_offset(m)
        mtype = m.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in m.attributes else None
        path = f"{prefix}{mname}" if mname else prefix.rstrip(".")
        if mname:
            lay.members[path] = Member(off, _byte_size(mtype), _type_name(mtype))
        inner = _strip(mtype)
        if inner is not None and inner.tag in ("DW_TAG_structure_type", "DW_TAG_union_type") and depth < 4:
            _add_members(lay, inner, f"{path}." if path else "", off, depth + 1)


def to_mapping(lay: Layouts) -> dict[str, Any]:
    """The inverse of `Layouts.from_mapping` (for the cache)."""
    return {
        f"struct {name}": {
            "size": s.size,
            "fields": [
                {"field": k, "offset": m.offset, "size": m.size, "type": m.type} for k, m in s.members.items()
            ],
        }
        for name, s in lay.structs.items()
    }


def cached_layouts(path: str | os.PathLike[str], names: Iterable[str], **kw: Any) -> Layouts:
    """`Layouts.from_dwarf`, remembered per file (path, size, mtime) under the user's cache: a FreeBSD
    kernel.debug takes seconds to search with pyelftools, the cached answer milliseconds."""
    import hashlib
    import json

    from harness.util.cache import cache_root

    names = list(names)
    st = Path(path).stat()
    key = hashlib.sha256(
        f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|{sorted(names)}".encode()
    ).hexdigest()
    cache = cache_root() / "dwarf-layouts" / f"{key[:32]}.json"
    source = f"DWARF of {Path(path).name}"
    try:
        return Layouts.from_mapping(json.loads(cache.read_text()), source=source)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    lay = Layouts.from_dwarf(path, names, **kw)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(to_mapping(lay)))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home only costs the next run the search again
    return lay


# -- does this kernel.debug belong to that kernel? ---------------------------------------------------------


def _notes_build_id(elf: Any) -> bytes | None:
    for sec in elf.iter_sections():
        if sec["sh_type"] != "SHT_NOTE":
            continue
        for note in sec.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                desc = note["n_desc"]
                return bytes.fromhex(desc) if isinstance(desc, str) else bytes(desc)
    return None


def _debuglink(elf: Any) -> tuple[str, int] | None:
    sec = elf.get_section_by_name(".gnu_debuglink")
    if sec is None:
        return None
    data = sec.data()
    name, _, rest = data.partition(b"\0")
    pad = (4 - (len(name) + 1) % 4) % 4
    crc = struct.unpack_from("<I", rest, pad)[0] if len(rest) >= pad + 4 else 0
    return name.decode(errors="replace"), crc


def check_debug_matches(kernel: str | os.PathLike[str], debug: str | os.PathLike[str]) -> str:
    """How ``debug`` was matched to ``kernel`` (one phrase); `KernelDebugError` (one line) if it is another
    kernel's: build-ids differ, or no build-id and the debuglink CRC32 does not match the file."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    if Path(kernel).resolve() == Path(debug).resolve():
        return "the kernel's own DWARF"
    try:
        with open(kernel, "rb") as fk, open(debug, "rb") as fd:
            ek, ed = ELFFile(fk), ELFFile(fd)
            bk, bd = _notes_build_id(ek), _notes_build_id(ed)
            link = _debuglink(ek)
    except (OSError, ELFError) as exc:
        raise KernelDebugError(f"{debug}: cannot read as ELF ({exc})") from None
    if bk is not None and bd is not None:
        if bk != bd:
            raise KernelDebugError(
                f"{debug} does not match kernel {kernel}: GNU build-id {bd.hex()} != the kernel's {bk.hex()}"
            )
        return f"GNU build-id {bk.hex()}"
    if link is not None:
        crc = 0
        with open(debug, "rb") as f:
            while block := f.read(1 << 20):
                crc = zlib.crc32(block, crc)
        if crc != link[1]:
            raise KernelDebugError(
                f"{debug} does not match kernel {kernel}: CRC32 {crc:#010x} != .gnu_debuglink {link[0]} "
                f"CRC {link[1]:#010x}"
            )
        return f".gnu_debuglink {link[0]} (CRC32 {crc:#010x})"
    return "no build-id or debuglink to compare (taken on trust)"


def find_kernel_debug(kernel: str | os.PathLike[str] | None) -> Path | None:
    """The usual companions of a kernel file: ``KERNEL.debug`` and ``kernel.debug`` beside it."""
    if kernel is None:
        return None
    k = Path(kernel)
    for cand in (k.with_name(k.name + ".debug"), k.with_name("kernel.debug")):
        if cand.is_file() and cand.resolve() != k.resolve():
            return cand
    return None

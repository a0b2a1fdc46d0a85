"""Do this dump and this kernel belong together? Compare what both must hold byte for byte.

A wrong kernel reads every symbol at a wrong address and prints confident nonsense (`hz: 0x28f5c28`).
The kernel file's initialised data is what the running kernel started from, and some of it never
changes: the `version` string (`uname -v`, with the build's date and path) and the GNU build-id note.
So read them from the file and from the dump at the same virtual address; different bytes prove a
mismatch. Symbol-only kernels (LLDB's test kernels) and dumps without those pages cannot be checked:
the result says "unknown", never "match".
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ReaderError
from .memory import KernelMemory

#: the `version` string is ~150 bytes; compare at most this much
VERSION_MAX = 1024


@dataclass(frozen=True)
class KernelMatch:
    """`status`: "match", "mismatch" or "unknown"; `evidence`: what was compared, in words."""

    status: str
    evidence: str
    dump_version: str | None = None
    kernel_version: str | None = None

    @property
    def mismatch(self) -> bool:
        return self.status == "mismatch"

    def to_json(self) -> dict[str, str | None]:
        return {"status": self.status, "evidence": self.evidence, "dump_version": self.dump_version,
                "kernel_version": self.kernel_version}


def _cut(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def check_kernel(vm: KernelMemory, *, header_version: str | None = None) -> KernelMatch:
    """Compare the kernel file with the dump (see module docstring); never raises for a bad read.

    `header_version` is the kerneldumpheader's version string when the dump came with one.
    """
    kern = vm.kernel
    if kern is None:
        return KernelMatch("unknown", "no kernel given")
    sym = kern.get("version")
    file_version: bytes | None = None
    if sym is not None and sym.address:
        size = min(sym.size or VERSION_MAX, VERSION_MAX)
        raw = kern.file_bytes(sym.address, size)
        if raw is not None and _cut(raw):
            file_version = _cut(raw)
    if file_version is not None:
        try:
            in_dump = vm.read(sym.address, len(file_version) + 1)
        except ReaderError:
            in_dump = None
        if in_dump is not None:
            fv = file_version.decode("utf-8", "replace").strip()
            dv = _cut(in_dump).decode("utf-8", "replace").strip()
            if in_dump[:-1] == file_version and in_dump[-1] == 0:
                return KernelMatch("match", f"`version` at {sym.address:#x} is the same in the dump and the "
                                   f"kernel file", dv, fv)
            return KernelMatch("mismatch", f"`version` at {sym.address:#x} differs: the dump has "
                               f"{dv[:80]!r}, the kernel file {fv[:80]!r}", dv, fv)
    build_id = _check_build_id(vm)
    if build_id is not None:
        return build_id
    if header_version and file_version is not None:
        fv = file_version.decode("utf-8", "replace").strip()
        if header_version.strip() == fv:
            return KernelMatch("match", "the dump header's version string is the kernel file's",
                               header_version, fv)
        return KernelMatch("mismatch", f"the dump header says {header_version.strip()[:80]!r}, the kernel "
                           f"file {fv[:80]!r}", header_version, fv)
    why = ("the kernel file has no initialised `version` string (symbols only?)" if file_version is None
           else "the dump does not hold the `version` page")
    return KernelMatch("unknown", f"cannot compare: {why} and no build-id to compare")


def _check_build_id(vm: KernelMemory) -> KernelMatch | None:
    kern = vm.kernel
    if kern is None or kern.build_id is None or kern.build_id_address is None:
        return None
    addr, raw = kern.build_id_address, kern.file_bytes(kern.build_id_address, kern.build_id_note_size)
    if raw is None:
        return None
    try:
        in_dump = vm.read(addr, len(raw))
    except ReaderError:
        return None
    if in_dump == raw:
        return KernelMatch("match", f"the build-id note at {addr:#x} ({kern.build_id}) is in the dump")
    return KernelMatch("mismatch", f"the build-id note at {addr:#x} differs: the kernel file has "
                       f"{kern.build_id}, the dump {in_dump[-20:].hex()}")

"""`Vmcore.info`: every decoded header field plus what the kernel symbols add, JSON-ready."""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from .errors import ReaderError
from .infofile import read_info_file
from .memory import KernelMemory


def _try(fn, errors: dict[str, str], key: str) -> Any:
    try:
        return fn()
    except ReaderError as exc:
        errors[key] = str(exc)
        return None


def build_info(vm: KernelMemory) -> dict[str, Any]:
    info: dict[str, Any] = {
        "path": str(vm.path),
        "format": vm.format,
        "kind": vm.kind,
        "arch": vm.arch.name,
        "page_size": vm.page_size,
        "container": getattr(vm._payload, "container", "plain"),
        "file_size": _file_size(vm),
        "payload_size": vm._size,
        "expected_size": vm._expected,
        "truncated": vm.truncated,
        "present_pages": vm._phys.page_count,
    }
    if vm.format == "minidump":
        md = vm._md
        info["header"] = dict(md.header)
        info["sections"] = dict(md.offsets)
        if md.dump_avail is not None:
            info["dump_avail"] = [[s, e] for s, e in md.dump_avail]
    else:
        info["header"] = dict(vm._ed.header)
    kdh = vm._kheader
    if kdh:
        info["kerneldumpheader"] = {k: v for k, v in kdh.items() if isinstance(v, (int, str, float, bool))}
    errors: dict[str, str] = {}
    if vm.kernel is not None:
        info["kernel"] = str(vm.kernel.path)
        k = vm.kernel

        def sym_str(name: str):
            return lambda: vm.read_cstring(vm.symbol(name), 1024)

        def sym_int(name: str):
            return lambda: vm.read_int(vm.symbol(name), 4, signed=True)

        info["version"] = _try(sym_str("version"), errors, "version") if "version" in k else None
        info["osrelease"] = _try(sym_str("osrelease"), errors, "osrelease") if "osrelease" in k else None
        info["osreldate"] = _try(sym_int("osreldate"), errors, "osreldate") if "osreldate" in k else None
        info["hz"] = _try(sym_int("hz"), errors, "hz") if "hz" in k else None

        def panic():
            p = vm.read_pointer(vm.symbol("panicstr"))
            return vm.read_cstring(p, 1024) if p else None

        info["panic"] = _try(panic, errors, "panic") if "panicstr" in k else None
        if "time_second" in k:
            info["time_second"] = _try(lambda: vm.read_int(vm.symbol("time_second"), 8), errors,
                                       "time_second")
        if vm.format == "elf" and vm.arch.name == "amd64":
            _try(lambda: vm.translator, errors, "page_tables")
            info["kernel_load_offset"] = vm.load_offset
    if not kdh:
        saved = read_info_file(vm.path)     # savecore's info.N beside a plain vmcore.N
        if saved is not None:
            info["info_file"] = saved["path"]
            kdh = {k: v for k, v in saved.items() if k != "path" and v}
    hostname = (kdh or {}).get("hostname")
    dumptime = (kdh or {}).get("dumptime") or info.get("time_second")
    info["hostname"] = hostname
    info["dumptime"] = dumptime
    if dumptime:
        info["dumptime_utc"] = dt.datetime.fromtimestamp(dumptime, dt.UTC).isoformat()
    if kdh and kdh.get("versionstring") and not info.get("version"):
        info["version"] = kdh["versionstring"]
    if kdh and kdh.get("panicstring") and not info.get("panic"):
        info["panic"] = kdh["panicstring"]
    match = getattr(vm, "kernel_match", None)
    if match is not None and vm.kernel is not None:
        info["kernel_match"] = match.to_json()
    if errors:
        info["errors"] = errors
    return info


def _file_size(vm: KernelMemory) -> int | None:
    """The size of the file the user gave (not of the decompressed payload)."""
    try:
        return os.stat(vm.path).st_size
    except OSError:
        return None

"""`crashinfo`: one readable summary of a dump, in the spirit of FreeBSD's crashinfo(8).

Version, panic string, dump time, hostname, whether the kernel file matches, the crashed thread's
backtrace, `ps`, the tail of the message buffer and the dump's own header facts. Every part that
cannot be read says why in `errors` instead of ending the summary: a half-readable dump is exactly
when a summary is needed.
"""

from __future__ import annotations

from typing import Any

from .errors import ReaderError
from .memory import KernelMemory
from .ps import format_ps, list_processes
from .report import text_lines, text_value, utc
from .threads import Thread

MSGBUF_TAIL_LINES = 40


def build_crashinfo(vm: KernelMemory, info: dict[str, Any], *, msgbuf_lines: int = MSGBUF_TAIL_LINES,
                    program: Any = None, cfi: Any = None) -> dict[str, Any]:
    """The crashinfo facts as a JSON-ready dict (addresses still ints: `report.json_safe` them)."""
    errors: dict[str, str] = dict(info.get("errors", {}))
    out: dict[str, Any] = {
        "vmcore": info.get("path"),
        "kernel": info.get("kernel"),
        "kernel_match": info.get("kernel_match"),
        "version": info.get("version"),
        "osrelease": info.get("osrelease"),
        "osreldate": info.get("osreldate"),
        "panic": info.get("panic"),
        "dumptime": info.get("dumptime"),
        "hostname": info.get("hostname"),
        "arch": info.get("arch"),
        "format": info.get("format"),
    }
    if out["hostname"] is None and program is not None:
        out["hostname"] = _hostname_from_dwarf(program)
    threads: list[Thread] = []
    if vm.kernel is not None:
        try:
            threads = vm.threads()
        except ReaderError as exc:
            errors["threads"] = str(exc)
    crashed = next((t for t in threads if t.crashed), None)
    if crashed is not None:
        bt = crashed.backtrace(cfi=cfi)
        out["crashed_thread"] = {"tid": crashed.tid, "pid": crashed.pid, "name": crashed.name,
                                 "backtrace": [f.to_json() for f in bt.frames], "stop_reason": bt.stop_reason,
                                 "backtrace_text": bt.format(vm.arch.name)}
    elif threads:
        errors["crashed_thread"] = "no thread has the dumping thread's tid (dumptid)"
    if threads:
        procs = list_processes(vm, program=program, threads=threads)
        out["ps"] = [p.to_json() for p in procs]
        out["ps_text"] = format_ps(procs)
    out["msgbuf_tail"] = _msgbuf_tail(vm, msgbuf_lines, errors)
    keys = ("format", "kind", "arch", "container", "file_size", "payload_size", "expected_size", "truncated",
            "present_pages")
    out["dump"] = {k: info.get(k) for k in keys if k in info}
    for k in ("header", "kerneldumpheader", "dump_avail"):
        if k in info:
            out["dump"][k] = info[k]
    if errors:
        out["errors"] = errors
    return out


def _hostname_from_dwarf(program: Any) -> str | None:
    """`prison0.pr_hostname` (what `hostname` reads) when the kernel.debug describes it."""
    try:
        name = program["prison0"].pr_hostname.string_().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - any drgn lookup/fault error means "not available"
        return None
    return name or None


def _msgbuf_tail(vm: KernelMemory, n: int, errors: dict[str, str]) -> list[str]:
    text = None
    if vm.kernel is not None:
        try:
            text = vm.msgbuf()
        except ReaderError as exc:
            errors["msgbuf"] = str(exc)
    if text is None and vm.format == "minidump":
        try:
            text = vm.msgbuf_section().replace(b"\0", b"").decode("utf-8", "replace")
            errors.setdefault("msgbuf", "read from the minidump's msgbuf section (buffer order)")
        except ReaderError as exc:
            errors["msgbuf"] = str(exc)
    if not text:
        return []
    return text.rstrip("\n").splitlines()[-n:] if n > 0 else []


def format_crashinfo(ci: dict[str, Any]) -> list[str]:
    """The summary as text, sections in crashinfo(8)'s order."""
    lines = [f"Dump: {ci.get('vmcore')}"]
    match = ci.get("kernel_match") or {}
    kernel = ci.get("kernel") or "- (no --kernel: symbols, threads and the msgbuf order need one)"
    if match:
        kernel += f"  [{match.get('status')}: {match.get('evidence')}]"
    lines.append(f"Kernel: {kernel}")
    lines.append("")
    for label, key in (("Version", "version"), ("Release", "osrelease"), ("osreldate", "osreldate"),
                       ("Panic", "panic"), ("Hostname", "hostname"), ("Arch", "arch")):
        lines.append(f"{label + ':':<11} {text_value(key, ci.get(key))}")
    t = ci.get("dumptime")
    lines.append(f"{'Dump time:':<11} {utc(t) if t else '-'}")
    ct = ci.get("crashed_thread")
    lines.append("")
    if ct:
        lines.append(f"Backtrace of the crashed thread {ct['name']} (tid {ct['tid']}):")
        lines.extend("  " + line for line in ct["backtrace_text"])
    else:
        lines.append("Backtrace of the crashed thread: -")
    if ci.get("ps_text"):
        lines.append("")
        lines.append("Processes:")
        lines.extend("  " + line for line in ci["ps_text"])
    lines.append("")
    tail = ci.get("msgbuf_tail") or []
    lines.append(f"Message buffer (last {len(tail)} lines):")
    lines.extend("  " + line for line in tail)
    lines.append("")
    lines.append("Dump:")
    lines.extend(text_lines(ci.get("dump", {}), "  "))
    if ci.get("errors"):
        lines.append("")
        lines.append("Could not read:")
        lines.extend(f"  {k}: {v}" for k, v in ci["errors"].items())
    return lines


def crashinfo_json(ci: dict[str, Any]) -> dict[str, Any]:
    """The dict without its text-only parts."""
    out = {k: v for k, v in ci.items() if k != "ps_text"}
    if "crashed_thread" in out:
        out["crashed_thread"] = {k: v for k, v in out["crashed_thread"].items() if k != "backtrace_text"}
    return out

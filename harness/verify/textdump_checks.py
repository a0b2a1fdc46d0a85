"""The verdict on a textdump: each member checked against what the harness saw, with its evidence.

A textdump holds no memory pages, so there is nothing to compare page by page. Instead:

* ``ddb.txt`` == the console of the ddb commands run while capture was on (`TextdumpSession`);
* ``msgbuf.txt`` == the message buffer ``show msgbuf`` printed right before (or that text followed by
  what the kernel printed since, or the same ring read from another start);
* ``panic.txt`` == the panic message ``show panic`` printed, and absent when it said "panicstr not set";
* ``version.txt`` == the kernel's ``version`` string, read from the kernel file's symbol table (or,
  without a kernel file, the boot banner's first line);
* the dump header (device retrieval): "FreeBSD Text Dump", 512-byte blocks, its version string the same.

Text is compared after `normalise`: CR LF and lone CRs become LF, tabs expand to 8 columns, trailing
blanks and blank lines at the end go (ddb prints whitespace lazily and its capture keeps tabs, the
console shows spaces). A mismatch names the first differing line of both sides.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.verify.report import CrossCheck, VerificationReport

#: members every textdump the harness asks for must hold (do_ddb, do_msgbuf, do_version default to 1)
REQUIRED_MEMBERS = ("ddb.txt", "msgbuf.txt", "version.txt")
#: db_capture.c drops output beyond debug.ddb.capture.bufsize (default 48 KiB)
CAPTURE_BUFSIZE_DEFAULT = 48 * 1024
PANIC_MAX = 512  # textdump_dump_panic(): at most one block


def normalise(text: str) -> list[str]:
    """Lines as a person reads them (see module docstring)."""
    text = text.replace("\r\n", "\n").replace("\r", "").replace("\0", "")
    lines = [line.expandtabs(8).rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def first_difference(expected: list[str], actual: list[str]) -> tuple[int, str | None, str | None] | None:
    """(1-based line number, expected line, actual line) of the first difference; None if equal."""
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if e != a:
            return i + 1, e, a
    if len(expected) == len(actual):
        return None
    n = min(len(expected), len(actual))
    return (
        n + 1,
        expected[n] if n < len(expected) else None,
        actual[n] if n < len(actual) else None,
    )


def describe_difference(diff: tuple[int, str | None, str | None], left: str, right: str) -> str:
    line, e, a = diff
    show = lambda s: "(no such line)" if s is None else repr(s)  # noqa: E731
    return f"first differing line {line}: {left} {show(e)}, {right} {show(a)}"


def _lines_summary(lines: list[str]) -> str:
    """Size and digest of normalised text: two sides with the same digest hold the same lines."""
    import hashlib

    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return f"{len(lines)} lines, {sum(len(x) + 1 for x in lines)} chars, sha256 {digest}"


def check_ddb(ddb_txt: str | None, console: str, commands: Iterable[str]) -> CrossCheck:
    what = "textdump ddb.txt == console of the ddb commands run while capture was on"
    source = "ddb capture vs console: " + "; ".join(commands)
    want = normalise(console)
    if ddb_txt is None:
        return CrossCheck(what, _lines_summary(want), "no ddb.txt in the textdump", False, source)
    got = normalise(ddb_txt)
    diff = first_difference(want, got)
    if diff is None:
        return CrossCheck(what, _lines_summary(want), _lines_summary(got), True, source)
    if len(ddb_txt.encode()) >= CAPTURE_BUFSIZE_DEFAULT and got[:-1] == want[: len(got) - 1]:
        return CrossCheck(
            what, _lines_summary(want),
            f"{_lines_summary(got)}: the capture buffer filled at {len(ddb_txt.encode())} bytes and "
            "dropped the rest, as db_capture_write does; everything it kept matches",
            True, source,
        )
    actual = describe_difference(diff, "console", "ddb.txt")
    return CrossCheck(what, _lines_summary(want), actual, False, source)


def check_msgbuf(msgbuf_txt: str | None, show_msgbuf: str) -> CrossCheck:
    what = "textdump msgbuf.txt == the message buffer `show msgbuf` printed before the dump"
    source = "ddb show msgbuf vs msgbuf.txt"
    want = normalise(show_msgbuf)
    if msgbuf_txt is None:
        return CrossCheck(what, _lines_summary(want), "no msgbuf.txt in the textdump", False, source)
    got = normalise(msgbuf_txt)
    if got == want:
        return CrossCheck(what, _lines_summary(want), _lines_summary(got), True, source)
    if want and got[: len(want)] == want:
        return CrossCheck(
            what, _lines_summary(want),
            f"{_lines_summary(got)}: the same text followed by {len(got) - len(want)} line(s) the kernel "
            "printed since", True, source,
        )
    joined_want, joined_got = "\n".join(want), "\n".join(got)
    if joined_want and len(joined_want) == len(joined_got) and joined_got in joined_want + "\n" + joined_want:
        return CrossCheck(
            what, _lines_summary(want),
            f"{_lines_summary(got)}: the same ring, read from another start (show msgbuf reads from "
            "msg_rseq, a textdump from the oldest byte)", True, source,
        )
    diff = first_difference(want, got) or (0, None, None)
    actual = describe_difference(diff, "show msgbuf", "msgbuf.txt")
    return CrossCheck(what, _lines_summary(want), actual, False, source)


def check_panic(panic_txt: str | None, panicstr: str | None, show_panic: str) -> CrossCheck:
    what = "textdump panic.txt == panicstr (absent when not panicking)"
    source = f"ddb show panic: {show_panic.strip()!r}"
    said = show_panic.strip()
    if said != "panicstr not set" and not said.startswith("panic: "):
        return CrossCheck(what, "panicstr as `show panic` prints it", f"panic.txt {panic_txt!r}", False,
                          source + ": neither 'panicstr not set' nor 'panic: MSG', so panicstr is unknown")
    if panicstr is None:
        ok = panic_txt is None
        return CrossCheck(what, "no panic.txt (panicstr not set)",
                          "no panic.txt" if ok else f"panic.txt {panic_txt!r}", ok, source)
    expected = panicstr.encode()[:PANIC_MAX].decode(errors="replace")
    if panic_txt is None:
        return CrossCheck(what, repr(expected), "no panic.txt in the textdump", False, source)
    ok = panic_txt.rstrip("\n") == expected.rstrip("\n")
    return CrossCheck(what, repr(expected), repr(panic_txt), ok, source)


def check_version(version_txt: str | None, version: str | None, source: str) -> CrossCheck:
    what = "textdump version.txt == the kernel's version string"
    if version is None:
        return CrossCheck(what, "(unknown)", repr(version_txt), version_txt is not None,
                          f"{source}; only its presence is checked")
    if version_txt is None:
        return CrossCheck(what, repr(version), "no version.txt in the textdump", False, source)
    if source.startswith("boot banner"):
        ok = version_txt.split("\n", 1)[0].rstrip() == version.rstrip()
    else:
        ok = version_txt == version.encode()[:PANIC_MAX].decode(errors="replace")
    return CrossCheck(what, repr(version), repr(version_txt), ok, source)


def check_header(header: dict[str, Any] | None, version_txt: str | None) -> CrossCheck | None:
    """The dump device's kerneldumpheader of a textdump (None: retrieved as a file, no header)."""
    if header is None:
        return None
    problems = []
    magic = str(header.get("magic", "")).rstrip("\0")
    if magic != "FreeBSD Text Dump":
        problems.append(f"magic {magic!r}")
    if header.get("blocksize") not in (None, 512):
        problems.append(f"blocksize {header.get('blocksize')}")
    # the header keeps at most 191 characters of the version (a longer one is cut and ends in "\n")
    hv = str(header.get("versionstring", "")).rstrip("\0").rstrip("\n")
    if version_txt is not None and hv and not version_txt.startswith(hv):
        problems.append(f"versionstring {hv!r} is not version.txt's")
    return CrossCheck(
        "textdump dump header (FreeBSD Text Dump, 512-byte blocks, the same version string)",
        "magic 'FreeBSD Text Dump', blocksize 512",
        "; ".join(problems) or f"magic {magic!r}, blocksize {header.get('blocksize')}, "
        f"dumplength {header.get('dumplength')}",
        not problems,
        "kerneldumpheader on the dump device",
    )


def kernel_version(kernel: Path | None, banner: str = "") -> tuple[str | None, str]:
    """The kernel's ``version`` string and where it came from: the kernel file's symbol, else the boot
    banner's ``FreeBSD X.Y-...`` line, else (None, why)."""
    if kernel is not None:
        try:
            from reader.kernel import Kernel

            k = Kernel(kernel)
            sym = k.lookup("version")
            data = k.file_bytes(sym.address, sym.size or 512)
            if data is not None:
                return data.split(b"\0", 1)[0].decode(errors="replace"), f"symbol `version` of {kernel}"
        except Exception as exc:  # noqa: BLE001 - fall back to the banner, saying why
            banner_version = _banner_version(banner)
            if banner_version:
                return banner_version, f"boot banner (kernel file {kernel}: {exc})"
            return None, f"kernel file {kernel}: {exc}"
    banner_version = _banner_version(banner)
    if banner_version:
        return banner_version, "boot banner"
    return None, "no kernel file and no FreeBSD banner line"


def _banner_version(banner: str) -> str | None:
    import re

    m = re.search(r"^FreeBSD \d+\.\d+-\S+ .*$", banner.replace("\r", ""), re.M)
    return m.group(0) if m else None


def judge_textdump(
    members: dict[str, bytes],
    header: dict[str, Any] | None,
    session: Any,  # harness.freebsd.textdump.TextdumpSession
    version: str | None,
    version_source: str,
    report: VerificationReport | None = None,
) -> VerificationReport:
    """A report whose cross-checks are the member checks (`VerificationReport.decide` for dump_kind text)."""
    report = report or VerificationReport()
    report.dump_kind = "text"
    report.dump_format = "textdump (ustar: " + ", ".join(members) + ")"
    text = {name: data.decode("utf-8", errors="replace") for name, data in members.items()}
    missing = [m for m in REQUIRED_MEMBERS if m not in members]
    if missing:
        report.errors.append(f"textdump lacks {', '.join(missing)} (members: {', '.join(members) or 'none'})")
    checks = [
        check_ddb(text.get("ddb.txt"), session.console_captured, session.commands),
        check_msgbuf(text.get("msgbuf.txt"), session.show_msgbuf),
        check_panic(text.get("panic.txt"), session.panicstr, session.show_panic),
        check_version(text.get("version.txt"), version, version_source),
    ]
    head = check_header(header, text.get("version.txt"))
    if head is not None:
        checks.append(head)
    report.crosschecks.extend(checks)
    report.textdump = {
        "members": {name: len(data) for name, data in members.items()},
        "commands_captured": list(session.commands),
    }
    return report

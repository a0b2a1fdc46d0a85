"""A textdump's member checks (`harness.verify.textdump_checks`) and the ddb side that makes one
(`harness.freebsd.textdump`), without a guest: members and console text as FreeBSD 12.1 prints them
(db_capture.c keeps the command line as typed and ddb's tabs; the console shows CR LF and spaces)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.freebsd.ddb import DumpFailed
from harness.freebsd.textdump import TextdumpSession, make_textdump, textdump_result
from harness.verify.textdump_checks import (
    check_ddb,
    check_msgbuf,
    check_panic,
    check_version,
    judge_textdump,
    kernel_version,
    normalise,
)

CONSOLE = (
    "db> show panic\r\npanicstr not set\r\n"
    "db> bt\r\nTracing pid 11 tid 100003 td 0xfffff80000448000\r\n"
    "mock_idle() at  mock_idle+0x1/frame 0xffffffff80403df0\r\n"
    "db> textdump dump\n"
)
DDB_TXT = (
    "db> show panic\npanicstr not set\n"
    "db> bt\nTracing pid 11 tid 100003 td 0xfffff80000448000\n"
    "mock_idle() at\tmock_idle+0x1/frame 0xffffffff80403df0\n"
    "db> textdump dump\n"
)


def _session(console: str = CONSOLE, msgbuf: str = "boot line\nsecond line\n", panic: str = "panicstr not set"
             ) -> TextdumpSession:
    result = textdump_result("Textdump complete.\n", 0.1)
    return TextdumpSession(["show panic", "bt"], console, msgbuf, panic, result)


def test_normalise_folds_cr_lf_tabs_and_trailing_blanks():
    assert normalise("a\tb  \r\nc\r\n\n\n") == ["a       b", "c"]
    assert normalise("mock_idle() at\tx") == normalise("mock_idle() at  x")


def test_ddb_txt_equal_to_the_console_passes():
    c = check_ddb(DDB_TXT, CONSOLE, ["show panic", "bt"])
    assert c.ok and c.expected == c.actual and "sha256" in c.actual


def test_ddb_txt_differing_from_the_console_names_the_first_differing_line():
    wrong = DDB_TXT.replace("panicstr not set", "#anicstr not set")
    c = check_ddb(wrong, CONSOLE, ["show panic", "bt"])
    assert not c.ok
    assert c.actual == "first differing line 2: console 'panicstr not set', ddb.txt '#anicstr not set'"


def test_ddb_txt_shorter_than_the_console_names_the_missing_line():
    cut = DDB_TXT.rsplit("db> textdump dump\n", 1)[0]
    c = check_ddb(cut, CONSOLE, ["bt"])
    assert not c.ok
    assert c.actual == "first differing line 6: console 'db> textdump dump', ddb.txt (no such line)"
    assert not check_ddb(None, CONSOLE, ["bt"]).ok


def test_a_full_capture_buffer_is_a_prefix_of_the_console():
    long_console = "db> ps\n" + "".join(f"line {i:05d} " + "x" * 40 + "\n" for i in range(1200))
    kept = long_console.encode()[: 48 * 1024].decode()
    c = check_ddb(kept, long_console, ["ps"])
    assert c.ok and "capture buffer filled" in c.actual
    # the same length cut anywhere else is no excuse
    bad = kept.replace("line 00007", "line 99999")
    assert not check_ddb(bad, long_console, ["ps"]).ok


def test_msgbuf_equal_extended_or_rotated_passes_and_a_changed_line_fails():
    shown = "one\ntwo\nthree\n"
    assert check_msgbuf("one\ntwo\nthree\n", shown).ok
    extended = check_msgbuf("one\ntwo\nthree\nTextdump later line\n", shown)
    assert extended.ok and "1 line(s) the kernel printed since" in extended.actual
    assert check_msgbuf("two\nthree\none\n", shown).ok  # the ring read from another start
    bad = check_msgbuf("one\nTWO\nthree\n", shown)
    assert not bad.ok and bad.actual == "first differing line 2: show msgbuf 'two', msgbuf.txt 'TWO'"
    assert not check_msgbuf(None, shown).ok


def test_panic_txt_is_panicstr_and_absent_without_a_panic():
    assert check_panic(None, None, "panicstr not set").ok
    assert not check_panic("stray\n", None, "panicstr not set").ok
    assert check_panic("kdb_sysctl_panic", "kdb_sysctl_panic", "panic: kdb_sysctl_panic").ok
    assert not check_panic("other", "kdb_sysctl_panic", "panic: kdb_sysctl_panic").ok
    assert not check_panic(None, "kdb_sysctl_panic", "panic: kdb_sysctl_panic").ok
    unknown = check_panic("kdb_sysctl_panic", None, "No such command")
    assert not unknown.ok and "panicstr is unknown" in unknown.source
    assert _session(panic="panic: kdb_sysctl_panic\n").panicstr == "kdb_sysctl_panic"
    assert _session().panicstr is None


def test_version_txt_against_the_symbol_or_the_banner():
    v = "FreeBSD 12.1-RELEASE r354233 GENERIC amd64\n"
    assert check_version(v, v, "symbol `version`").ok
    assert not check_version(v.replace("12.1", "12.2"), v, "symbol `version`").ok
    assert check_version(v, v.strip(), "boot banner").ok
    assert not check_version(None, v, "symbol `version`").ok
    banner = "---<<BOOT>>---\r\nCopyright (c) 1992-2019 The FreeBSD Project.\r\n" + v.replace("\n", "\r\n")
    assert kernel_version(None, banner) == (v.strip(), "boot banner")
    assert kernel_version(None, "")[0] is None


def test_kernel_version_reads_the_version_symbol_of_the_mock_kernel():
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc) to build the mock kernel")
    from tests.mock_freebsd_kernel.mock_freebsd_kernel import build_mock_freebsd_kernel

    version, source = kernel_version(build_mock_freebsd_kernel())
    assert version.startswith("FreeBSD 12.1-MOCK mock_freebsd_kernel amd64") and version.endswith("\n")
    assert source.startswith("symbol `version` of ")


def test_judge_textdump_passes_only_when_every_member_checks():
    members = {"ddb.txt": DDB_TXT.encode(), "msgbuf.txt": b"boot line\nsecond line\n", "version.txt": b"V\n"}
    header = {"magic": "FreeBSD Text Dump", "blocksize": 512, "versionstring": "V\n", "dumplength": 3072}
    report = judge_textdump(members, header, _session(), "V\n", "symbol `version`")
    assert report.decide() and report.status == "PASSED" and report.dump_kind == "text"
    assert len(report.crosschecks) == 5 and report.textdump["members"]["ddb.txt"] == len(DDB_TXT)
    assert "ok  textdump ddb.txt == console" in report.summary()

    members["ddb.txt"] = DDB_TXT.replace("db> bt", "db> ps").encode()
    bad = judge_textdump(members, header, _session(), "V\n", "symbol `version`")
    assert not bad.decide() and bad.status == "FAILED"
    assert "first differing line 3: console 'db> bt', ddb.txt 'db> ps'" in bad.summary()

    missing = judge_textdump({"ddb.txt": DDB_TXT.encode()}, None, _session(), "V\n", "symbol `version`")
    assert not missing.decide() and "lacks msgbuf.txt, version.txt" in missing.errors[0]

    members["ddb.txt"] = DDB_TXT.encode()
    long_version = "FreeBSD 12.1-RELEASE " + "x" * 300 + "\n"
    cut = dict(header, versionstring=long_version[:190] + "\n")
    members["version.txt"] = long_version.encode()
    assert judge_textdump(members, cut, _session(), long_version, "symbol `version`").decide()
    members["version.txt"] = b"V\n"
    wrong_magic = dict(header, magic="FreeBSD Kernel Dump")
    assert not judge_textdump(members, wrong_magic, _session(), "V\n", "symbol `version`").decide()


@pytest.mark.parametrize(
    ("text", "ok", "error"),
    [
        ("Textdump complete.\n", True, None),
        ("Textdump: Insufficient space on dump partition\n", False,
         "Textdump: Insufficient space on dump partition"),
        ("Textdump: Error 5 writing dump\n", False, "Textdump: Error 5 writing dump"),
        ("Insufficient space on dump partition for minimal textdump.\n", False,
         "Insufficient space on dump partition for minimal textdump."),
        ("", False, None),
    ],
)
def test_textdump_console_texts(text, ok, error):
    r = textdump_result(text, 0.0)
    assert (r.kind, r.ok, r.error) == ("text", ok, error)


class _ScriptedDdb:
    """Answers ddb commands as a 12.1 kernel would (the console text each one leaves)."""

    def __init__(self, dump_answer: str) -> None:
        self.console = SimpleNamespace(tail=lambda *a: "", pending=lambda: "")
        self.sent: list[str] = []
        self.last_console = ""
        self.answers = {
            "show panic": "panicstr not set\r\n",
            "textdump set": "textdump set\r\n",
            "textdump status": "textdump is set\r\n",
            "capture reset": "",
            "capture on": "",
            "bt": "Tracing pid 11 tid 100003 td 0xfffff80000448000\r\n",
            "textdump dump": dump_answer,
        }

    def show_msgbuf(self) -> str:
        self.sent.append("show msgbuf")
        return "boot line\n"

    def command(self, cmd: str, *args, **kw) -> str:
        self.sent.append(cmd)
        out = self.answers[cmd]
        self.last_console = f"{cmd}\r\n{out}db> "
        return out.replace("\r\n", "\n").rstrip("\n")


def test_make_textdump_captures_the_commands_and_ends_with_the_dump_line():
    ddb = _ScriptedDdb("Textdump complete.\r\n")
    session = make_textdump(ddb, ["bt"])
    assert ddb.sent == ["show msgbuf", "show panic", "textdump set", "textdump status", "capture reset",
                        "capture on", "bt", "textdump dump"]
    assert normalise(session.console_captured) == [
        "db> bt", "Tracing pid 11 tid 100003 td 0xfffff80000448000", "db> textdump dump",
    ]
    assert session.result.ok and session.show_msgbuf == "boot line\n" and session.panicstr is None


def test_make_textdump_without_textdump_complete_fails_saying_why():
    with pytest.raises(DumpFailed, match="no \"Textdump complete.\" before the prompt"):
        make_textdump(_ScriptedDdb(""), ["bt"])
    with pytest.raises(DumpFailed, match="Textdump: Error 5 writing dump"):
        make_textdump(_ScriptedDdb("Textdump: Error 5 writing dump\r\n"), ["bt"])

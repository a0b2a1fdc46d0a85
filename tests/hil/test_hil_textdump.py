"""FreeBSD in the loop: a textdump made in ddb, unpacked by the reader and checked against the console.

A textdump needs only ddb (`textdump set`, `capture on`, the commands, `textdump dump`), so it runs on a
bare kernel too; a kernel without ddb skips (nothing can ask it for one by hand).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.hil


def test_textdump_matches_the_console(fbsd_repro):
    """`--textdump`: ddb.txt is the console of the captured ddb commands, msgbuf.txt the message buffer
    `show msgbuf` printed, panic.txt absent (not panicking), version.txt the kernel's version string."""
    outcome = fbsd_repro(textdump=True)  # skips (ReproUnsupported) on a kernel without ddb
    report = outcome.report
    assert report.dump_kind == "text" and report.flow == "ddb"
    assert {"ddb.txt", "msgbuf.txt", "version.txt"} <= set(report.textdump["members"])
    checks = {c.what: c for c in report.crosschecks}
    assert any(w.startswith("textdump ddb.txt ==") and c.ok for w, c in checks.items()), report.summary()
    assert any(w.startswith("textdump panic.txt ==") and c.ok for w, c in checks.items()), report.summary()
    assert report.passed, report.summary()

"""FreeBSD in the loop: every cell of the dump matrix, verified page by page against live memory.

Run with a guest source (`tox -e hil`, or `pytest -m hil --fbsd-kernel PATH`); narrow with `-k`, e.g.
`-k "mini and nmi"`. Cells the source cannot run (a bare kernel has no shell for sysctl triggers or
dumpon compression) skip with the reason.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.hil


def test_dump_matrix(fbsd_repro, hil_case):
    outcome = fbsd_repro(hil_case)
    report = outcome.report
    assert report.dump_kind == hil_case.dump
    assert report.pages_compared > 0
    assert report.passed, report.summary()


def test_verified_dump_cross_checks_ddb(verified_dump):
    """The default plan: ddb's `show registers` and `x` values agree with the reader."""
    report = verified_dump.report
    assert report.passed, report.summary()
    assert report.crosschecks, "ddb printed nothing to cross-check"
    assert all(c.ok for c in report.crosschecks)


def test_ddb_session_on_booted_guest(fbsd_ddb):
    regs = fbsd_ddb.show_registers()
    assert "rip" in regs
    assert fbsd_ddb.x("hz", "lx")[0] in (100, 1000)

"""FreeBSD in the loop: every cell of the dump matrix, verified page by page against live memory.

Run with a guest source (`tox -e hil`, or `pytest -m hil --fbsd-kernel PATH`); narrow with `-k`, e.g.
`-k "mini and nmi"`. Cells the source cannot run (a bare kernel has no shell for sysctl triggers or
dumpon compression) skip with the reason.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.hil


def test_dump_matrix(fbsd_repro, hil_case):
    """One cell through `fbsd-hil repro`'s pipeline: ddb flow on kernels with ddb, the panic flow (the
    kernel's own dump, held at "Press a key") on kernels without; verified page by page either way."""
    outcome = fbsd_repro(hil_case)
    report = outcome.report
    assert report.flow in ("ddb", "panic") and report.flow == outcome.flow
    assert report.dump_kind == hil_case.dump
    assert report.pages_compared > 0
    assert report.passed, report.summary()
    if hil_case.compression != "none":  # decompressed by the reader, not merely a plain dump that passed
        assert report.compression.get("kind") == hil_case.compression, report.summary()


def test_verified_dump_cross_checks_ddb(verified_dump):
    """The default plan: ddb's `show registers` and `x` values agree with the reader."""
    report = verified_dump.report
    assert report.passed, report.summary()
    if report.flow == "panic":
        pytest.skip("kernel without ddb (panic flow): ddb printed nothing to cross-check; the dump verified")
    if report.kernel_source.startswith("none"):
        pytest.skip(f"no kernel file for symbols ({report.kernel_source}): nothing to cross-check by name")
    assert report.crosschecks, "ddb printed nothing to cross-check"
    assert all(c.ok for c in report.crosschecks)


def test_savecore_retrieval_matches_the_host_extraction(fbsd_target, fbsd_repro):
    """--retrieve ssh: reboot, savecore, SFTP; same payload as the host's extraction, verified."""
    if not fbsd_target.has_shell:
        pytest.skip("savecore retrieval reboots into userland: a bare --fbsd-kernel boot has none")
    if fbsd_target.root_image is not None:
        pytest.skip(
            "savecore + SFTP needs sshd and a network; the single-user root image has neither (its savecore "
            "retrieval is --retrieve savecore: test_savecore_onto_a_crash_disk_matches_the_host_extraction)"
        )
    outcome = fbsd_repro(retrieve="ssh")
    report = outcome.report
    assert report.retrieval == "savecore + SFTP"
    assert any("hold the same payload" in n for n in report.notes), report.notes
    assert report.passed, report.summary()


def test_savecore_onto_a_crash_disk_matches_the_host_extraction(fbsd_target, fbsd_repro):
    """--retrieve savecore (a kernel with a single-user root image): newfs a crash disk, dump, reboot,
    the guest's savecore onto it; the host reads vmcore.N from the UFS2 disk image (no mount), finds the
    same payload as its own extraction and verifies it."""
    if fbsd_target.root_image is None:
        pytest.skip("--retrieve savecore is the single-user root image's retrieval: pass --fbsd-root-image")
    outcome = fbsd_repro(retrieve="savecore")  # skips (ReproUnsupported) on an image without newfs/savecore
    report = outcome.report
    assert any("hold the same payload" in n for n in report.notes), report.notes
    assert report.passed, report.summary()


def test_ddb_session_on_booted_guest(fbsd_ddb):
    regs = fbsd_ddb.show_registers()
    assert "rip" in regs
    assert fbsd_ddb.x("hz", "lx")[0] in (100, 1000)


def test_panic_flow_dump_verifies(fbsd_repro):
    """The panic flow on any kernel (`--flow panic`): the kernel writes its own dump on panic and is held at
    "Press a key"; a kernel with ddb stops in ddb on the panic and is continued. Verified all the same."""
    outcome = fbsd_repro(flow="panic")
    report = outcome.report
    assert report.flow == outcome.flow == "panic"
    assert any(n.startswith("panic flow (") for n in report.notes), report.notes
    assert report.passed, report.summary()


def test_dump_twice_in_one_ddb_session(fbsd_repro):
    """`--dump-twice`: a minidump, `write/l do_minidump 0` in the same ddb session, a full dump; both
    verified against live memory (skips, saying why, on a kernel without ddb or without do_minidump)."""
    outcome = fbsd_repro(dump_twice=True)
    assert [r.dump_kind for r in outcome.reports] == ["mini", "full"]
    for report in outcome.reports:
        assert report.passed, report.summary()
    assert outcome.passed

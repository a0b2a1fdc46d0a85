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
    if hil_case.device == "swap":  # the report names the partition the dump was read from
        assert any(n.startswith("dump device ") and "(freebsd-swap)" in n for n in report.notes), report.notes
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


def test_swap_partition_too_small_is_dump_incomplete(fbsd_target, tmp_path):
    """A 1 MiB freebsd-swap partition as the dump device (`dumpon /dev/vtbd0p2`): no minidump fits, the
    kernel says "Dump failed. Partition too small" and the run stops at step dump as "dump incomplete"
    with those words - never a verified dump."""
    from harness.pytest_plugin import HilCase, run_config
    from harness.run import ReproError, run_repro

    case = HilCase("mini", "sysctl", "swap", "none")
    if why := fbsd_target.unsupported(case):
        pytest.skip(f"{case.id}: {why}")
    with pytest.raises(ReproError) as e:
        run_repro(run_config(fbsd_target, case, tmp_path, swap_mib=1), progress=lambda _msg: None)
    assert e.value.step == "dump", e.value.one_line()
    assert "dump incomplete" in str(e.value) and "Partition too small" in str(e.value), e.value.one_line()


def test_dump_twice_toggled_by_sysctl_from_the_shell(fbsd_target, fbsd_repro):
    """The user's way within one boot: a minidump, `c` back to the shell, `sysctl debug.minidump=0`,
    `sysctl debug.kdb.enter=1`, a full dump; both verified (the first dump is taken off the disk first)."""
    if not fbsd_target.has_shell:
        pytest.skip("the sysctl toggle needs a shell: a bare --fbsd-kernel boot has none (--fbsd-root-image)")
    outcome = fbsd_repro(dump_twice=True, dump_twice_via="sysctl")
    assert [r.dump_kind for r in outcome.reports] == ["mini", "full"]
    for report in outcome.reports:
        assert report.passed, report.summary()
    assert any("`sysctl debug.minidump=0`" in n for n in outcome.reports[1].notes), outcome.reports[1].notes
    assert outcome.passed


def test_in_guest_witness_agrees_with_the_dump(fbsd_target, fbsd_repro):
    """Kernel pages read in the guest through /dev/kmem and /dev/mem before the dump equal the dump's and
    the hypervisor's copies (a cross-check of its own); a guest without a shell says it did not run."""
    outcome = fbsd_repro()
    witness = outcome.report.witness
    if not fbsd_target.has_shell:
        assert witness == {"ran": False, "why_not": witness["why_not"], "summary": witness["summary"]}
        assert "did not run" in outcome.report.summary()
        pytest.skip(f"in-guest witness: {witness['why_not']}")
    assert witness["ran"], witness
    assert witness["kmem_total"] > 0 and witness["kmem_equal"] == witness["kmem_total"], witness["summary"]
    assert witness["mem_total"] > 0 and witness["mem_equal"] == witness["mem_total"], witness["summary"]
    checks = [c for c in outcome.report.crosschecks if c.what.startswith("in-guest witness")]
    assert len(checks) == witness["kmem_total"] + witness["mem_total"] and all(c.ok for c in checks)
    assert "in-guest witness: " in outcome.report.summary()

"""The fbsd-hil pytest plugin, run in pytester sub-sessions (the plugin loads by its entry point)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from harness.pytest_plugin import HIL_SKIP_REASON, hil_matrix

HIL_TEST = """
import pytest

@pytest.mark.hil
def test_needs_freebsd():
    raise AssertionError("must never run without a FreeBSD guest")
"""


def test_options_are_in_help(pytester: pytest.Pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    for opt in (
        "--fbsd-image",
        "--fbsd-release",
        "--fbsd-kernel",
        "--fbsd-kenv",
        "--libvirt-uri",
        "--accel",
        "--keep-vm",
        "--fbsd-artifacts",
        "--fbsd-offline",
        "--fbsd-memory",
    ):
        assert opt in out, opt


def test_hil_tests_skip_with_one_line_without_a_guest(pytester: pytest.Pytester):
    pytester.makepyfile(HIL_TEST)
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED*{HIL_SKIP_REASON}"])


def test_matrix_ids_and_narrowing_with_k(pytester: pytest.Pytester):
    pytester.makepyfile("""
        def test_matrix(hil_case):
            assert hil_case.id.startswith(hil_case.dump)
    """)
    result = pytester.runpytest("--collect-only", "-q")
    out = result.stdout.str()
    assert len(hil_matrix()) == 60
    for case_id in ("mini-nmi-disk-none", "full-alt-break-disk-zstd", "mini-sysctl-swap-gzip"):
        assert f"test_matrix[{case_id}]" in out
    result = pytester.runpytest("-q", "-k", "full and alt-break and disk and none")
    result.assert_outcomes(passed=1)


def test_artifacts_kept_only_for_failed_tests(pytester: pytest.Pytester, tmp_path):
    pytester.makepyfile("""
        def test_fails(fbsd_artifacts, tmp_path):
            (tmp_path / "console.transcript").write_text("db> dump\\n")
            fbsd_artifacts.add(tmp_path / "console.transcript")
            fbsd_artifacts.add_text("domain.xml", "<domain/>")
            assert False, "verification failed"

        def test_passes(fbsd_artifacts, tmp_path):
            (tmp_path / "x").write_text("x")
            fbsd_artifacts.add(tmp_path / "x")
    """)
    art = tmp_path / "artifacts"
    result = pytester.runpytest(f"--fbsd-artifacts={art}")
    result.assert_outcomes(passed=1, failed=1)
    (kept,) = list(art.iterdir())
    assert "test_fails" in kept.name
    assert (kept / "console.transcript").read_text() == "db> dump\n"
    assert (kept / "domain.xml").read_text() == "<domain/>"
    result.stdout.fnmatch_lines([f"*kept in {kept}*"])


def test_summary_table_and_junit_properties(pytester: pytest.Pytester, tmp_path):
    pytester.makepyfile("""
        from harness.verify import VerificationReport

        def test_one(fbsd_record_report):
            r = VerificationReport(pages_compared=8816, pages_identical=8801, pages_differing_explained=15)
            r.timings.update(dump=0.5, verify=0.2)
            r.decide()
            fbsd_record_report(r, "mini-nmi-disk-none")

        def test_two(fbsd_record_report):
            r = VerificationReport(dump_kind="full", pages_compared=10, pages_identical=9,
                                   pages_differing_unexplained=1)
            r.decide()
            fbsd_record_report(r, "full-nmi-disk-none")
    """)
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest(f"--junitxml={junit}")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*fbsd-hil verification summary*",
            "test*result*kind*compared*identical*",
            "mini-nmi-disk-none*PASS*mini*8816*8801*15*0*0*dump=0.5 verify=0.2",
            "full-nmi-disk-none*FAIL*full*10*9*0*1*",
            "2 dumps verified, 1 failed verification",
        ]
    )
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).iter("property")}
    assert props["verification_passed"] in ("True", "False")
    assert props["verification_kind"] in ("mini", "full")


def test_missing_kernel_file_is_an_error_not_a_skip(pytester: pytest.Pytester, tmp_path):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.hil
        def test_x(fbsd_target):
            pass
    """)
    result = pytester.runpytest(f"--fbsd-kernel={tmp_path / 'nope'}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--fbsd-kernel*nope does not exist*"])


def _release_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.hil
        def test_x(fbsd_target):
            pass
    """)


def test_release_not_cached_offline_skips(pytester: pytest.Pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("FBSD_HIL_CACHE", str(tmp_path / "cache"))
    _release_test(pytester)
    result = pytester.runpytest("--fbsd-release=14.3", "--fbsd-offline", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*--fbsd-offline*not in the cache*"])


def test_release_download_failure_is_an_error(pytester: pytest.Pytester, tmp_path, monkeypatch):
    """A mirror that refuses connections (127.0.0.1:9, discard port, nothing listening)."""
    monkeypatch.setenv("FBSD_HIL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FBSD_HIL_MIRROR", "http://127.0.0.1:9/freebsd")
    _release_test(pytester)
    result = pytester.runpytest("--fbsd-release=14.3")
    # fetched once before any test: the run ends with one line naming the release and the URL
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*fbsd-hil: FreeBSD 14.3 image could not be fetched: http://127.0.0.1:9/*"])
    assert result.stdout.str().count("could not be fetched") == 1
    result.assert_outcomes()  # no test ran, none errored one by one


def test_unsupported_matrix_cell_skips_with_reason():
    from harness.pytest_plugin import FbsdTarget, HilCase

    kernel_target = FbsdTarget(kernel=__import__("pathlib").Path("/k"))
    assert "no shell" in kernel_target.unsupported(HilCase("mini", "sysctl", "disk", "none"))
    assert kernel_target.unsupported(HilCase("full", "alt-break", "disk", "none")) is None
    assert "savecore" in FbsdTarget(image=__import__("pathlib").Path("/i")).unsupported(
        HilCase("mini", "nmi", "swap", "none")
    )

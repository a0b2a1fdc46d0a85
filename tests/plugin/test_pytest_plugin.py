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


@pytest.mark.parametrize("option", ["--fbsd-kernel", "--fbsd-image"])
def test_missing_kernel_file_is_an_error_not_a_skip(pytester: pytest.Pytester, tmp_path, option):
    """One line for the whole session, not one identical error per test (a new user saw 69)."""
    pytester.makepyfile("""
        import pytest

        @pytest.mark.hil
        @pytest.mark.parametrize("n", range(5))
        def test_x(fbsd_target, n):
            pass
    """)
    result = pytester.runpytest(f"{option}={tmp_path / 'nope'}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*fbsd-hil: {option} *nope does not exist"])
    everything = result.stdout.str() + result.stderr.str()
    assert everything.count("does not exist") == 1
    assert "test_x" not in everything  # nothing ran, nothing errored one by one


def test_bad_kenv_is_one_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile(HIL_TEST)
    result = pytester.runpytest("--fbsd-kenv=novalue")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fbsd-kenv wants KEY=VALUE*"])


def test_sigterm_tears_the_session_down_like_ctrl_c(pytester: pytest.Pytester, tmp_path):
    """A CI timeout sends SIGTERM: fixture teardown (which destroys guests) must still run."""
    import signal
    import subprocess
    import sys
    import time

    marker = tmp_path / "torn-down"
    started = tmp_path / "started"
    pytester.makepyfile(f"""
        import pathlib, time
        import pytest

        @pytest.fixture(scope="session")
        def guest():
            yield "guest"
            pathlib.Path({str(marker)!r}).write_text("destroyed")

        def test_long(guest):
            pathlib.Path({str(started)!r}).write_text("running")
            time.sleep(120)
    """)
    import os
    from pathlib import Path

    import harness

    root = str(Path(harness.__file__).resolve().parents[1])  # this checkout's plugin, not an installed one
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(pytester.path)],
        cwd=pytester.path,
        env={**os.environ, "PYTHONPATH": root},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert started.exists(), "the test never started"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert marker.read_text() == "destroyed", out
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out


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
    image = FbsdTarget(image=__import__("pathlib").Path("/i"))
    image_swap = image.unsupported(HilCase("mini", "nmi", "swap", "none"))
    assert "own freebsd-swap partition" in image_swap and "not built" in image_swap

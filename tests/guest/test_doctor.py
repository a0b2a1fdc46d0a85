"""`fbsd-hil doctor`: the parts that are safe to run on a shared host (no package installs, no daemon
restarts): parsing, real dpkg queries, check-only mode, the state file that `--stop` obeys, and that the
whole thing imports with the standard library only (it runs before any virtualenv exists)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.vm import accel, doctor

REPO = Path(__file__).resolve().parents[2]


def test_package_list_parses_and_dpkg_query_is_real():
    pkgs = doctor.required_packages()
    assert "qemu-system-x86" in pkgs and "busybox-static" in pkgs
    assert all(not p.startswith("#") and " " not in p for p in pkgs)
    if not doctor.is_debian():
        pytest.skip("not a Debian host: dpkg-query unavailable")
    missing = doctor.missing_debian_packages(["dpkg", "fbsd-hil-no-such-package"])
    assert missing == ["fbsd-hil-no-such-package"]


def test_doctor_imports_with_the_standard_library_only():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import argparse, harness.vm.doctor, harness.cli.doctor, harness.vm.accel\n"
        "harness.cli.doctor.register(argparse.ArgumentParser().add_subparsers())\n"
        "extra = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "bad = sorted(m for m in extra if m not in sys.stdlib_module_names and m != 'harness')\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_check_only_run_reports_without_changing_anything(capsys):
    report = doctor.run_doctor(fix=False, state_file=None, probe_kvm=False)
    out = capsys.readouterr().out
    assert "packages:" in out and "libvirt-python:" in out
    assert report.started == []  # check mode never starts anything
    for line in report.lines:
        assert line.split()[0] in ("ok", "note", "PROBLEM"), line


def test_cli_help_and_stop_without_state_file():
    r = subprocess.run(
        [sys.executable, "-m", "harness", "doctor", "--stop"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 2 and "--state-file" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "harness", "doctor", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert r.returncode == 0 and "--fix" in r.stdout


def test_stop_stops_only_what_the_state_file_records(tmp_path):
    ours = subprocess.Popen(["sleep", "300"])
    other = subprocess.Popen(["sleep", "300"])
    try:
        state = tmp_path / "state.json"
        doctor.record_started(state, [{"name": "sleep", "pid": ours.pid, "prefix": []}])
        # a recorded pid that now belongs to a different program is left alone
        doctor.record_started(state, [{"name": "libvirtd", "pid": other.pid, "prefix": []}])
        report = doctor.Report()
        doctor.stop_started(state, report)
        assert ours.wait(timeout=15) is not None
        time.sleep(0.2)
        assert other.poll() is None
        assert any("not ours" in line for line in report.lines)
        assert json.loads(state.read_text())["started"] == []
        # a second --stop is a no-op
        again = doctor.Report()
        doctor.stop_started(state, again)
        assert again.problems == []
    finally:
        for p in (ours, other):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_kvm_probe_boot_sector_runs_under_tcg(tmp_path):
    """The probe's boot sector is real code: under TCG it must print the banner and exit via port 0xf4."""
    if not os.path.exists("/usr/bin/qemu-system-x86_64"):
        pytest.skip("qemu-system-x86_64 not installed")
    disk = tmp_path / "boot.img"
    disk.write_bytes(accel.probe_boot_sector())
    r = subprocess.run(
        ["qemu-system-x86_64", "-accel", "tcg", "-display", "none", "-nodefaults", "-no-reboot", "-m", "32",
         "-drive", f"file={disk},format=raw,if=ide", "-serial", "stdio",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 1 and accel.BOOT_BANNER in r.stdout


def test_kvm_probe_gives_a_reasoned_verdict():
    verdict = accel.probe_kvm(use_cache=False, timeout=60)
    assert verdict.reason
    if verdict.usable:
        assert verdict.steps
    assert accel.resolve_accel("tcg") == "tcg"
    with pytest.raises(ValueError, match="auto, kvm or tcg"):
        accel.resolve_accel("hvf")


@pytest.mark.vm
def test_fix_and_stop_round_trip_as_ci_runs_it(tmp_path):
    """`.ci/run`'s sequence on a host that is already set up: --fix changes nothing it need not,
    records no daemon it did not start, and --stop then stops nothing."""
    state = tmp_path / "state"
    state.write_text("")  # what mktemp gives .ci/run
    fix = subprocess.run(
        [sys.executable, "-m", "harness", "doctor", "--fix", "--state-file", str(state)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if doctor.privilege_prefix() is None:
        pytest.skip("needs root or passwordless sudo")
    assert fix.returncode == 0, fix.stdout + fix.stderr
    assert "host ready" in fix.stdout and "libvirt: qemu:///system answers" in fix.stdout
    started = json.loads(state.read_text() or "{}").get("started", [])
    if started:
        # a fresh host: doctor really started the daemons; the rest of this session needs them, so
        # check they run and leave them (the stop path is covered by the test above)
        assert all(doctor._alive(e["pid"]) for e in started)
        return
    stop = subprocess.run(
        [sys.executable, "-m", "harness", "doctor", "--stop", "--state-file", str(state)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stdout
    assert "records nothing started" in stop.stdout


def test_ensure_local_libvirt_leaves_remote_uris_alone():
    from harness.vm.doctor import ensure_local_libvirt

    assert ensure_local_libvirt("qemu+ssh://nobody@host.invalid/system") is None


@pytest.mark.vm
def test_ensure_local_libvirt_does_nothing_when_libvirt_answers():
    from harness.vm.doctor import ensure_local_libvirt, libvirt_answers

    assert libvirt_answers("qemu:///system")
    assert ensure_local_libvirt("qemu:///system") is None

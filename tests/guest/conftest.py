"""Fixtures for the real libvirt/QEMU tests: libvirtd reachable, the tiny Linux guest built, and one
booted guest (plus its saved state) shared by the whole session, because a TCG boot costs ~10 s."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ -> `linux_guest` package

from linux_guest.builder import PROMPT_RE, ensure_test_guest  # noqa: E402
from linux_guest.session import linux_spec, prompt_again, wait_ready  # noqa: E402

from harness.vm.guest import Guest  # noqa: E402


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    """libvirtd must answer; start it (as root) like `fbsd-hil doctor --fix` would, else skip."""
    from harness.vm import doctor
    from harness.vm.libvirt_conn import LibvirtUnavailable, connect, default_uri
    from harness.vm.reaper import reap

    uri = default_uri()
    try:
        connect(uri).close()
        reap(uri)  # domains/overlays of an earlier run that was killed
        return uri
    except LibvirtUnavailable:
        pass
    report = doctor.Report()
    prefix = doctor.privilege_prefix()
    if prefix is not None:
        doctor.check_dev_kvm(report, True, prefix)
        doctor.check_daemons(report, True, prefix)
    try:
        connect(uri).close()
    except LibvirtUnavailable as exc:
        pytest.skip(f"libvirtd cannot be started here: {str(exc).splitlines()[0]}")
    return uri


@pytest.fixture(scope="session")
def linux_guest_files():
    return ensure_test_guest()


@pytest.fixture(scope="session")
def guest_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("guests")


@pytest.fixture(scope="session")
def booted_guest(libvirt_uri, linux_guest_files, guest_workdir):
    """One Linux guest booted to its shell, shared by the session (tests must leave it usable)."""
    spec = linux_spec(linux_guest_files, uri=libvirt_uri, shared_memory=True)
    with Guest(spec, guest_workdir) as guest:
        wait_ready(guest)
        yield guest


@pytest.fixture(scope="session")
def saved_ready(booted_guest, guest_workdir):
    """The booted guest's saved state: tests that break their guest restore a private one from it."""
    from harness.vm import savestate

    booted_guest.console.run("echo saved-state-marker > /tmp/marker", prompt=PROMPT_RE, deadline=30)
    saved = savestate.save(booted_guest, guest_workdir / "saved-ready")
    prompt_again(booted_guest)
    return saved


@pytest.fixture
def fresh_guest(saved_ready, guest_workdir):
    """A private guest restored from the saved ready state (seconds, not a boot)."""
    from harness.vm import savestate

    with savestate.restore(saved_ready, guest_workdir) as guest:
        prompt_again(guest)
        yield guest

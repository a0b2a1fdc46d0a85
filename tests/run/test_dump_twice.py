"""Dumping twice in one ddb session: the refusals before any dump (no guest needed). The mock kernel
(a stand-in, NOT FreeBSD) has ``do_minidump``; the LLDB fixture kernel (a real FreeBSD 14 kernel cut to
the 19 symbols its tests need) and a tiny ELF do not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.freebsd.panicdump import DumpFlow, FlowChoice
from harness.run.boot import Booted
from harness.run.config import ReproConfig, ReproError, ReproUnsupported
from harness.run.context import RunContext
from harness.run.dump_twice import check_can_dump_twice, minidump_switch_address

ROOT = Path(__file__).resolve().parents[2]
DDB = FlowChoice(DumpFlow.DDB, "nmi", why="the kernel has the ddb backend")


def _ctx(tmp_path: Path) -> RunContext:
    return RunContext(ReproConfig(dump_twice=True), tmp_path, lambda _m: None, step="dump flow")


def test_the_mock_kernel_has_the_switch(tmp_path):
    import importlib.util
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc (Debian package gcc) to build the mock kernel")
    path = ROOT / "tests" / "mock_freebsd_kernel" / "mock_freebsd_kernel.py"
    spec = importlib.util.spec_from_file_location("mock_freebsd_kernel_for_dump_twice", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kernel = mod.build_mock_freebsd_kernel()
    assert minidump_switch_address(kernel) is not None
    check_can_dump_twice(_ctx(tmp_path), Booted(guest=None, kernel=kernel), DDB)  # no error


def _tiny_kernel(tmp_path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests" / "images"))
    from images_tiny_kernel import build_tiny_kernel

    return build_tiny_kernel(tmp_path)


@pytest.mark.parametrize("which", ["lldb", "tiny"])
def test_a_kernel_without_do_minidump_stops_the_run_with_one_line(lldb_dir, tmp_path, which):
    kernel = lldb_dir / "kernel-amd64.elf" if which == "lldb" else _tiny_kernel(tmp_path)
    with pytest.raises(ReproUnsupported) as err:
        check_can_dump_twice(_ctx(tmp_path), Booted(guest=None, kernel=kernel), DDB)
    line = err.value.one_line()
    assert f"kernel {kernel} has no symbol do_minidump" in line and "\n" not in line
    assert line.startswith("dump flow: ") and f"(evidence: {tmp_path})" in line


def test_the_panic_flow_and_a_missing_kernel_file_are_refused(lldb_dir, tmp_path):
    panic = FlowChoice(DumpFlow.PANIC, "nmi", why="no ddb backend")
    kernel = lldb_dir / "kernel-amd64.elf"
    with pytest.raises(ReproUnsupported, match="needs ddb .* panic flow"):
        check_can_dump_twice(_ctx(tmp_path), Booted(guest=None, kernel=kernel), panic)
    with pytest.raises(ReproUnsupported, match="needs the kernel file"):
        no_kernel = Booted(guest=None, kernel=None, kernel_source="none: no SSH")
        check_can_dump_twice(_ctx(tmp_path), no_kernel, DDB)


@pytest.mark.parametrize("cfg", [dict(retrieve="ssh"), dict(minidump=False)])
def test_run_refuses_a_configuration_that_cannot_dump_twice(tmp_path, cfg):
    from harness.run import run_repro

    with pytest.raises(ReproError, match="needs minidumps on and --retrieve disk"):
        run_repro(ReproConfig(kernel=tmp_path / "k", dump_twice=True, artifacts=tmp_path / "a", **cfg))
    assert not (tmp_path / "a").exists(), "refused before anything was made"


def test_cli_refuses_dump_twice_with_a_full_dump(tmp_path):
    import subprocess

    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF")
    args = ["repro", "--kernel", str(kernel), "--dump-twice", "--minidump", "0"]
    r = subprocess.run(
        [sys.executable, "-m", "harness", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert r.returncode == 2 and "--dump-twice" in r.stderr and "--minidump 1" in r.stderr, r.stderr


def test_the_toggle_variant_follows_the_shell_unless_chosen(tmp_path):
    from harness.run.dump_twice import toggle_variant

    shell, bare = Booted(guest=None, shell=object()), Booted(guest=None)
    assert toggle_variant(_ctx(tmp_path), shell) == "sysctl"
    assert toggle_variant(_ctx(tmp_path), bare) == "ddb"
    ddb_way = RunContext(ReproConfig(dump_twice=True, dump_twice_via="ddb"), tmp_path, lambda _m: None)
    assert toggle_variant(ddb_way, shell) == "ddb"
    sysctl_way = RunContext(ReproConfig(dump_twice=True, dump_twice_via="sysctl"), tmp_path, lambda _m: None)
    with pytest.raises(ReproUnsupported, match="needs a shell on the guest"):
        toggle_variant(sysctl_way, bare)
    # the shell way needs no do_minidump symbol (every kernel has the sysctl debug.minidump), only ddb
    check_can_dump_twice(_ctx(tmp_path), Booted(guest=None, shell=object(), kernel=None), DDB)


def test_cli_refuses_the_sysctl_toggle_without_dump_twice(tmp_path):
    import subprocess

    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF")
    r = subprocess.run(
        [sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--dump-twice-via", "sysctl"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert r.returncode == 2 and "--dump-twice-via sysctl" in r.stderr and "needs --dump-twice" in r.stderr

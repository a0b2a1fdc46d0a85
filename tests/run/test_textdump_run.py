"""`repro --textdump`: the refusals before anything boots or dumps (no guest needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.freebsd.panicdump import DumpFlow, FlowChoice
from harness.run.boot import Booted
from harness.run.config import ReproConfig, ReproError, ReproUnsupported
from harness.run.context import RunContext
from harness.run.textdump import textdump_steps

ROOT = Path(__file__).resolve().parents[2]


def test_a_kernel_without_ddb_cannot_be_asked_for_a_textdump(tmp_path):
    ctx = RunContext(ReproConfig(textdump=True), tmp_path, lambda _m: None, step="dump flow")
    panic = FlowChoice(DumpFlow.PANIC, "nmi", why="the kernel has no ddb backend")
    with pytest.raises(ReproUnsupported) as err:
        textdump_steps(ctx, None, Booted(guest=None), panic, None)
    line = err.value.one_line()
    assert line.startswith("dump flow: --textdump is made in ddb") and "panic flow" in line
    assert "no ddb backend" in line and f"(evidence: {tmp_path})" in line


def test_run_refuses_a_textdump_with_dumping_twice(tmp_path):
    from harness.run import run_repro

    with pytest.raises(ReproError, match="textdump is made and checked on its own"):
        cfg = ReproConfig(kernel=tmp_path / "k", textdump=True, dump_twice=True, artifacts=tmp_path / "a")
        run_repro(cfg)
    assert not (tmp_path / "a").exists(), "refused before anything was made"


@pytest.mark.parametrize("extra", [["--dump-twice"], ["--flow", "panic"]])
def test_cli_refuses_textdump_with_options_it_cannot_go_with(tmp_path, extra):
    kernel = tmp_path / "kernel"
    kernel.write_bytes(b"\x7fELF")
    r = subprocess.run(
        [sys.executable, "-m", "harness", "repro", "--kernel", str(kernel), "--textdump", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert r.returncode == 2 and "--textdump" in r.stderr and r.stderr.count("\n") == 1, r.stderr

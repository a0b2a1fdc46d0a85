"""`fbsd-hil` as a user meets it: help for everything, --version, signals, a closed pipe."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import harness
from harness.cli.main import build_parser

ROOT = Path(harness.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout, not an installed copy


def _fbsd_hil(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=ENV, timeout=120, **kw
    )


def _walk(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from _walk(sub, f"{path} {name}")


def test_every_option_positional_and_subcommand_has_help():
    missing = []
    for where, item in _walk(build_parser(), "fbsd-hil"):
        if isinstance(item, argparse.Action):
            if isinstance(item, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (item.help or "").strip() or item.help == argparse.SUPPRESS:
                missing.append(f"{where}: {'/'.join(item.option_strings) or item.dest}")
        elif not (item or "").strip():
            missing.append(f"{where}: the subcommand itself")
    assert not missing, "arguments without a help line:\n" + "\n".join(missing)


def test_top_level_help_describes_the_tool_and_version_works():
    r = _fbsd_hil("--help")
    assert r.returncode == 0
    assert "crash dumps" in r.stdout and "argparse" not in r.stdout
    for command in ("doctor", "repro", "verify", "console", "images"):
        assert command in r.stdout
    v = _fbsd_hil("--version")
    assert v.returncode == 0 and v.stdout.startswith("fbsd-hil ")


FAKE_COMMAND = """
import argparse, pathlib, sys, tempfile, time

def register(sub):
    p = sub.add_parser("slow", help="a stand-in for a long run that owns a temporary directory")
    p.add_argument("state", help="where to say what happened")
    p.set_defaults(func=run)

def run(args):
    state = pathlib.Path(args.state)
    with tempfile.TemporaryDirectory() as tmp:
        (state / "tmpdir").write_text(tmp)
        try:
            (state / "started").write_text("yes")
            time.sleep(120)
        finally:
            (state / "cleaned").write_text("yes")
    return 0
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_and_sighup_clean_up_like_ctrl_c_without_a_traceback(tmp_path, sig):
    (tmp_path / "fake_slow_command.py").write_text(FAKE_COMMAND)
    state = tmp_path / "state"
    state.mkdir()
    script = textwrap.dedent("""
        import sys
        from harness.cli import main as cli
        cli.SUBCOMMAND_MODULES.append(("slow", "fake_slow_command"))
        raise SystemExit(cli.main(["slow", sys.argv[1]]))
    """)
    env = {**ENV, "PYTHONPATH": f"{ROOT}:{tmp_path}"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(state)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (state / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (state / "started").exists()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (state / "cleaned").exists()
    assert not Path((state / "tmpdir").read_text()).exists()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    name = "Ctrl-C" if sig == signal.SIGINT else sig.name
    assert err.strip() == f"fbsd-hil slow: interrupted ({name})"
    assert proc.returncode == 128 + sig


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`fbsd-hil images list --json | head -1`: the reader leaves early; no BrokenPipeError traceback.
    Here the reading end is closed before the command writes a byte, so every write hits it."""
    env = {**ENV, "FBSD_HIL_CACHE": str(tmp_path / "cache")}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "harness", "images", "list", "--json"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=120,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode == 128 + signal.SIGPIPE


def test_an_ignored_sighup_stays_ignored(tmp_path):
    """Under `nohup` SIGHUP is ignored on purpose: installing our handlers must not undo that."""
    script = textwrap.dedent("""
        import signal
        from harness.util.termination import install
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        restore = install()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        restore()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr

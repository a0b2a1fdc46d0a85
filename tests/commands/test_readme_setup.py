"""The README's set-up works on a stock Debian 12 and `.ci/run` does exactly what it says.

What a new user hit: `python3 -m pip install tox` fails on Debian 12 (PEP 668), `fbsd-hil` was never put
on PATH, and tox's `.venv` redirect file blocked `python3 -m venv .venv`. The fresh-machine run itself is
CI's job (`.ci/run`); here the README and `.ci/run` are held to each other.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _commands(block_text: str) -> list[str]:
    """The shell commands of every ```sh block, trailing comments removed."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", block_text, re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command:
                out.append(command)
    return out


def test_readme_setup_never_pip_installs_into_the_system_python():
    setup = _commands(_section("The two commands"))
    assert not any(re.search(r"python3 -m pip install|^pip3? install|sudo pip", c) for c in setup), setup
    assert any(c.startswith("python3 -m venv ") for c in setup)
    assert any("PATH=" in c for c in setup), "the README must put fbsd-hil/fbsd-vmcore on PATH"


def test_ci_runs_the_readme_setup_and_test_command_word_for_word():
    setup = _commands(_section("The two commands"))
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert setup[-2:] == ["tox -e hil", "tox"]
    for command in setup[:-2]:  # the set-up steps
        assert command in ci_lines or command.replace("apt-get update && ", "") in ci_lines, command
    assert "apt-get update" in ci_lines
    assert any(re.fullmatch(r"tox(\s*\|\|.*)?", line) for line in ci_lines), "CI must run plain `tox`"
    assert subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")]).returncode == 0


def test_tox_leaves_no_venv_redirect_file_in_the_checkout():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "tox.ini")
    assert cfg.getboolean("tox", "venv_redirect") is False

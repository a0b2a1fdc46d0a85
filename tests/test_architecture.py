"""The layers of the code base, checked on every test run (standard library `ast` only).

Two rules, both from docs/architecture.md:

1. no import cycles between modules of `harness`, `images` and `reader` (every import counts: top
   level, inside functions and under ``TYPE_CHECKING``);
2. a module imports only from its own layer and the layers `LAYERS` allows it: the run orchestrates,
   `harness.verify` only judges, the VM plumbing knows nothing about FreeBSD, the reader stands alone.

`LAYERS` is the one table of allowed directions; docs/architecture.md shows the same table, and a test
here keeps the two equal.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "images", "reader")

#: layer -> the other layers its modules may import (a layer may always import itself). A module
#: belongs to the layer with the longest name that prefixes its own.
LAYERS: dict[str, frozenset[str]] = {
    "reader": frozenset(),
    "harness.util": frozenset(),
    "harness.vm": frozenset({"harness.util"}),
    "harness.freebsd": frozenset({"harness.vm", "harness.util", "reader"}),
    "harness.verify": frozenset({"harness.util", "reader"}),
    "images": frozenset({"harness.freebsd", "harness.vm", "harness.util"}),
    "harness.run": frozenset(
        {"harness.verify", "harness.freebsd", "images", "harness.vm", "harness.util", "reader"}
    ),
    "harness.cli": frozenset(
        {"harness.run", "harness.verify", "harness.freebsd", "images", "harness.vm", "harness.util", "reader"}
    ),
    "harness.pytest_plugin": frozenset(
        {"harness.run", "harness.verify", "harness.freebsd", "images", "harness.vm", "harness.util", "reader"}
    ),
    "harness": frozenset({"harness.cli"}),  # harness/__init__.py, harness/__main__.py
}



# ------------------------------------------------------------------------------------------ the graph
def module_files(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file of `packages` under `root`."""
    out: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: Mapping[str, Path]) -> str | None:
    """The module `name` refers to: itself, or its longest prefix that is one of ours."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: Mapping[str, Path]) -> set[str]:
    """Our modules that `module` imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one, else a name of pkg
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        else:
            continue
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[frozenset[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(frozenset(component))
    return out


def layer_of(module: str, layers: Mapping[str, frozenset[str]] = LAYERS) -> str | None:
    best = None
    for layer in layers:
        if (module == layer or module.startswith(layer + ".")) and (best is None or len(layer) > len(best)):
            best = layer
    return best


def violations(graph: Mapping[str, set[str]], layers: Mapping[str, frozenset[str]] = LAYERS) -> list[str]:
    """One line per import against the allowed direction (or from a module no layer claims)."""
    out = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module, layers)
        if mine is None:
            out.append(f"{module}: belongs to no layer (add it to LAYERS and docs/architecture.md)")
            continue
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if theirs != mine and theirs not in layers[mine]:
                out.append(f"{module} ({mine}) imports {target} ({theirs}): not allowed from {mine}")
    return out


# ------------------------------------------------------------------------------------------ the tests
def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_imports_follow_the_layers():
    bad = violations(import_graph())
    assert not bad, "\n".join(bad)


def test_every_package_is_claimed_by_a_layer():
    packages = {name for name, path in module_files().items() if path.name == "__init__.py"}
    unclaimed = sorted(p for p in packages if layer_of(p) is None)
    assert not unclaimed, unclaimed


def test_docs_show_the_same_layer_table():
    """docs/architecture.md's table ``| layer | may import |`` (its section "Who may import whom") lists
    exactly `LAYERS`."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    documented: dict[str, frozenset[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([\w.]+)`\s*\|\s*([^|]*)\|", line)
        if m:
            documented[m.group(1)] = frozenset(re.findall(r"`([\w.]+)`", m.group(2)))
    assert documented == dict(LAYERS)


# ------------------------------------------------------------------- the checker catches what it should
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, ("pkg",))


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    graph = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import thing\n",
            "pkg/b.py": "def f():\n    from . import c\n",
            "pkg/c.py": "import pkg.a\n",
            "pkg/d.py": "from pkg import a\n",
        },
    )
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "from pkg.high import x\n",
            ["pkg.low.m (pkg.low) imports pkg.high (pkg.high): not allowed from pkg.low"],
        ),
        ("import pkg.low.n\n", []),
    ],
)
def test_checker_refuses_an_import_against_the_direction(tmp_path, source, expected):
    graph = _tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/high.py": "from pkg.low import m\n",
            "pkg/low/__init__.py": "",
            "pkg/low/m.py": source,
            "pkg/low/n.py": "",
        },
    )
    layers = {"pkg": frozenset(), "pkg.high": frozenset({"pkg.low"}), "pkg.low": frozenset()}
    assert violations(graph, layers) == expected

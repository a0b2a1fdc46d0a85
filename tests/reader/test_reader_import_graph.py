"""reader/ has no import cycles: every `import` (top level, in functions, under TYPE_CHECKING) counts.

The container layer runs one way (rawfile <- compression/ekcd <- device <- textdump/source) and
`Vmcore` uses info/msgbuf/threads/unwind/ps, never the other way round (issue 8 item 2).
"""

from __future__ import annotations

import ast
from pathlib import Path

READER = Path(__file__).resolve().parents[2] / "reader"


def _module_name(path: Path) -> str:
    rel = path.relative_to(READER.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in READER.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` depends on the module; `from mod import name` on mod
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            for t in targets:
                if t in modules and t != mod:
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_reader_has_no_import_cycle():
    graph = import_graph()
    assert "reader.vmcore" in graph and "reader.device" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_vmcore_is_above_its_helpers():
    graph = import_graph()
    for helper in ("reader.info", "reader.msgbuf", "reader.threads"):
        assert "reader.vmcore" not in graph[helper], helper


def test_the_container_layer_runs_one_way():
    """rawfile <- compression <- ekcd <- device <- textdump, source: no module imports a higher one."""
    order = ["reader.rawfile", "reader.compression", "reader.ekcd", "reader.device", "reader.textdump",
             "reader.source"]
    graph = import_graph()
    for i, mod in enumerate(order):
        higher = set(order[i + 1 :])
        assert not graph[mod] & higher, (mod, graph[mod] & higher)
    assert not graph["reader.textdump"] & {"reader.source"}

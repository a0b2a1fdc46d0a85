"""reader/'s own direction inside its layer: the container layer runs one way (rawfile <- compression/ekcd
<- device <- textdump/source) and `Vmcore` uses info/msgbuf/threads/unwind/ps, never the other way round
(issue 8 item 2). Cycles and the layers between packages are tests/test_architecture.py's, whose import
graph (every `import`: top level, in functions, under TYPE_CHECKING) this reuses.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_architecture import import_graph as _package_graph  # noqa: E402 - tests/ is not a package


def import_graph() -> dict[str, set[str]]:
    return _package_graph(packages=("reader",))


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

"""The shape of the package, kept by tests: no import cycle, no hidden one.

Imports inside functions count as edges too (they are how cycles used to be
hidden), and so do imports under ``TYPE_CHECKING``: a type-only cycle still
means two modules know each other's insides.  Lazy imports of optional extras
(the embedded server, the demo, the web dashboard, the admin client from the
package root) are allowed, but they must not close a cycle either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import forkq

PACKAGE = Path(forkq.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
                if node.module is None:
                    # ``from . import job`` imports submodules by name.
                    out.update(f"{base}.{a.name}" for a in node.names)
                else:
                    out.add(target)
            elif node.module and node.module.startswith("forkq"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("forkq"))
    return out


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path, name):
            # ``from .x import y`` where y is a function: the module is x.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and target != "forkq":
                deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle_even_counting_imports_inside_functions() -> None:
    graph = import_graph()
    assert "forkq.registry" in graph and "forkq.fetcher" in graph  # the walk saw the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    # The check above must be able to fail.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_leaf_modules_import_nothing_above_them() -> None:
    graph = import_graph()
    assert graph["forkq.spec"] <= {"forkq.errors", "forkq.job", "forkq.keys", "forkq.config"}
    assert graph["forkq.cron"] <= {"forkq.errors"}
    assert graph["forkq.keys"] <= {"forkq.errors"}
    assert graph["forkq.job"] <= {"forkq.errors", "forkq.keys", "forkq.clock"}
    assert graph["forkq.clock"] == set()  # Redis's time: every module may read it


def test_only_the_job_codec_parses_job_json() -> None:
    """``orjson.loads`` of a payload happens in forkq/job.py; other modules use its helpers.

    Modules that parse their own records (the master's report pipe, heartbeat
    entries, the CLI's JSON argument) are listed with the reason.
    """
    allowed = {
        "messages.py",    # the child -> master report pipe (not job JSON)
        "recovery.py",    # the recovery helper's result lines
        "client.py",      # heartbeat/observation records and the :work snapshot
        "admin_cli.py",   # the JSON arguments typed on the command line
        "job.py",
        "heartbeat.py",   # Sidekiq's signal list and info records
        "demo.py",
        "results.py",     # the result records it writes (state/result/error, not job JSON)
    }
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name in allowed or "web" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        if "orjson.loads" in text or "cjson.decode" in text or '"recovered":' in text:
            offenders.append(path.name)
    assert offenders == []


def test_child_master_messages_round_trip_and_bad_lines_are_ignored() -> None:
    from forkq import messages as m

    for msg in (m.Status(busy=3, conc=4, done=10, ok=False, quiet=True), m.Ready(identity="h:1:x"),
                m.HardTimeout(jobs=("a 1", "b 2")), m.Recycle(why="40 jobs"), m.Starting()):
        assert m.decode(m.encode(msg)) == msg
    assert m.decode(b'{"t": "s", "busy": "3"}') is None        # wrong type
    assert m.decode(b'{"t": "nope"}') is None                  # unknown kind
    assert m.decode(b"\xff garbage") is None
    reader = m.LineReader()
    line = m.encode(m.Ready(identity="x"))
    assert reader.feed(line[:5]) == []
    assert reader.feed(line[5:] + b"junk\n") == [m.Ready(identity="x")]

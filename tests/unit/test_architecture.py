"""The folder list is the architecture, and imports run one way:

    rules  <-  streams (worker path)  <-  contact  <-  {cases, alerts}
           <-  {streams.api, streams.tools}  <-  streams.cli
    (feeds and streams.local stand on the worker path beside contact)

* ``rules/`` is the pure core: it imports nothing of ours but itself.
* ``streams/`` (its top-level modules and ``streams.storage``) is the worker path: rules
  and itself only; no case desk, no HTTP, no tool, no embedded server, no command line.
* ``cases/`` is the case desk: the worker path below it, nothing above it.
* ``feeds/`` turns banks' formats (camt, CDC) into events: the rules' event models and
  the worker path's surface (settings, topics, clients, dead letters) below it.
* ``contact/`` is consent, complaints and routes at delivery: the rules and the worker path
  below it (the live tiers), nothing above it; ``alerts``, ``cases``, the API, the tools and the
  command line stand on it.
* ``alerts/`` uses ``contact/`` and the small public surface of the worker path listed in
  ``ALERTS_SURFACE`` (settings, topics, errors, clients, retry, keys, metrics, the
  dead-letter format), never its internals.
* ``streams.api`` stands on the worker path and the case desk; ``streams.local`` on the
  worker path; ``streams.tools`` also on ``streams.local`` (a tool may start the embedded
  servers) and on the case desk (precision from outcomes).
* ``streams.cli`` wires everything together, and nothing imports it.

Every import counts, function-level ones included (an AST walk, not an import hook), and
so do imports under ``if TYPE_CHECKING:``. No module imports itself back through others:
the graph of our modules has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rules", "streams", "alerts", "cases", "feeds", "contact")
SUBPACKAGES = ("streams.api", "streams.cli", "streams.local", "streams.tools")
WORKER_SUBPACKAGES = ("streams.storage",)  # parts of the worker path, grouped for the reader
ALERTS_SURFACE = {
    "streams",
    "streams.settings",
    "streams.topics",
    "streams.errors",
    "streams.clients",
    "streams.retry",
    "streams.storage.keys",
    "streams.telemetry",
    "streams.deadletter",
}


def layer(module: str) -> str:
    for sub in SUBPACKAGES:
        if module == sub or module.startswith(sub + "."):
            return sub
    return module.split(".")[0]


ALLOWED = {
    "rules": {"rules"},
    "streams": {"rules", "streams"},
    "alerts": {"alerts", "contact"},  # plus ALERTS_SURFACE
    "contact": {"rules", "streams", "contact"},
    "cases": {"rules", "streams", "contact", "cases"},
    "feeds": {"rules", "streams", "feeds"},
    "streams.api": {"rules", "streams", "cases", "contact", "streams.api"},
    "streams.local": {"streams", "streams.local"},
    "streams.tools": {"rules", "streams", "cases", "contact", "streams.local", "streams.tools"},
    "streams.cli": {
        "rules", "streams", "cases", "contact", "alerts", "feeds", "streams.api", "streams.local", "streams.tools",
        "streams.cli",
    },
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:  # ``from streams import telemetry`` imports streams.telemetry
                candidate = f"{node.module}.{alias.name}"
                if (ROOT / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    ROOT / candidate.replace(".", "/")
                ).is_dir():
                    found.add(candidate)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def violations() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = module_name(path)
            mine = layer(importer)
            for imported in sorted(our_imports(path)):
                theirs = layer(imported)
                if mine == "alerts" and theirs not in ALLOWED["alerts"]:
                    if imported not in ALERTS_SURFACE:
                        found.append(f"{importer} -> {imported} (alerts/ uses only the public surface)")
                elif theirs not in ALLOWED[mine]:
                    found.append(f"{importer} -> {imported} ({mine} may not import {theirs})")
    return found


def test_imports_run_one_way() -> None:
    assert violations() == []


def test_the_check_catches_a_wrong_way_import(tmp_path: Path) -> None:
    """The walk sees function-level imports and ``from package import module`` forms."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from streams import cli\n    import streams.tools.bench\n")
    assert {"streams.cli", "streams.tools.bench"} <= our_imports(probe)
    assert layer("streams.cli.main") == "streams.cli" and "streams.cli" not in ALLOWED["streams"]
    assert layer("streams.pipeline") == "streams" and "streams.api" not in ALLOWED["streams.tools"]


def test_every_package_is_a_known_layer() -> None:
    for path in (ROOT / "streams").iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            name = f"streams.{path.name}"
            assert name in SUBPACKAGES + WORKER_SUBPACKAGES, f"new package streams/{path.name}: give it a layer here"


MAX_WORKER_MODULES = 18


def test_the_worker_path_fits_in_a_glance() -> None:
    """``streams/`` holds the worker path and nothing else; past this many modules in one
    folder a newcomer stops reading it: group them (as ``streams/storage`` does)."""
    modules = [path.name for path in (ROOT / "streams").glob("*.py") if path.name != "__init__.py"]
    assert len(modules) <= MAX_WORKER_MODULES, sorted(modules)


def module_graph() -> dict[str, set[str]]:
    """Our modules and the modules of ours each imports (a package import counts as its
    ``__init__``, which is where such an import lands)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            graph[module_name(path)] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = module_name(path)
            graph[importer] = {name for name in our_imports(path) if name in graph and name != importer}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    """Counting imports under ``TYPE_CHECKING`` and inside functions: a cycle means two
    modules that can only be understood together."""
    assert cycles(module_graph()) == []


def test_the_cycle_check_catches_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

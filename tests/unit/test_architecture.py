"""The folder list is the architecture, and imports run one way:

    rules  <-  streams (worker path)  <-  {streams.api, alerts, streams.tools, streams.local}  <-  streams.cli

* ``rules/`` is the pure core: it imports nothing of ours but itself.
* ``streams/`` (its top-level modules) is the worker path: rules and itself only; no
  HTTP, no tool, no embedded server, no command line.
* ``alerts/`` uses the small public surface of the worker path listed in
  ``ALERTS_SURFACE`` (settings, topics, errors, clients, retry, keys, metrics, the
  dead-letter format), never its internals.
* ``streams.api`` and ``streams.local`` stand on the worker path; ``streams.tools``
  also on ``streams.local`` (a tool may start the embedded servers).
* ``streams.cli`` wires everything together, and nothing imports it.

Every import counts, function-level ones included (an AST walk, not an import hook).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rules", "streams", "alerts")
SUBPACKAGES = ("streams.api", "streams.cli", "streams.local", "streams.tools")
ALERTS_SURFACE = {
    "streams",
    "streams.settings",
    "streams.topics",
    "streams.errors",
    "streams.clients",
    "streams.retry",
    "streams.keys",
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
    "alerts": {"alerts"},  # plus ALERTS_SURFACE
    "streams.api": {"rules", "streams", "streams.api"},
    "streams.local": {"streams", "streams.local"},
    "streams.tools": {"rules", "streams", "streams.local", "streams.tools"},
    "streams.cli": {"rules", "streams", "streams.api", "streams.local", "streams.tools", "streams.cli", "alerts"},
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
                if mine == "alerts" and theirs != "alerts":
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
            assert f"streams.{path.name}" in SUBPACKAGES, f"new package streams/{path.name}: give it a layer here"

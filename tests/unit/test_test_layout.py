"""The folder is the test layer: every test module sits in ``tests/unit``, ``tests/pipeline``,
``tests/connected`` or ``tests/browser``; what tests share lives in ``tests/support`` (helpers) or
a layer's ``conftest.py`` (fixtures), so no test module imports another one."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
LAYERS = ("unit", "pipeline", "connected", "browser")
ALLOWED_OUTSIDE = {"__init__.py", "conftest.py"}  # in tests/ itself; tests/support/ holds the rest


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, anywhere in it (function bodies
    too), relative imports resolved."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # ``from tests.unit import test_x``
    return found


def package_of(path: Path) -> str:
    return ".".join(path.relative_to(TESTS.parent).parts[:-1])


def is_test_module(module: str) -> bool:
    return module.startswith("tests.") and module.rsplit(".", 1)[-1].startswith("test_")


def test_no_test_module_imports_another() -> None:
    offenders = {
        str(path.relative_to(TESTS.parent)): sorted(
            filter(is_test_module, imported_modules(path.read_text(encoding="utf-8"), package_of(path)))
        )
        for path in sorted(TESTS.rglob("*.py"))
    }
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert offenders == {}, "share through tests/support/ or a layer's conftest.py, not through a test module"


def test_every_test_file_sits_in_a_layer_folder() -> None:
    misplaced = []
    for path in sorted(TESTS.rglob("*.py")):
        parts = path.relative_to(TESTS).parts
        if parts[0] == "support":
            if path.name.startswith("test_"):
                misplaced.append(str(path))  # pytest would collect it: helpers only there
        elif len(parts) == 1:
            if path.name not in ALLOWED_OUTSIDE:
                misplaced.append(str(path))
        elif parts[0] not in LAYERS:
            misplaced.append(str(path))
    assert misplaced == [], f"test files go in tests/{{{','.join(LAYERS)}}}/, helpers in tests/support/"


def test_every_layer_has_its_conftest() -> None:
    assert [layer for layer in LAYERS if not (TESTS / layer / "conftest.py").is_file()] == []


def test_the_import_check_sees_every_way_to_import_a_test_module() -> None:
    source = (
        "import tests.pipeline.test_api\n"
        "from tests.unit import test_tune\n"
        "from .test_evaluate import txn\n"
        "def f():\n    from tests.connected.test_cli import fundflow\n"
        "from tests.support.api import seed\n"
        "from . import conftest\n"
    )
    found = {m for m in imported_modules(source, "tests.unit") if is_test_module(m)}
    assert found == {
        "tests.pipeline.test_api",
        "tests.unit.test_tune",
        "tests.unit.test_evaluate",
        "tests.connected.test_cli",
    }

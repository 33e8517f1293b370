"""docs/events.md and docs/metrics.md are the contracts: everything the code defines
on the wire or as a metric is documented there, and the documented metric fields are
the ones the code computes. The README's package table names the modules there are."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

from rules.events import LoanEvent, TransactionEvent
from rules.metrics import evaluate, present
from rules.state import CustomerState, StateConfig, apply_transaction
from streams import telemetry, topics

DOCS = Path(__file__).resolve().parents[2] / "docs"
EVENTS = (DOCS / "events.md").read_text(encoding="utf-8")
METRICS = (DOCS / "metrics.md").read_text(encoding="utf-8")
ZONE = ZoneInfo("Asia/Shanghai")


def first_column(text: str) -> set[str]:
    """The names in the first column of every table (``a, b`` is two names)."""
    return {w.strip(" `") for row in re.findall(r"^\|([^|]+)\|", text, flags=re.MULTILINE) for w in row.split(",")}


def documented_words(text: str) -> set[str]:
    """Every `code` span and every name in a table's first column."""
    return set(re.findall(r"`([^`]+)`", text)) | first_column(text)


def topic_names() -> list[str]:
    return sorted(v for k, v in vars(topics).items() if k.isupper() and isinstance(v, str))


def test_every_topic_is_in_events_md() -> None:
    names = topic_names()
    assert len(names) == 8
    assert [t for t in names if f"`{t}`" not in EVENTS] == []


@pytest.mark.parametrize("model", [TransactionEvent, LoanEvent])
def test_every_event_field_is_in_events_md(model: type[TransactionEvent] | type[LoanEvent]) -> None:
    section = EVENTS.split(f"## {model.__name__}", 1)[1].split("\n## ", 1)[0]
    assert [name for name in model.model_fields if name not in documented_words(section)] == []


def a_customer() -> CustomerState:
    state = CustomerState("c1")
    config = StateConfig(zone=ZONE)
    start = dt.datetime(2024, 3, 1, 9, tzinfo=ZONE)
    for n, (direction, kind, external) in enumerate(
        [("credit", "salary", False), ("debit", "transfer_out", True), ("debit", "fee", False)]
    ):
        event = TransactionEvent.model_validate(
            {
                "txn_id": f"t{n}",
                "customer_id": "c1",
                "account_id": "a1",
                "ts": (start + dt.timedelta(days=n)).isoformat(),
                "direction": direction,
                "amount": "100.00",
                "kind": kind,
                "external": external,
                "counterparty_bank": "B1" if external else None,
                "balance_after": "0",
            }
        )
        apply_transaction(state, event, config)
    return state


def test_every_customer_metric_the_code_computes_is_in_metrics_md_and_back() -> None:
    state = a_customer()
    assert state.last_us is not None
    metrics = present(evaluate(state, state.last_us, StateConfig(zone=ZONE)))
    documented = documented_words(METRICS)
    assert [name for name in metrics if name not in documented] == []
    # ... and every field the Balances, Flows and Retention tables define is computed
    tables = METRICS.split("## Balances", 1)[1].split("## Segments", 1)[0]
    fields = {w for w in first_column(tables) if re.fullmatch(r"[a-z][a-z0-9_]+", w) and w != "field"}
    assert len(fields) > 20 and sorted(fields - set(metrics)) == []
    assert isinstance(metrics["balance"], str) and Decimal(metrics["balance"]) == Decimal("-100.00")


def exported_names() -> list[str]:
    names = []
    for value in vars(telemetry).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name  # prometheus_client strips a counter's _total; it exports it with it
            names.append(f"{name}_total" if isinstance(value, Counter) else name)
    return sorted(names)


def test_every_prometheus_metric_is_in_metrics_md() -> None:
    names = exported_names()
    assert len(names) > 20
    assert [name for name in names if f"`{name}`" not in METRICS] == []


def test_nothing_refers_to_files_outside_the_checkout() -> None:
    root = DOCS.parent
    outside = ("../" + "shared", '/ "' + 'shared"')  # a path, or one built with pathlib
    sources = [*root.glob("streams/**/*.py"), *root.glob("rules/*.py"), *root.glob("alerts/*.py")]
    sources += [*root.glob("cases/*.py"), *root.glob("feeds/*.py")]
    sources += [*root.glob("tests/**/*.py"), *root.glob("docs/*.md"), root / "Makefile", root / "pyproject.toml"]
    assert [str(p) for p in sources if any(o in p.read_text(encoding="utf-8") for o in outside)] == []


ROOT = DOCS.parent
CODE_PACKAGES = ("rules", "streams", "alerts", "cases", "feeds")  # tests/unit/test_architecture.py's PACKAGES


def package_table(readme: str) -> dict[str, set[str]]:
    """The README's package table (under "## Architecture", header ``| package | role | modules |``):
    each row's folder, its first cell written as a backticked path with a trailing slash
    (`` `streams/storage/` `` -> ``streams/storage``), and the modules the row names: every
    backticked span that is exactly a file name ``name.py``. A span with a slash in it
    (`` `streams/app.py` ``, `` `deploy/rules.yaml` ``) is a reference, not an entry, so a row
    can point elsewhere without listing it."""
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    table = section.split("| package | role | modules |\n", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in table.splitlines():
        row = re.fullmatch(r"\| `([\w/]+)/` \|(.*)\|", line.strip())
        if row:
            rows[row.group(1)] = set(re.findall(r"`(\w+\.py)`", row.group(2)))
    return rows


def code_packages(root: Path) -> dict[str, set[str]]:
    """Every package of our code (a folder with ``__init__.py`` under ``CODE_PACKAGES``) and its
    modules: the ``*.py`` files directly in it, ``__init__.py`` excepted (a subpackage is its
    own row)."""
    found: dict[str, set[str]] = {}
    for top in CODE_PACKAGES:
        for init in sorted((root / top).rglob("__init__.py")):
            modules = {path.name for path in init.parent.glob("*.py") if path.name != "__init__.py"}
            found[init.parent.relative_to(root).as_posix()] = modules
    return found


def table_mismatches(rows: dict[str, set[str]], packages: dict[str, set[str]]) -> list[str]:
    """Every package without a row, every module its row leaves out, and every module a row of
    our code names that is not there. Rows for other folders (``tests/``, by layer) are not held
    to modules."""
    found = [f"{folder}/: no row" for folder in sorted(set(packages) - set(rows))]
    for folder, named in sorted(rows.items()):
        if folder.split("/")[0] not in CODE_PACKAGES:
            continue
        there = packages.get(folder, set())
        found += [f"{folder}/{name}: not in the table" for name in sorted(there - named)]
        found += [f"{folder}/{name}: in the table, not in the folder" for name in sorted(named - there)]
    return found


def test_the_readme_package_table_names_every_module_and_no_other() -> None:
    rows = package_table((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {"rules", "streams", "streams/storage", "cases", "feeds", "tests"} <= set(rows)
    assert table_mismatches(rows, code_packages(ROOT)) == []


def test_the_package_table_check_catches_a_missing_and_a_stale_module() -> None:
    readme = (
        "# FundFlow\n\n## Architecture\n\n| package | role | modules |\n| --- | --- | --- |\n"
        "| `rules/` | core | `state.py` (see `streams/app.py`), `gone.py` |\n"
        "| `tests/` | by layer | `conftest.py` |\n\n## Next\n"
    )
    rows = package_table(readme)
    assert rows == {"rules": {"state.py", "gone.py"}, "tests": {"conftest.py"}}
    packages = {"rules": {"state.py", "money.py"}, "feeds": {"camt.py"}}
    assert table_mismatches(rows, packages) == [
        "feeds/: no row",
        "rules/money.py: not in the table",
        "rules/gone.py: in the table, not in the folder",
    ]


def test_every_figure_a_comment_points_to_is_in_performance_md() -> None:
    """Numbers live in docs, reasons in code: a comment names the section that holds its
    figure as ``docs/performance.md, "Section"`` (across comment lines too), and that section
    must be a heading there."""
    headings = set(re.findall(r"^#{2,3} (.+?)\s*$", (DOCS / "performance.md").read_text(encoding="utf-8"), re.M))
    named: set[tuple[str, str]] = set()
    for top in CODE_PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            flat = re.sub(r"\n\s*(?:#\s*)?", " ", path.read_text(encoding="utf-8"))
            named |= {(path.name, m) for m in re.findall(r'performance\.md, "([^"]+)"', flat)}
    assert len(named) > 10
    assert sorted((file, name) for file, name in named if name not in headings) == []

"""docs/events.md and docs/metrics.md are the contracts: everything the code defines
on the wire or as a metric is documented there, and the documented metric fields are
the ones the code computes."""

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
    assert len(names) == 6
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
    sources += [*root.glob("tests/**/*.py"), *root.glob("docs/*.md"), root / "Makefile", root / "pyproject.toml"]
    assert [str(p) for p in sources if any(o in p.read_text(encoding="utf-8") for o in outside)] == []

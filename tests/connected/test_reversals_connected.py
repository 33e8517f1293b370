"""Reversals (冲正), own-account transfers and bad corrections end to end: TransactionEvents
into Kafka, a real ``fundflow worker``, Redis, the finding topics and the DLQ
(docs/events.md, "Reversals", "Retractions").

One run carries every customer's history twice: as it happened (``R*``: a large credit,
its reversal, a second reversal of it...) and, under ``N-`` customer ids, the equivalent
history in which the reversed transaction never happened. Each pair's flows and balance
must agree; the retractions must be exactly those the pure rules give for the history
(same ids); the bad corrections and the foreign-currency event are dead letters, and the
stream goes on past them; the 看板 agrees with a recomputation from the states."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import urllib.request
from decimal import Decimal
from typing import Any

import orjson
import pytest

from rules.events import LoanEvent, TransactionEvent
from rules.state import CustomerState
from streams.local.orchestra import read_topic
from streams.rulestep import build_step
from streams.topics import ALERTS, DLQ, HISTORY, MARKETING, RECOMMENDATIONS
from tests.support.processes import fundflow
from tests.support.scenario import Scenario

pytestmark = [pytest.mark.connected, pytest.mark.slow]

ZONE = dt.timezone(dt.timedelta(hours=8))
DAY0 = dt.datetime(2024, 3, 1, 10, 0, tzinfo=ZONE)
AS_OF = "2024-03-20T18:00:00+08:00"  # after every event
# (the metrics a reversal leaves as if the transaction never happened: docs/events.md, metrics.md;
# 日均余额 and volatility keep the days the money sat, so they are not compared)
FLOW_FIELDS = [
    "balance", "inflow_24h", "inflow_7d", "inflow_30d", "inflow_90d", "outflow_24h", "outflow_7d", "outflow_30d",
    "external_outflow_30d", "external_outflow_share_30d", "txn_count_30d", "avg_txn_per_day_30d",
    "loan_repaid_30d", "external_banks_90d", "net_outflow_streak_days", "segments",
]  # fmt: skip


def txn(customer: str, n: str, at: dt.datetime, direction: str, amount: str, **extra: object) -> dict[str, Any]:
    return {"txn_id": f"{customer}-{n}", "customer_id": customer, "account_id": f"A-{customer}",
            "ts": at.isoformat(), "direction": direction, "amount": amount, **extra}  # fmt: skip


def reversal(original: dict[str, Any], n: str, at: dt.datetime, **changes: object) -> dict[str, Any]:
    back = "debit" if original["direction"] == "credit" else "credit"
    event = txn(original["customer_id"], n, at, back, original["amount"], reverses=original["txn_id"])
    if "counterparty_customer_id" in original:
        event["counterparty_customer_id"] = original["counterparty_customer_id"]
    event.update(changes)
    return event


def history(c: str, *, reversed_: bool) -> list[dict[str, Any]]:
    """Customer ``c``'s history; ``reversed_=False``: the equivalent history, the large credit
    and its reversals left out."""
    events: list[dict[str, Any]] = []
    for i in range(7):  # money that leaves the same day: a customer the collection rule watches
        day = DAY0 + dt.timedelta(days=i)
        events += [txn(c, f"c{i}", day, "credit", "5000.00"), txn(c, f"d{i}", day.replace(hour=12), "debit", "5000.00")]
    big = txn(c, "big", DAY0 + dt.timedelta(days=8), "credit", "900000.00", kind="transfer_in")
    if reversed_:
        events.append(big)
        events.append(reversal(big, "rev", DAY0 + dt.timedelta(days=8, hours=1)))
        events.append(reversal(big, "rev2", DAY0 + dt.timedelta(days=8, hours=2)))  # a second one: a duplicate
    events.append(txn(c, "after", DAY0 + dt.timedelta(days=10), "credit", "700.00"))
    # an own-account transfer pair: both legs the customer's, neither inflow nor outflow
    own = {"counterparty_customer_id": c}
    at = DAY0 + dt.timedelta(days=11)
    events.append(txn(c, "own-out", at, "debit", "300.00", **own))
    events.append({**txn(c, "own-in", at, "credit", "300.00", **own), "account_id": f"B-{c}"})
    return events


def workload() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every record in production order, and the dead letters it must give (txn_id -> reason)."""
    events = history("R1", reversed_=True) + history("N-R1", reversed_=False)
    small = txn("R2", "small", DAY0, "credit", "200.00")
    bad = [
        txn("R2", "ghost", DAY0 + dt.timedelta(days=1), "debit", "50.00", reverses="R2-never-booked"),
        reversal(small, "short", DAY0 + dt.timedelta(days=1, hours=1), amount="150.00"),
        txn("R3", "usd", DAY0 + dt.timedelta(days=2), "credit", "1000.00", currency="USD"),
    ]
    expected = {
        "R2-ghost": "unknown_reversed_txn",
        "R2-short": "reversal_mismatch",
        "R3-usd": "currency_mismatch",
    }
    # after the bad records the same customers go on: nothing stops
    later = [txn("R2", "later", DAY0 + dt.timedelta(days=3), "credit", "80.00"),
             txn("R3", "cny", DAY0 + dt.timedelta(days=3), "credit", "1000.00", currency="CNY")]  # fmt: skip
    return [*events, small, *bad, *later], expected


def pure_findings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the worker's own step finds in these events, applied in order in this process."""
    from streams.settings import Settings

    step = build_step(Settings())
    states: dict[str, CustomerState] = {}
    found: list[dict[str, Any]] = []
    for obj in events:
        if obj.get("currency", "CNY") != "CNY":
            continue
        event = (LoanEvent if "loan_id" in obj else TransactionEvent).model_validate(obj)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        _, entries = step(state, event)
        for entry in entries:
            topic, _, value = entry.split(b"\n", 2)
            found.append({**orjson.loads(value), "_topic": topic.decode()})
    return found


def duplicates_counted(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith('fundflow_events_total{outcome="duplicate"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def reversed_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The workload through a real worker: what the topics, ``fundflow snapshot``, ``fundflow
    board`` and the worker's metrics say once it has processed every record."""
    tmp_path = tmp_path_factory.mktemp("reversals")
    events, expected_dead = workload()
    lines = [orjson.dumps(e) for e in events]
    (tmp_path / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    with Scenario(tmp_path) as scenario:
        run = scenario.run
        run.start_worker()
        asyncio.run(scenario.produce(lines))
        asyncio.run(run.wait_caught_up(len(lines), timeout=90))
        run.check_workers()
        assert run.workers[0].poll() is None, "the worker stopped"

        async def topics() -> dict[str, list[dict[str, Any]]]:
            return {t: [orjson.loads(v) for v in await read_topic(scenario.settings, run.bootstrap, t)]
                    for t in (ALERTS, RECOMMENDATIONS, MARKETING, HISTORY, DLQ)}  # fmt: skip

        snapshot = tmp_path / "state.jsonl"
        shown = fundflow("snapshot", "--out", str(snapshot), "--as-of", AS_OF, **run.env())
        assert shown.returncode == 0, shown.stderr
        return {
            "tmp": tmp_path,
            "events": events,
            "expected_dead": expected_dead,
            "published": asyncio.run(topics()),
            "rows": {r["customer_id"]: r for r in map(orjson.loads, snapshot.read_bytes().splitlines())},
            "board_check": fundflow("board", "--check", **run.env()),
            "board_day": fundflow("board", "--day", "2024-03-09", **run.env()),
            "duplicates": duplicates_counted(run.web_ports[0]),
        }


def test_reversals_retractions_and_bad_corrections_through_kafka_and_redis(reversed_run: dict[str, Any]) -> None:
    events, expected_dead = reversed_run["events"], reversed_run["expected_dead"]
    published, rows = reversed_run["published"], reversed_run["rows"]

    # -- the state: every flow and the balance as if the large credit had never happened
    assert {"R1", "N-R1", "R2", "R3"} <= set(rows)
    for name in FLOW_FIELDS:
        assert rows["R1"][name] == rows["N-R1"][name], f"{name}: {rows['R1'][name]} != {rows['N-R1'][name]}"
    assert Decimal(rows["R1"]["balance"]) == Decimal("700.00")  # the own-account legs net to nothing
    # the own-account pair is neither inflow nor outflow: 7 x 5,000 + 700 in, 7 x 5,000 out
    assert Decimal(rows["N-R1"]["inflow_30d"]) == Decimal("35700.00")
    assert Decimal(rows["N-R1"]["outflow_30d"]) == Decimal("35000.00")
    # the refused records changed nothing; the records after them were applied
    assert Decimal(rows["R2"]["balance"]) == Decimal("280.00")
    assert Decimal(rows["R3"]["balance"]) == Decimal("1000.00")

    # -- the retractions: exactly one per finding of the reversed transaction, the pure rules' ids
    live = [{**f, "_topic": t} for t in (ALERTS, RECOMMENDATIONS, MARKETING) for f in published[t]]
    assert not published[HISTORY]  # no FUNDFLOW_LIVE_FROM: everything is live
    fired = [f for f in live if f["trigger_txn_id"] == "R1-big"]
    assert {(f["_topic"], f["type"]) for f in fired} >= {(ALERTS, "alert"), (MARKETING, "push")}, fired
    assert {f["rule"] for f in fired} >= {"collection_opportunity"}
    retractions = [f for f in live if "retracts" in f]
    assert sorted(f["retracts"] for f in retractions) == sorted(f["id"] for f in fired)
    for taken_back in retractions:
        original = next(f for f in fired if f["id"] == taken_back["retracts"])
        assert taken_back["_topic"] == original["_topic"], "a retraction goes where its finding went"
        assert taken_back["reason"] == "trigger_reversed" and taken_back["trigger_txn_id"] == "R1-rev"
        assert (taken_back["rule"], taken_back["category"]) == (original["rule"], original["category"])
    # no reversal fired anything but its retractions (the second one nothing at all)
    assert not [f for f in live if f["trigger_txn_id"] in ("R1-rev", "R1-rev2") and "retracts" not in f]
    pure = pure_findings(events)
    assert sorted((f["_topic"], f["id"]) for f in live) == sorted((f["_topic"], f["id"]) for f in pure)
    assert reversed_run["duplicates"] >= 1  # the second reversal: a duplicate, counted

    # -- the dead letters: exactly those records, with their reasons
    letters = published[DLQ]
    got = {orjson.loads(base64.b64decode(letter["value_b64"]))["txn_id"]: letter["reason"] for letter in letters}
    assert got == expected_dead, letters

    # -- the 看板 agrees with a recomputation from the states after the reversal
    board = reversed_run["board_check"]
    assert board.returncode == 0, board.stdout + board.stderr
    # the large credit's day: its flow is gone (nobody else moved money that day); the
    # findings cells count the findings as they were made (docs/board.md)
    day = reversed_run["board_day"]
    assert day.returncode == 0, day.stderr
    shown_day = orjson.loads(day.stdout)
    assert {(h["inflow"], h["outflow"]) for h in shown_day["flows"]["hours"]} == {("0.00", "0.00")}


def test_evaluate_rules_does_not_count_a_retraction_as_a_firing(reversed_run: dict[str, Any]) -> None:
    """``fundflow evaluate-rules`` over this run's alerts topic (as a backtest writes it)."""
    work = reversed_run["tmp"] / "backtest"
    work.mkdir(exist_ok=True)
    alerts = reversed_run["published"][ALERTS]
    (work / "alerts.jsonl").write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in alerts))
    result = fundflow("evaluate-rules", str(reversed_run["tmp"] / "events.jsonl"), str(work), "--json", "--no-cases")
    assert result.returncode == 0, result.stderr
    rules = orjson.loads(result.stdout)["rules"]
    # a retracted alert is not judged (the money it reacted to never moved), and is counted apart
    retracted = {a["retracts"] for a in alerts if "retracts" in a}
    made = [a for a in alerts if a["rule"] == "collection_opportunity" and "retracts" not in a]
    standing = [a for a in made if a["id"] not in retracted]
    assert rules["collection_opportunity"]["fired"] == len(standing)
    assert rules["collection_opportunity"]["retracted"] == len(made) - len(standing) >= 1

"""The 看板's aggregates on a real Redis: moved by exactly the commits that went through.

Redelivery, a stale owner losing the version check, and a replay of everything
must leave the aggregates as one application of the events left them, equal to a
recomputation from the stored states (``streams.board.check``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest

from rules.board import Board, BoardDelta, collection_bucket
from rules.events import TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, to_us
from streams.board import check, prune, read_board, stored
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.pipeline import BatchProcessor, Step
from streams.storage.keys import Keys
from streams.storage.store import RECENT_ALERTS_KEPT, StateStore
from streams.topics import TRANSACTIONS
from tests.fakes import Sink
from tests.pipeline.test_pipeline import big_credit_step

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(ZONE)


def alert_of(event: TransactionEvent) -> dict[str, object]:
    """A finding shaped like the real ones (the board counts type, category, rule, ts)."""
    ts = event.ts.astimezone(ZONE).isoformat()
    return {"id": f"big-{event.txn_id}", "type": "alert", "category": "collection", "rule": "big_credit", "ts": ts}


def finding_step() -> Step:
    """State step + a toy rule: every credit >= 100 is an alert."""
    return big_credit_step(alert_of)


def txn(
    i: int, customer: str, direction: str, amount: str, when: str, kind: str = "other", **extra: object
) -> RawRecord:
    event = {
        "txn_id": f"t{i}",
        "customer_id": customer,
        "account_id": f"{customer}-acct",
        "ts": when,
        "direction": direction,
        "amount": amount,
        "kind": kind,
        **extra,
    }
    return RawRecord(TRANSACTIONS, 0, i, customer.encode(), json.dumps(event).encode(), 0)


def records() -> list[RawRecord]:
    return [
        txn(1, "alice", "credit", "1000.00", "2024-03-01T09:15:00+08:00", "salary"),
        txn(2, "alice", "debit", "300.50", "2024-03-01T10:05:00+08:00", "fee"),
        txn(3, "bob", "credit", "50.00", "2024-03-01T10:30:00+08:00"),
        txn(4, "bob", "debit", "80.25", "2024-03-01T23:59:00+08:00", external=True, counterparty_bank="B2"),
        txn(5, "carol", "debit", "20.00", "2024-03-02T00:30:00+08:00"),
        txn(6, "carol", "credit", "200.00", "2024-02-29T08:00:00+08:00", "salary"),
    ]


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[StateStore]:
    client = connect(redis_url)
    yield StateStore(client, Keys("fftest"))
    await client.aclose()


def processor(store: StateStore, sink: Sink | None = None) -> BatchProcessor:
    return BatchProcessor(store, finding_step(), sink or Sink(), retry_initial=0.001, retry_max=0.01, zone=ZONE)


def reference(batch: list[RawRecord]) -> Board:
    """The board one application of ``batch`` gives: the pure step, event by event."""
    states: dict[str, CustomerState] = {}
    board = Board()
    step = finding_step()
    for record in batch:
        event = TransactionEvent.model_validate_json(record.value)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        outcome, findings = step(state, event)
        assert outcome is Outcome.APPLIED
        delta = BoardDelta()
        delta.add_transaction(event, to_us(event.ts), ZONE)
        for entry in findings:
            delta.add_finding(orjson.loads(entry.split(b"\n", 2)[2]))
        board.add(event.customer_id, delta)
    for state in states.values():
        board.count(collection_bucket(state))
    return board


async def test_the_board_counts_each_applied_event_once(store: StateStore) -> None:
    batch = records()
    await processor(store).process(batch)
    first = await stored(store.redis, store.keys, cluster=False)
    assert first == reference(batch)
    assert await check(store, ZONE, RECENT_ALERTS_KEPT) == []

    # redelivered (a crash before the offsets were committed), then replayed by a new worker
    await processor(store).process(batch)
    await processor(store).process(list(reversed(batch)))
    assert await stored(store.redis, store.keys, cluster=False) == first
    assert await check(store, ZONE, RECENT_ALERTS_KEPT) == []


async def test_the_board_shows_the_day_of_the_latest_event(store: StateStore) -> None:
    await processor(store).process(records())
    board = await read_board(store.redis, store.keys, ZONE)
    assert (board["day"], board["latest"]) == ("2024-03-02", "2024-03-02T00:30:00+08:00")
    assert board["flows"]["total"] == {"inflow": "0.00", "outflow": "20.00", "net": "-20.00"}
    assert board["top_net_outflow"] == [{"customer_id": "carol", "net_outflow": "20.00"}]

    day = await read_board(store.redis, store.keys, ZONE, "2024-03-01")
    flows = day["flows"]
    assert flows["total"] == {"inflow": "1050.00", "outflow": "380.75", "net": "669.25"}
    assert flows["external"] == {"inflow": "0.00", "outflow": "80.25"}
    assert flows["external_outflow_share"] == str((Decimal("80.25") / Decimal("380.75")).quantize(Decimal("0.0001")))
    assert flows["hours"][9] == {"hour": 9, "inflow": "1000.00", "outflow": "0.00", "net": "1000.00"}
    assert flows["hours"][23]["outflow"] == "80.25"
    by_kind = {row["kind"]: (row["inflow"], row["outflow"]) for row in flows["by_kind"]}
    assert by_kind["salary"] == ("1000.00", "0.00") and by_kind["fee"] == ("0.00", "300.50")
    assert len(by_kind) == 12  # every kind of events.md, zero where none
    assert day["top_net_outflow"] == [{"customer_id": "bob", "net_outflow": "30.25"}]  # alice's net is inflow

    # alerts of the last 24 h end at the latest event (00:30 on the 2nd): the 09:15 alert of
    # the 1st is in; carol's salary alert of 29 Feb only in the 30 days
    findings = board["findings"]
    assert findings["last_24h"] == [{"kind": "alert", "category": "collection", "rule": "big_credit", "count": 1}]
    assert findings["last_30d"][0]["count"] == 2
    assert [d["alert"] for d in findings["by_day"][-3:]] == [1, 1, 0]
    assert len(findings["by_day"]) == 30
    buckets = {row["bucket"]: row["customers"] for row in board["collection_rate"] if row["customers"]}
    # of 90 days' inflow still here: bob 0 of 50, alice 699.50 of 1000, carol 180 of 200
    assert buckets == {"0-10%": 1, "60-70%": 1, "90-100%": 1}
    assert [row["bucket"] for row in board["collection_rate"]][-1] == "none"


async def test_a_stale_owner_moves_nothing(store: StateStore) -> None:
    """The old owner of a customer, after a rebalance, commits from a stale cache: it loses
    the version check and its cells are not counted; its redo counts them once."""
    old_owner, new_owner = processor(store), processor(store)
    first = [txn(1, "dave", "credit", "500.00", "2024-03-01T09:00:00+08:00")]
    await old_owner.process(first)
    await new_owner.process([txn(2, "dave", "debit", "100.00", "2024-03-01T10:00:00+08:00")])
    report = await old_owner.process([txn(3, "dave", "debit", "30.00", "2024-03-01T11:00:00+08:00")])
    assert report.conflicts == 1 and report.applied == 1
    board = await read_board(store.redis, store.keys, ZONE)
    assert board["flows"]["total"] == {"inflow": "500.00", "outflow": "130.00", "net": "370.00"}
    assert await check(store, ZONE, RECENT_ALERTS_KEPT) == []


async def test_prune_drops_days_past_the_retention_only(store: StateStore) -> None:
    await processor(store).process(records())
    assert await prune(store.redis, store.keys, ZONE, keep_days=1) == 3  # 29 Feb: flow, findings, net
    kept = await stored(store.redis, store.keys, cluster=False)
    assert sorted(kept.flows) == ["2024-03-01", "2024-03-02"]
    assert await prune(store.redis, store.keys, ZONE, keep_days=1) == 0

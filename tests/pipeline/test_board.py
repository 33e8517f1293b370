"""The 看板's aggregates on a real Redis: moved by exactly the commits that went through.

Redelivery, a stale owner losing the version check, and a replay of everything
must leave the aggregates as one application of the events left them, equal to a
recomputation from the stored states (``streams.board.check``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from rules.state import StateConfig
from streams.board import check, prune, read_board, stored
from streams.clients import connect
from streams.storage.keys import Keys
from streams.storage.store import RECENT_ALERTS_KEPT, StateStore
from tests.support.board import ZONE, processor, records, reference, txn

CONFIG = StateConfig(ZONE)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[StateStore]:
    client = connect(redis_url)
    yield StateStore(client, Keys("fftest"))
    await client.aclose()


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

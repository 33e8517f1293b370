"""Rule versions through real workers (issue 29): a promotion at an event-time instant and a
rollback at a later one, with a third version in shadow, while a worker is killed like
``kill -9`` between a state commit and its publish. Then:

* the live findings are those a replay of the events gives under the version timeline (the
  worker's step in this process, under the timeline read back from Redis), and each version
  was in force exactly from its instant: without the rollback, or without the promotion, the
  findings would differ;
* the shadow's records are the replay's too, each once in ``{p}:{rules}:shadow:{N}`` and on
  ``fundflow.shadow.v1`` (the kill lost none and duplicated none in Redis).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from rules.config import RulesConfig
from rules.events import Event, TransactionEvent
from rules.state import CustomerState, to_us
from streams.clients import connect
from streams.local.orchestra import read_topic
from streams.rulestep import BEGINNING, InForce, RulesProvider, RulesStep, Timeline, VersionFollower, fingerprint
from streams.settings import state_config
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from streams.topics import ALERTS, MARKETING, RECOMMENDATIONS, SHADOW
from tests.support.scenario import Scenario

pytestmark = pytest.mark.connected

LIVE = RulesConfig()
PROMOTED = "outflow:\n  large_external_amount: 20000\n  drawdown_fraction: 0.6\ncollection:\n  min_amount: 2000\n"
SHADOWED = "outflow:\n  streak_days: 2\n  fast_out_min_amount: 600\nmarketing:\n  per_day: 3\n  per_week: 5\n"
CUSTOMERS, EVENTS_EACH, STEP = 12, 16, dt.timedelta(minutes=5)
# a third of the customers active before the promotion, a third while it is in force, a third after the rollback
PERIODS = [dt.timedelta(hours=h) for h in (0, 2.5, 5.5)]
PROMOTED_AT, ROLLED_BACK_AT = dt.timedelta(hours=2), dt.timedelta(hours=5)
AMOUNTS = [("credit", 60_000), ("debit", 25_000), ("debit", 700), ("credit", 2_500), ("debit", 12_000),
           ("credit", 8_000), ("debit", 6_000), ("debit", 2_000)]  # fmt: skip


def workload(start: dt.datetime) -> list[bytes]:
    lines = []
    for n in range(EVENTS_EACH):
        for c in range(CUSTOMERS):
            direction, amount = AMOUNTS[n % len(AMOUNTS)]
            kind = ("salary" if n % 8 == 0 else "transfer_in") if direction == "credit" else "transfer_out"
            when = start + PERIODS[c % len(PERIODS)] + n * STEP + dt.timedelta(seconds=c)
            event = {"txn_id": f"V{c}-{n}", "customer_id": f"V{c}", "account_id": f"V{c}", "ts": when.isoformat(),
                     "direction": direction, "amount": str(amount + 37 * c), "external": n % 3 != 2,
                     "kind": kind}  # fmt: skip
            lines.append(orjson.dumps(event))
    return sorted(lines, key=lambda line: orjson.loads(line)["ts"])


def replayed(lines: list[bytes], timeline: Timeline, settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The live findings and the shadow records by id, of the worker's step over the events."""
    provider = RulesProvider(None)
    provider.follow(timeline)
    step = RulesStep(state_config(settings), provider)
    step.refresh()
    states: dict[str, CustomerState] = {}
    live: dict[str, Any] = {}
    shadow: dict[str, Any] = {}
    for line in lines:
        event: Event = TransactionEvent.model_validate_json(line)
        for entry in step(states.setdefault(event.customer_id, CustomerState(event.customer_id)), event)[1]:
            topic, _, value = entry.split(b"\n", 2)
            obj = orjson.loads(value)
            (shadow if topic == SHADOW.encode() else live)[obj["id"]] = obj
    return live, shadow


async def set_up_versions(book: Rulebook, promote_at: int, rollback_at: int) -> None:
    now = time.time_ns() // 1000
    fp, text = fingerprint(LIVE)
    assert await book.bootstrap(text, fp, now)
    await book.propose(PROMOTED, "an.analyst", "analyst", "more outflow alerts", now)
    await book.approve(2, "a.supervisor", "supervisor", now)
    await book.promote(2, "a.supervisor", "supervisor", now, promote_at)
    await book.rollback("a.supervisor", "supervisor", now, rollback_at)
    await book.propose(SHADOWED, "an.analyst", "analyst", "shorter streaks", now)
    await book.start_shadow(3, "an.analyst", "analyst", now)


async def read_back(scenario: Scenario) -> tuple[Timeline, dict[bytes, bytes], list[bytes], list[bytes]]:
    client = connect(scenario.run.redis_url)
    keys = Keys(scenario.settings.key_prefix)
    try:
        provider = RulesProvider(None)
        timeline = await VersionFollower(Rulebook(client, keys), provider).read()
        kept = cast(dict[bytes, bytes], await client.hgetall(keys.shadow_records(3)))
    finally:
        await client.aclose()
    assert timeline is not None
    settings, bootstrap = scenario.settings, scenario.run.bootstrap
    published = [
        v for topic in (ALERTS, RECOMMENDATIONS, MARKETING) for v in await read_topic(settings, bootstrap, topic)
    ]
    return timeline, kept, published, await read_topic(settings, bootstrap, SHADOW)


def test_promotion_rollback_and_shadow_through_a_kill(tmp_path: Path) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=2)  # after the shadow's grace
    promote_at, rollback_at = to_us(start + PROMOTED_AT), to_us(start + ROLLED_BACK_AT)
    lines = workload(start)
    with Scenario(tmp_path) as scenario:

        async def versions() -> None:
            client = connect(scenario.run.redis_url)
            try:
                await set_up_versions(Rulebook(client, Keys(scenario.settings.key_prefix)), promote_at, rollback_at)
            finally:
                await client.aclose()

        asyncio.run(versions())
        asyncio.run(scenario.produce(lines))
        doomed = scenario.run.start_worker(FUNDFLOW_CRASH_AFTER_COMMITS="3", FUNDFLOW_BATCH_MAX_EVENTS="50")
        assert doomed.wait(timeout=60) == 137  # killed between a state commit and its publish
        scenario.run.workers.remove(doomed)
        scenario.run.start_worker()
        asyncio.run(scenario.run.wait_caught_up(len(lines), 120))
        timeline, kept, published, shadow_topic = asyncio.run(read_back(scenario))

    assert [(e.effective_us, e.version) for e in timeline.entries][1:] == [(promote_at, 2), (rollback_at, 1)]
    assert timeline.shadow is not None and timeline.shadow.version == 3
    live, shadow = replayed(lines, timeline, scenario.settings)
    assert {f["id"]: f for f in map(orjson.loads, published)} == live
    assert {k.decode(): orjson.loads(v) for k, v in kept.items()} == shadow  # none lost, each once
    assert {orjson.loads(v)["id"] for v in shadow_topic} == set(shadow)
    assert {r["type"] for r in shadow.values()} >= {"finding", "diff"}
    # each version was in force exactly from its instant: without the rollback, or the promotion, other findings
    in_force = list(timeline.entries[:2])
    for other in (Timeline(in_force), Timeline([*in_force[:1], InForce(BEGINNING, 1, in_force[0].rules)])):
        assert replayed(lines, other, scenario.settings)[0] != live

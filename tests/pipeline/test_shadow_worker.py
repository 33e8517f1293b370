"""The worker's side of rule versions (issue 29), in process against a real Redis: it makes
version 1 from its rules file, follows the timeline and the shadow run it reads there, keeps
every shadow record by id in ``{p}:{rules}:shadow:{N}`` and out of every live view (the feed,
the customer's recent findings), and keeps the timeline it last loaded when a version cannot
be loaded (``fundflow_rules_reload_rejected``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import cast

import orjson
import pytest

from streams import telemetry
from streams.app import create_app, follow_versions, parts_of
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.errors import ConfigError
from streams.rulestep import RulesStep, build_step
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from streams.topics import SHADOW, TRANSACTIONS
from streams.worker import follow_versions_at_start
from tests.support.fakes import Sink

CANDIDATE = "outflow:\n  large_external_amount: 1000\n  large_external_min_amount: 1000\n"


def record(offset: int, txn: str, ts_us: int, direction: str, amount: str) -> RawRecord:
    when = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts_us / 1_000_000))
    kind = "transfer_out" if direction == "debit" else "salary"
    value = {"txn_id": txn, "customer_id": "sh", "account_id": "a", "ts": when, "direction": direction,
             "amount": amount, "kind": kind, "external": True}  # fmt: skip
    return RawRecord(TRANSACTIONS, 0, offset, b"sh", json.dumps(value).encode(), ts_us // 1000)


async def test_the_worker_follows_the_versions_and_keeps_the_shadow_apart(redis_url: str) -> None:
    settings = Settings(key_prefix="ffshadow", rules_file=Path("defaults"))
    sink = Sink()
    app = create_app(settings, "127.0.0.1:1", redis_url, build_step(settings), emitter=sink)
    parts = parts_of(app)
    step = parts.processor.rulebook
    assert isinstance(step, RulesStep)
    book = Rulebook(parts.redis, parts.keys)
    await follow_versions(parts)  # no versions yet: version 1 from the worker's rules
    assert [(e.version, e.fingerprint) for e in await book.timeline()] == [(1, step.timeline.fingerprint)]

    now_us = time.time_ns() // 1000
    await book.propose(CANDIDATE, "an.analyst", "analyst", "large outflows from 1,000", now_us)
    run = await book.start_shadow(2, "an.analyst", "analyst", now_us)
    await follow_versions(parts)
    shadow = step.provider.timeline.shadow
    assert shadow is not None and shadow.version == 2 and shadow.from_us == run.started_us + book.grace_us
    step.refresh()

    at = shadow.from_us + 1_000_000
    minute = 60_000_000
    report = await parts.processor.process(
        [
            record(0, "s0", at, "credit", "200000"),
            record(1, "s1", at + minute, "debit", "5000"),  # large for the candidate only
            record(2, "s2", at + 2 * minute, "debit", "150000"),  # for both (the candidate is cooling down)
        ]
    )
    assert report.applied == 3
    records = [orjson.loads(value) for topic, _, value in sink.sent if topic == SHADOW]
    assert {r["type"] for r in records} >= {"finding", "diff"}, records
    assert all(r["shadow_version"] == 2 and r["run"] == shadow.run for r in records)
    kept = cast(dict[bytes, bytes], await parts.redis.hgetall(parts.keys.shadow_records(2)))
    assert {k.decode() for k in kept} == {r["id"] for r in records}  # each by its id
    feed = cast(list[tuple[bytes, dict[bytes, bytes]]], await parts.redis.xrange(parts.keys.feed))
    assert feed and all(fields[b"t"] != SHADOW.encode() for _, fields in feed)  # no live view shows them
    assert not [e for e in await parts.store.recent_findings("sh") if e.startswith(SHADOW.encode())]
    live = [orjson.loads(value) for topic, _, value in sink.sent if topic != SHADOW]
    assert report.findings == len(live)  # fundflow_findings_total counts no shadow record
    [big] = [f for f in live if f["rule"] == "large_external_outflow"]
    assert big["trigger_txn_id"] == "s2"
    changes = {(r["change"], r["live_id"] or r["shadow_id"]) for r in records if r["type"] == "diff"}
    shadow_ids = {r["finding"]["trigger_txn_id"]: r["finding"]["id"] for r in records if r["type"] == "finding"}
    assert ("added", shadow_ids["s1"]) in changes and ("removed", big["id"]) in changes, changes

    await book.stop_shadow("an.analyst", "analyst", time.time_ns() // 1000)
    await follow_versions(parts)
    assert step.provider.timeline.shadow is None

    # a version this worker cannot load (as a newer FundFlow would store it): the timeline it
    # last loaded stays, and the gauge the alert reads says so until it can load it
    before = step.provider.timeline
    entry = {"effective_us": now_us + 10**9, "version": 9, "fingerprint": "x", "by": "b", "at_us": now_us}
    await parts.redis.hset(parts.keys.rulebook("version:9"), mapping={"number": 9, "rules": b'{"newer": 1}'})
    await parts.redis.rpush(parts.keys.rulebook("timeline"), orjson.dumps(entry))
    await follow_versions(parts)
    assert step.provider.timeline is before and telemetry.RULES_RELOAD_REJECTED._value.get() == 1
    await parts.redis.hset(parts.keys.rulebook("version:9"), "rules", step.provider.config.model_dump_json())
    await follow_versions(parts)
    assert [e.version for e in step.provider.timeline.entries] == [1, 9]
    assert telemetry.RULES_RELOAD_REJECTED._value.get() == 0
    await parts.redis.aclose()


async def test_a_version_a_starting_worker_cannot_load_stops_it_in_one_line_unless_last_good(redis_url: str) -> None:
    settings = Settings(key_prefix="ffshadowstart", rules_file=Path("defaults"), redis_url=redis_url)
    client = connect(redis_url)
    keys = Keys(settings.key_prefix)
    entry = {"effective_us": 0, "version": 1, "fingerprint": "x", "by": "b", "at_us": 0}
    await client.hset(keys.rulebook("version:1"), mapping={"number": 1, "rules": b'{"newer": 1}'})
    await client.rpush(keys.rulebook("timeline"), orjson.dumps(entry))
    await client.aclose()
    with pytest.raises(ConfigError, match=r"version 1 cannot be loaded.*FUNDFLOW_RULES_FALLBACK=last-good"):
        await follow_versions_at_start(redis_url, settings, build_step(settings))
    lenient = settings.model_copy(update={"rules_fallback": "last-good"})
    step = build_step(lenient)
    await follow_versions_at_start(redis_url, lenient, step)  # runs on the rules it has, and says so
    assert step.provider.timeline.entries[0].rules == step.provider.config
    assert telemetry.RULES_RELOAD_REJECTED._value.get() == 1

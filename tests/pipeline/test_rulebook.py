"""The rule versions in a real Redis (``streams.storage.rulebook``): the transitions and their
audit, four eyes, the races (several supervisors approving or promoting at once, several
workers bootstrapping at once: exactly one wins), any sequence of actions leaving the store
where the in-memory ``rules.versions.Book`` is, and the same on Redis Cluster."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

from rules.config import RulesConfig
from rules.versions import BEGINNING_US, Book, Code, RuleRefusal, four_eyes_kept, version_at
from streams.clients import connect
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from tests.support.versions import CANDIDATE, DEFAULTS_FP, DEFAULTS_JSON, GRACE_US, OTHER, actions, in_memory

T0 = 1_700_000_000_000_000


@pytest.fixture
async def book(redis_url: str) -> AsyncIterator[Rulebook]:
    client = connect(redis_url)
    try:
        yield Rulebook(client, Keys("rb"), grace_us=30_000_000)
    finally:
        await client.aclose()


async def refused(code: Code, call: Any) -> str:
    with pytest.raises(RuleRefusal) as caught:
        await call
    assert caught.value.code == code, caught.value.message
    return caught.value.message


async def test_a_version_goes_from_proposal_to_force_with_four_eyes_and_every_step_audited(book: Rulebook) -> None:
    assert await book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    proposed = await book.propose(CANDIDATE, "li.wei", "analyst", "fewer drawdown alerts", T0 + 1)
    assert (proposed.number, proposed.status, proposed.base) == (2, "proposed", 1)
    assert proposed.diff == ("outflow.drawdown_fraction: 0.3 -> 0.2",)
    assert RulesConfig.model_validate_json(proposed.rules).outflow.drawdown_fraction == Decimal("0.2")
    approved = await book.approve(2, "wang.fang", "supervisor", T0 + 2)
    assert (approved.status, approved.approver, approved.approved_us) == ("approved", "wang.fang", T0 + 2)
    entry = await book.promote(2, "wang.fang", "supervisor", T0 + 3)
    assert (entry.version, entry.effective_us, entry.by) == (2, T0 + 3 + 30_000_000, "wang.fang")
    timeline = await book.timeline()
    assert [(e.version, e.effective_us) for e in timeline] == [(1, BEGINNING_US), (2, T0 + 3 + 30_000_000)]
    assert version_at(timeline, T0) is not None and version_at(timeline, T0).version == 1  # type: ignore[union-attr]
    assert version_at(timeline, T0 + 3 + 30_000_000).version == 2  # type: ignore[union-attr]
    back = await book.rollback("chen.jie", "supervisor", T0 + 4, effective_us=T0 + 60_000_000)
    assert (back.version, back.effective_us) == (1, T0 + 60_000_000)
    stored = await book.version(2)
    assert stored == approved and await book.rules_json(2) == approved.rules
    audit = await book.audit()
    assert [(a["action"], a["actor"], a["version"]) for a in reversed(audit)] == [
        ("bootstrap", "deployment", 1),
        ("propose", "li.wei", 2),
        ("approve", "wang.fang", 2),
        ("promote", "wang.fang", 2),
        ("rollback", "chen.jie", 1),
    ]
    assert audit[-2]["reason"] == "fewer drawdown alerts" and audit[0]["effective_us"] == T0 + 60_000_000
    assert await book.audit_length() == 5


async def test_four_eyes_and_roles_are_refused_in_the_store(book: Rulebook) -> None:
    await book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    await refused(Code.FORBIDDEN, book.propose(CANDIDATE, "zhao.min", "viewer", "why", T0))
    await refused(Code.INVALID, book.propose(CANDIDATE, "li.wei", "analyst", "  ", T0))
    bad = "outflow:\n  drawdown_fraction: 2\n"
    message = await refused(Code.INVALID, book.propose(bad, "li.wei", "analyst", "x", T0))
    assert message.startswith("proposal: line 2: outflow.drawdown_fraction")
    await refused(Code.INVALID, book.propose("version: 1\n", "li.wei", "analyst", "same", T0))  # the rules in force
    await book.propose(CANDIDATE, "wang.fang", "supervisor", "mine", T0)
    await refused(Code.FORBIDDEN, book.approve(2, "wang.fang", "supervisor", T0))  # its author
    await refused(Code.FORBIDDEN, book.approve(2, "li.wei", "analyst", T0))
    await refused(Code.FORBIDDEN, book.reject(2, "wang.fang", "supervisor", "no", T0))
    await refused(Code.CONFLICT, book.promote(2, "chen.jie", "supervisor", T0))  # not approved
    await refused(Code.NOT_FOUND, book.approve(9, "chen.jie", "supervisor", T0))
    await book.approve(2, "chen.jie", "supervisor", T0)
    await refused(Code.CONFLICT, book.reject(2, "chen.jie", "supervisor", "too late", T0))
    await refused(Code.FORBIDDEN, book.promote(2, "li.wei", "analyst", T0))
    await book.promote(2, "chen.jie", "supervisor", T0, effective_us=T0)
    await refused(Code.INVALID, book.rollback("chen.jie", "supervisor", T0, effective_us=T0 - 1))  # before the last
    await refused(Code.CONFLICT, book.promote(2, "chen.jie", "supervisor", T0, effective_us=T0))  # in force
    await refused(Code.CONFLICT, book.start_shadow(2, "li.wei", "analyst", T0))  # in force
    await refused(Code.CONFLICT, book.stop_shadow("li.wei", "analyst", T0))  # none runs
    assert four_eyes_kept(await book.versions())
    assert await book.audit_length() == 4  # bootstrap, propose, approve, promote: refusals write nothing


async def test_a_shadow_run_starts_stops_and_ends_when_its_version_is_decided(book: Rulebook) -> None:
    await book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    await book.propose(CANDIDATE, "li.wei", "analyst", "a", T0)
    await book.propose(OTHER, "li.wei", "analyst", "b", T0)
    run = await book.start_shadow(2, "li.wei", "analyst", T0 + 5)
    assert await book.shadow() == run and (run.version, run.started_us, run.by) == (2, T0 + 5, "li.wei")
    assert (run.from_us, run.run) == (T0 + 5 + 30_000_000, f"2@{T0 + 5 + 30_000_000}")
    await refused(Code.CONFLICT, book.start_shadow(3, "li.wei", "analyst", T0))  # one at a time
    await refused(Code.FORBIDDEN, book.stop_shadow("zhao.min", "viewer", T0))
    assert await book.stop_shadow("li.wei", "analyst", T0 + 6) == run and await book.shadow() is None
    await book.start_shadow(3, "li.wei", "analyst", T0 + 7)
    await book.reject(3, "wang.fang", "supervisor", "too many alerts", T0 + 8)
    assert await book.shadow() is None  # a rejected version stops shadowing in the same step
    await book.start_shadow(2, "li.wei", "analyst", T0 + 9)
    await book.approve(2, "wang.fang", "supervisor", T0 + 10)
    assert (await book.shadow()) is not None  # an approved version may keep shadowing
    await book.promote(2, "wang.fang", "supervisor", T0 + 11)
    assert await book.shadow() is None
    actions_seen = [(a["action"], a.get("reason")) for a in reversed(await book.audit())]
    assert actions_seen.count(("shadow_stop", "version rejected")) == 1
    assert actions_seen.count(("shadow_stop", "version promoted")) == 1
    await book.redis.hset(book.keys.shadow_records(2), mapping={"r1": orjson.dumps({"id": "r1", "type": "diff"})})
    assert await book.shadow_records(2) == [{"id": "r1", "type": "diff"}]


async def test_no_version_takes_effect_among_events_already_judged(book: Rulebook) -> None:
    """The workers' commits carry the latest event time they judged (the 看板's "now"): a
    promotion at or before it is refused, and a default instant or a shadow run starts a
    grace after it when the stream is ahead of the clock (a replay of recent days), so a
    replay judges every event under the version the live run used."""
    assert await book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    for number in (2, 3):
        await book.propose(CANDIDATE if number == 2 else OTHER, "li.wei", "analyst", "test", T0)
        await book.approve(number, "wang.fang", "supervisor", T0)
    judged = T0 + 3_600_000_000  # the stream is an hour ahead of the request's clock
    assert await book.judged_until() is None
    await book.redis.set(book.keys.board("board", "latest"), judged)
    assert await book.judged_until() == judged
    message = await refused(Code.INVALID, book.promote(2, "wang.fang", "supervisor", T0, effective_us=judged))
    assert "judged already" in message
    run = await book.start_shadow(3, "li.wei", "analyst", T0)
    assert run.from_us == judged + 30_000_000
    await book.stop_shadow("li.wei", "analyst", T0)
    entry = await book.promote(2, "wang.fang", "supervisor", T0)
    assert entry.effective_us == judged + 30_000_000
    later = await book.promote(3, "wang.fang", "supervisor", T0, effective_us=judged + 60_000_000)
    assert later.effective_us == judged + 60_000_000


async def test_concurrent_approvals_and_promotions_exactly_one_wins(book: Rulebook) -> None:
    await book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    await book.propose(CANDIDATE, "li.wei", "analyst", "a", T0)
    supervisors = [f"sup{i}" for i in range(8)]
    results = await asyncio.gather(
        *(book.approve(2, name, "supervisor", T0) for name in supervisors[:4]),
        *(book.reject(2, name, "supervisor", "no", T0) for name in supervisors[4:]),
        return_exceptions=True,
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert all(isinstance(r, RuleRefusal) and r.code == Code.CONFLICT for r in results if r not in won)
    decided = await book.version(2)
    assert decided == won[0]
    if decided.status == "rejected":  # (either may win: then a second proposal is approved)
        await book.propose(CANDIDATE, "li.wei", "analyst", "again", T0)
        await book.approve(3, "sup0", "supervisor", T0)
    number = 2 if decided.status == "approved" else 3
    results = await asyncio.gather(
        *(book.promote(number, name, "supervisor", T0, effective_us=T0) for name in supervisors),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1, results
    assert [e.version for e in await book.timeline()] == [1, number]
    audit = await book.audit()
    assert sum(a["action"] in ("approve", "reject") for a in audit if a["version"] == 2) == 1
    assert sum(a["action"] == "promote" for a in audit) == 1


async def test_concurrent_bootstraps_and_proposals(book: Rulebook) -> None:
    made = await asyncio.gather(*(book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0 + i) for i in range(10)))
    assert sorted(made) == [False] * 9 + [True]
    assert [v.number for v in await book.versions()] == [1]
    assert len(await book.timeline()) == 1 and await book.audit_length() == 1
    assert not await book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)  # idempotent
    proposals = await asyncio.gather(
        *(book.propose(CANDIDATE, f"a{i}", "analyst", f"r{i}", T0) for i in range(8)), return_exceptions=True
    )
    numbers = sorted(p.number for p in proposals if not isinstance(p, BaseException))
    assert numbers == list(range(2, 10))
    assert {v.author for v in await book.versions()} == {"deployment", *(f"a{i}" for i in range(8))}
    assert await book.audit_length() == 9


async def test_any_sequence_of_actions_leaves_the_store_where_the_book_in_memory_is(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        for seed in range(12):
            await _same_as_the_book(Rulebook(client, Keys(f"seq{seed}"), grace_us=GRACE_US), random.Random(seed), 40)
    finally:
        await client.aclose()


async def _same_as_the_book(store: Rulebook, rng: random.Random, steps: int) -> None:
    model = Book(grace_us=store.grace_us)
    for name, args in [("bootstrap", (DEFAULTS_JSON, DEFAULTS_FP, T0)), *actions(rng, steps, T0)]:
        expected: Any
        try:
            expected = getattr(model, name)(*in_memory(name, args))
        except RuleRefusal as exc:
            expected = exc.code
        try:
            got: Any = await getattr(store, name)(*args)
        except RuleRefusal as exc:
            got = exc.code
        assert got == expected, (name, args)
    assert await store.versions() == list(model.versions.values())
    assert await store.timeline() == model.timeline
    assert await store.shadow() == model.shadow
    audit = [{k: v for k, v in entry.items() if k != "id"} for entry in reversed(await store.audit(10_000))]
    assert audit == model.audit
    assert four_eyes_kept(model.versions.values())


async def test_the_rulebook_runs_on_redis_cluster(cluster_url: str) -> None:
    plain = redis.Redis.from_url(cluster_url)
    plain.flushdb()
    plain.close()
    client = connect(cluster_url, cluster=True)
    try:
        store = Rulebook(client, Keys("cl"), grace_us=GRACE_US)
        keys = [store.keys.rulebook(name) for name in ("seq", "rev", "version:1", "timeline", "shadow", "audit")]
        assert len({key_slot(key.encode()) for key in [*keys, store.keys.shadow_records(3)]}) == 1
        await _same_as_the_book(store, random.Random(99), 30)
        made = await asyncio.gather(*(Rulebook(client, Keys("cl2")).bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
                                      for _ in range(4)))  # fmt: skip
        assert sorted(made) == [False, False, False, True]
    finally:
        await client.aclose()

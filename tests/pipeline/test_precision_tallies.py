"""The rules' precision from the tallies cases keep as they close (``cases/lua/tally.lua``)
equals the definition computed from every closed case read whole (``tests.reference.rule_precision``),
on a real Redis: after any sequence of resolutions, dismissals, reopenings and joins, and
whether the tallies were made at the start or only later from cases closed before them
(an upgrade: ``cases/lua/tally_build.lua``)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cases.model import OPEN_STATUSES, Actor, Case, Comment, Refused, Transition, outcomes_for
from cases.store import CaseStore
from streams.clients import connect
from streams.storage.keys import Keys
from tests.support.desk import finding
from tests.support.reference import rule_precision

BOSS = Actor("zhang", "supervisor")
CUSTOMERS = ("C1", "C2", "C3")
RULES = (("large_external_outflow", "outflow_risk"), ("fast_in_fast_out", "outflow_risk"),
         ("low_collection", "collection"))  # fmt: skip

# one step: (customer, what, a choice among outcomes or rules, ms since the last step)
steps = st.lists(
    st.tuples(
        st.sampled_from(CUSTOMERS),
        st.sampled_from(("finding", "start", "resolve", "dismiss", "reopen", "comment")),
        st.integers(0, 4),
        st.integers(0, 90_000),
    ),
    max_size=25,
)


class _Clock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_000

    def __call__(self) -> int:
        return self.ms


async def _every_case(store: CaseStore) -> list[Case]:
    return await store.many(range(1, int(await store.redis.get(store.key("seq")) or 0) + 1))


async def _reference(store: CaseStore, taken: Counter[str]) -> list[Any]:
    cases = await _every_case(store)
    per_rule = Counter(rule for case in cases for rule in case.rules)
    closed = [case for case in cases if case.status not in OPEN_STATUSES]
    return rule_precision(closed, per_rule, taken)


async def _open_case(store: CaseStore, customer: str) -> Case | None:
    mine = [c for c in await _every_case(store) if c.customer_id == customer]
    return mine[-1] if mine else None


async def _run(
    redis_url: str,
    plan: list[tuple[str, str, int, int]],
    first_look: int | None,
    part_look: int | None = None,
    part_step: int = 1,
) -> list[Any]:
    client = connect(redis_url)
    clock = _Clock()
    store = CaseStore(client, Keys(f"prec-{uuid.uuid4().hex[:8]}"), clock)
    taken: Counter[str] = Counter()
    try:
        for n, (customer, what, choice, wait) in enumerate(plan):
            clock.ms += wait
            if n == first_look:  # the tallies are made from what is closed so far, then kept
                assert await store.precision() == await _reference(store, taken)
            if n == part_look:  # one step of making them only: the cases numbered up to it
                await store._tally_build(args=[store.base, part_step])
            case = await _open_case(store, customer)
            if what == "finding" or case is None:
                rule, category = RULES[choice % len(RULES)]
                await store.intake([finding(customer, rule=rule, category=category)])
                taken[rule] += 1
                continue
            action: Any = {
                "start": Transition("in_progress"),
                "resolve": Transition("resolved", outcomes_for(case.category)[choice % 3]),
                "dismiss": Transition("dismissed", ("false_positive", "duplicate", "not_actionable")[choice % 3]),
                "reopen": Transition("open", reason="another look"),
                "comment": Comment("noted"),
            }[what]
            with contextlib.suppress(Refused):  # not a move from this state: the plan goes on
                await store.act(case.id, BOSS, action, frozenset({"zhang"}), lambda c: c.id)
        rows = await store.precision()
        assert rows == await _reference(store, taken)
        return rows
    finally:
        await client.aclose()


looks = st.one_of(st.none(), st.integers(0, 25))


@settings(max_examples=60)
@given(plan=steps, first_look=looks, part_look=looks, part_step=st.integers(1, 3))
@example(  # case 1 closed, the making passes it (not case 2), then it is reopened: taken back
    plan=[("C1", "finding", 0, 0), ("C2", "finding", 0, 0), ("C1", "resolve", 0, 1_000), ("C1", "reopen", 0, 1_000)],
    first_look=None,
    part_look=3,
    part_step=1,
)
def test_precision_from_tallies_equals_every_closed_case_read_whole(
    redis_server: str,
    plan: list[tuple[str, str, int, int]],
    first_look: int | None,
    part_look: int | None,
    part_step: int,
) -> None:
    """Wherever the tallies are made (at the start, midway, after the last change, or one
    step of the making midway with changes to cases on both sides of it)."""
    asyncio.run(_run(redis_server, plan, first_look, part_look, part_step))  # (a prefix per example)


def test_an_odd_and_an_even_count_give_the_middle_and_the_mean_of_the_two(redis_url: str) -> None:
    """Three resolved cases of one rule (one reopened and resolved again meanwhile) and two of
    another, at uneven times: the medians are the middle one and the mean of the middle two."""
    plan = [(c, "finding", 0, 0) for c in CUSTOMERS]
    plan += [("C1", "resolve", 0, 5_000), ("C2", "resolve", 1, 9_000), ("C3", "resolve", 0, 40_000)]
    plan += [("C1", "reopen", 0, 1_000), ("C1", "resolve", 2, 60_000)]
    plan += [("C1", "finding", 1, 0), ("C2", "finding", 1, 0), ("C1", "resolve", 0, 7_000), ("C2", "resolve", 0, 2_000)]
    for first_look in (0, 5, None):
        rows = {row.rule: row for row in asyncio.run(_run(redis_url, plan, first_look))}
        three, two = rows["large_external_outflow"], rows["fast_in_fast_out"]
        assert (three.resolved, three.median_resolution_seconds) == (3, 54.0)
        assert (two.resolved, two.median_resolution_seconds) == (2, 8.0)


def test_dropping_built_makes_the_tallies_again_from_the_cases(redis_url: str) -> None:
    """An operator's repair (docs/cases.md): tallies gone wrong (here: tampered with) are
    made again from the cases once ``prec:built`` is deleted; nothing of the old ones stays."""
    plan = [(c, "finding", 0, 0) for c in CUSTOMERS]
    plan += [("C1", "resolve", 0, 5_000), ("C2", "dismiss", 0, 1_000), ("C3", "resolve", 2, 3_000)]

    async def tamper_and_repair() -> None:
        client = connect(redis_url)
        store = CaseStore(client, Keys("prec-repair"), _Clock())
        try:
            for customer, *_ in plan[:3]:
                await store.intake([finding(customer)])
            await store.precision()
            for customer, what, choice, _ in plan[3:]:
                case = await _open_case(store, customer)
                assert case is not None
                reason = ("false_positive", "duplicate")[choice % 2]
                outcome = outcomes_for(case.category)[choice] if what == "resolve" else reason
                to = Transition("resolved" if what == "resolve" else "dismissed", outcome)
                await store.act(case.id, BOSS, to, frozenset({"zhang"}), lambda c: c.id)
            right = await store.precision()
            assert right == await _reference(store, Counter({"large_external_outflow": 3}))
            await client.hincrby(store.key("prec:n:large_external_outflow"), "resolved", 5)
            await client.zadd(store.key("prec:closing:large_external_outflow"), {"99": 1})
            assert await store.precision() != right
            await client.delete(store.key("prec:built"))
            assert await store.precision() == right
        finally:
            await client.aclose()

    asyncio.run(tamper_and_repair())

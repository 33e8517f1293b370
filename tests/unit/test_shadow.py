"""Rules by event time and the shadow run beside the live rules (issue 29), held to slow,
obviously correct references over every delivery Kafka allows (``tests.support.deliveries``):

* a shadow's findings are those of a run with the candidate as the only rules, and the live
  findings are byte for byte those of a run without the shadow;
* a timeline with a promotion at instant T judges events before T under A and from T under B,
  whatever the delivery, the batch cuts and the restarts;
* the records of a run say exactly how live and shadow differ (live counts per rule = shadow
  counts - added + removed), each record once.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules.board import BoardDelta
from rules.config import RulesConfig
from rules.engine import judge
from rules.events import Event, LoanEvent, TransactionEvent
from rules.state import CustomerState, Outcome, apply_event, to_us
from streams.rulestep import (
    BEGINNING,
    SHADOW_MEMORY,
    InForce,
    RulesProvider,
    RulesStep,
    ShadowRules,
    Timeline,
    finding_entry,
    fingerprint,
    shadow_by_version,
)
from streams.storage.codec import decode_state, encode_state
from streams.topics import SHADOW
from tests.support.deliveries import CONFIG, ZONE, deliveries, histories, in_time_order

LIVE = RulesConfig()
# A candidate that finds more, and less: lower floors, a shorter streak, another push cap.
CANDIDATE = RulesConfig.model_validate(
    {
        "collection": {"min_amount": "600", "usual_inflow_multiple": "1.1"},
        "outflow": {"streak_days": 2, "large_external_amount": "20000", "fast_out_min_amount": "600"},
        "marketing": {"per_day": 2, "per_week": 3},
        "disabled": ["churn_drift"],
    }
)
SHADOW_HEAD = SHADOW.encode() + b"\n"
FIXED_SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def step_over(
    events: Sequence[Event], timeline: Timeline, restarts: AbstractSet[int] = frozenset()
) -> tuple[list[bytes], list[dict[str, Any]], dict[str, CustomerState]]:
    """The worker's step under ``timeline`` over ``events`` (the state written and read back at
    each index of ``restarts``): the live entries (sorted), the shadow records, the states."""
    provider = RulesProvider(None)
    provider.follow(timeline)
    step = RulesStep(CONFIG, provider)
    step.refresh()
    states: dict[str, CustomerState] = {}
    live: list[bytes] = []
    records: list[dict[str, Any]] = []
    for index, event in enumerate(events):
        if index in restarts:
            states = {cid: decode_state(encode_state(state)) for cid, state in states.items()}
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        for entry in step(state, event)[1]:
            if entry.startswith(SHADOW_HEAD):
                records.append(orjson.loads(entry.split(b"\n", 2)[2]))
            else:
                live.append(entry)
    return sorted(live), records, states


def reference(events: list[Event], rules_at: Any) -> list[bytes]:
    """Slow and plain: each event in the order given judged under ``rules_at(its time)``, one memory."""
    states: dict[str, CustomerState] = {}
    out: list[bytes] = []
    for event in events:
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        before = state.balance
        if apply_event(state, event, CONFIG) is Outcome.APPLIED:
            judged = judge(state, event, before, rules_at(to_us(event.ts)), CONFIG)
            out += [finding_entry(f, CONFIG) for f in judged.findings]
    return sorted(out)


def value(entry: bytes) -> bytes:
    return entry.split(b"\n", 2)[2]


def a_delivery(
    data: st.DataObject, txns: list[TransactionEvent], loans: list[LoanEvent]
) -> tuple[list[Event], set[int]]:
    """Any delivery Kafka allows, and where the worker restarts in it."""
    delivered = data.draw(deliveries(txns, loans), label="delivery")
    return delivered, data.draw(st.sets(st.integers(0, max(len(delivered) - 1, 0)), max_size=4), label="restarts")


@FIXED_SETTINGS
@given(histories(), st.data())
def test_the_shadow_finds_what_the_candidate_alone_finds_and_leaves_the_live_findings_alone(
    history: tuple[list[TransactionEvent], list[LoanEvent]], data: st.DataObject
) -> None:
    txns, loans = history
    natural = in_time_order(txns, loans)
    live_alone = reference(natural, lambda ts: LIVE)
    candidate_alone = reference(natural, lambda ts: CANDIDATE)
    delivered, restarts = a_delivery(data, txns, loans)

    live, records, _ = step_over(delivered, Timeline.fixed(LIVE, shadow=CANDIDATE), restarts)

    assert live == live_alone  # byte for byte: the shadow changes nothing live
    shadow_findings = sorted(orjson.dumps(r["finding"]) for r in records if r["type"] == "finding")
    assert shadow_findings == sorted(value(e) for e in candidate_alone)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids))  # each record once, whatever the delivery
    # the differences account for every finding: live = shadow - added + removed, per rule
    live_by_rule = Counter(orjson.loads(value(e))["rule"] for e in live)
    shadow_by_rule = Counter(r["finding"]["rule"] for r in records if r["type"] == "finding")
    added = Counter(r["rule"] for r in records if r["type"] == "diff" and r["change"] == "added")
    removed = Counter(r["rule"] for r in records if r["type"] == "diff" and r["change"] == "removed")
    for rule in set(live_by_rule) | set(shadow_by_rule):
        assert live_by_rule[rule] == shadow_by_rule[rule] - added[rule] + removed[rule]


@FIXED_SETTINGS
@given(histories(), st.data())
def test_a_promotion_at_an_instant_judges_what_came_before_under_the_old_version(
    history: tuple[list[TransactionEvent], list[LoanEvent]], data: st.DataObject
) -> None:
    txns, loans = history
    natural = in_time_order(txns, loans)
    times = sorted({to_us(e.ts) for e in natural})
    at = data.draw(st.sampled_from(times), label="promoted at") + data.draw(st.sampled_from([0, 1, -1]))
    timeline = Timeline((InForce(BEGINNING, 1, LIVE), InForce(at, 2, CANDIDATE)))
    expected = reference(natural, lambda ts: LIVE if ts < at else CANDIDATE)
    delivered, restarts = a_delivery(data, txns, loans)
    assert step_over(delivered, timeline, restarts)[0] == expected


@FIXED_SETTINGS
@given(histories())
def test_the_shadow_keeps_a_memory_of_its_own(history: tuple[list[TransactionEvent], list[LoanEvent]]) -> None:
    natural = in_time_order(*history)
    _, _, alone = step_over(natural, Timeline.fixed(LIVE))
    _, _, beside = step_over(natural, Timeline.fixed(LIVE, shadow=CANDIDATE))
    _, _, candidate = step_over(natural, Timeline.fixed(CANDIDATE))
    for cid, state in beside.items():
        memory = dict(state.rule_state)
        held = memory.pop(SHADOW_MEMORY)
        assert orjson.dumps(memory) == orjson.dumps(alone[cid].rule_state)  # the live memory as without it
        assert orjson.dumps(held[1]) == orjson.dumps(candidate[cid].rule_state)


def test_a_shadow_stopped_or_replaced_drops_its_memory_and_a_new_one_starts_fresh() -> None:
    cid = "C"
    events = [_txn(cid, n, dt.datetime(2024, 3, 1, 10, tzinfo=ZONE) + dt.timedelta(days=n), 9_000) for n in range(6)]
    first = ShadowRules(4, CANDIDATE, BEGINNING)
    state = CustomerState(cid)
    provider = RulesProvider(None)
    step = RulesStep(CONFIG, provider)
    provider.follow(Timeline((InForce(BEGINNING, 1, LIVE),), first))
    step.refresh()
    step(state, events[0])
    assert state.rule_state[SHADOW_MEMORY][0] == first.run
    provider.follow(Timeline.fixed(LIVE))  # stopped
    step.refresh()
    step(state, events[1])
    assert SHADOW_MEMORY not in state.rule_state
    later = ShadowRules(4, CANDIDATE, to_us(events[4].ts))  # the same version again, later: a new run
    provider.follow(Timeline((InForce(BEGINNING, 1, LIVE),), later))
    step.refresh()
    _, before_its_start = step(state, events[2])
    assert SHADOW_MEMORY not in state.rule_state and not [e for e in before_its_start if e.startswith(SHADOW_HEAD)]
    step(state, events[4])
    assert state.rule_state[SHADOW_MEMORY][0] == later.run


def _txn(cid: str, n: int, when: dt.datetime, amount: int, direction: str = "credit") -> TransactionEvent:
    return TransactionEvent.model_validate(
        {"txn_id": f"{cid}-{n}", "customer_id": cid, "account_id": cid, "ts": when.isoformat(),
         "direction": direction, "amount": str(amount), "kind": "transfer_in", "external": True}
    )  # fmt: skip


def test_a_timeline_is_named_and_stored_so_that_another_process_replays_it() -> None:
    plain = Timeline.fixed(CANDIDATE)
    assert (plain.fingerprint, plain.json) == fingerprint(CANDIDATE)  # one entry: the rules as they always were
    promoted = Timeline((InForce(BEGINNING, 1, LIVE), InForce(10**15, 2, CANDIDATE)), ShadowRules(3, LIVE, 5))
    again = Timeline.from_json(promoted.json)
    assert again.fingerprint == promoted.fingerprint and again.json == promoted.json
    assert again.at(10**15 - 1) == LIVE and again.at(10**15) == CANDIDATE and again.at(-(10**18)) == LIVE
    assert again.shadow == ShadowRules(3, LIVE, 5)
    reader = RulesStep(CONFIG, RulesProvider(None))
    assert reader.learn(promoted.json) == promoted.fingerprint and reader.replay_step(promoted.fingerprint)
    assert reader.learn(fingerprint(LIVE)[1]) == fingerprint(LIVE)[0]  # an entry from before versions
    with pytest.raises(ValueError, match="stored rules cannot be read"):
        reader.learn(b'{"timeline": [{"effective_us": 0}]}')


def test_of_two_promotions_at_one_instant_the_later_is_in_force() -> None:
    timeline = Timeline((InForce(BEGINNING, 1, LIVE), InForce(7, 2, CANDIDATE), InForce(7, 1, LIVE)))
    assert timeline.at(7) == LIVE and timeline.version_at(8) == 1 and len(timeline.entries) == 2


def test_shadow_records_count_nowhere_live_and_are_kept_by_version_and_id() -> None:
    cid = "S"
    start = dt.datetime(2024, 3, 1, 10, tzinfo=ZONE)
    events = [_txn(cid, 0, start, 2_000), _txn(cid, 1, start + dt.timedelta(days=1), 30_000)]
    events += [_txn(cid, 2 + n, start + dt.timedelta(days=2 + n), 28_000, "debit") for n in range(3)]
    _, records, _ = step_over(events, Timeline((InForce(BEGINNING, 1, LIVE),), ShadowRules(9, CANDIDATE, 0)))
    assert records, "the candidate finds something here"
    board = BoardDelta()
    for record in records:
        board.add_finding(record)
        assert record["shadow_version"] == 9 and record["customer_id"] == cid
    assert not board  # the 看板 counts no shadow record
    messages = [(SHADOW, cid.encode(), orjson.dumps(r)) for r in records] + [("fundflow.alerts.v1", None, b"{}")]
    kept = shadow_by_version(messages)
    assert list(kept) == [9] and len(kept[9]) == len(records)

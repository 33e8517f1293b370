"""The case desk hears retractions and history (docs/cases.md, "Retractions and history"), on a
real Redis through the real API: a retraction closes the untouched case its finding opened and
annotates any other, once per retraction, never opens a case and never moves a rule's
precision; a history finding opens no case unless the desk is told to take them."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from cases.model import RETRACTED, OnRetraction, on_retraction
from cases.store import CaseStore, Taken
from rules.config import RulesConfig
from rules.engine import Finding as RuleFinding
from rules.engine import judge
from rules.events import TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_transaction
from streams.api.case_models import CaseDetail, CaseList, RuleOutcomes, RulesPrecision
from streams.api.cases import CASES
from streams.api.server import create_api
from streams.local.servers import free_port
from streams.pipeline import outbox_entry
from streams.rulestep import TOPIC_OF_KIND
from streams.storage.keys import Keys
from streams.storage.store import StateStore
from streams.topics import HISTORY
from tests.support.desk import PREFIX, SETTINGS, Client, finding, get, post
from tests.support.strategies import reversal_of


def retraction(of: dict[str, Any], reversal_txn: str = "R1") -> dict[str, Any]:
    """The retraction of ``of`` exactly as the rules engine renders it (``rules.engine._retract``)."""
    made = RuleFinding(of["type"], of["rule"], of["category"], of["severity"], of["customer_id"], of["tier"],
                       1_700_000_100_000_000, reversal_txn,
                       {"retracts": of["id"], "reversed_txn_id": of["trigger_txn_id"]}, "taken back",
                       {"retracts": of["id"], "reason": "trigger_reversed"})  # fmt: skip
    return made.as_dict(SETTINGS.zone)


def history(f: dict[str, Any]) -> dict[str, Any]:
    """``f`` from before the go-live, as ``streams.rulestep.finding_entry`` marks it."""
    return {**f, "history": True}


async def feed(client: Client, *findings: dict[str, Any]) -> None:
    """Findings written to the feed by the workers' own code (a history one to its own topic),
    then taken into cases by the intake."""
    store = StateStore(client.app[CASES].redis, Keys(PREFIX))
    published: dict[str, list[bytes]] = {}
    for f in findings:
        topic = HISTORY if f.get("history") else TOPIC_OF_KIND[f["type"]]
        published.setdefault(f["customer_id"], []).append(outbox_entry(topic, f["customer_id"], orjson.dumps(f)))
    await store.confirm_published(published)
    while await client.app[CASES].intake_feed():
        pass


def retractions(outcome: str) -> float:
    return REGISTRY.get_sample_value("fundflow_case_retractions_total", {"outcome": outcome}) or 0.0


async def cases(client: Client, customer: str) -> list[CaseDetail]:
    """Every case of ``customer``, newest first, with its trail and findings."""
    listed = CaseList.model_validate(await get(client, f"/cases?customer={customer}"))
    return [CaseDetail.model_validate(await get(client, f"/cases/{c.id}")) for c in listed.cases]


async def precision(client: Client) -> list[RuleOutcomes]:
    return RulesPrecision.model_validate(await get(client, "/rules/precision")).rules


def trail(case: CaseDetail) -> list[tuple[str, str]]:
    return [(e.actor, e.action) for e in case.audit]


async def test_a_retraction_closes_the_case_its_finding_opened_and_no_precision_moves(desk: Client) -> None:
    other = finding("C2")
    await feed(desk, other)
    (case,) = await cases(desk, "C2")
    await post(desk, "li", f"/cases/{case.case.id}/transition", {"to": "resolved", "outcome": "confirmed_outflow"})
    alert = finding("C1")
    await feed(desk, alert)
    before = await precision(desk)
    closed_before = retractions("closed")
    await feed(desk, retraction(alert))
    (case,) = await cases(desk, "C1")
    assert case.case.status == "dismissed" and case.case.outcome == RETRACTED and case.case.closed_at is not None
    assert case.case.retracted == 1 and case.case.count == 1 and case.case.assignee is None
    assert case.case.first_action_at is None  # no person acted: the intake closed it
    assert case.case.note is not None and "trigger_reversed" in case.case.note
    assert trail(case) == [("system", "opened"), ("system", "finding_retracted"), ("system", "transition")]
    taken_back = case.audit[1].model_dump(by_alias=True)
    assert taken_back["finding_id"] == alert["id"] and taken_back["reason"] == "trigger_reversed"
    assert taken_back["retraction_id"] == retraction(alert)["id"]
    assert [f.id for f in case.findings] == [alert["id"]]  # the retraction is no finding of the case
    assert await precision(desk) == before  # neither a false positive, nor confirmed, nor dismissed by a person
    assert [(r.rule, r.resolved, r.confirmed, r.dismissed) for r in before] == [("large_external_outflow", 1, 1, 0)]
    assert retractions("closed") == closed_before + 1
    # the slot is free again: the customer's next finding opens a new case
    await feed(desk, finding("C1"))
    assert [(c.case.status, c.case.count) for c in await cases(desk, "C1")] == [("open", 1), ("dismissed", 1)]


async def test_a_worked_case_is_annotated_not_closed(desk: Client) -> None:
    taken, commented, resolved = finding("C1"), finding("C2"), finding("C3")
    await feed(desk, taken, commented, resolved)
    ids = {c: (await cases(desk, c))[0].case.id for c in ("C1", "C2", "C3")}
    await post(desk, "li", f"/cases/{ids['C1']}/assign", {"assignee": "li.wei"})
    await post(desk, "li", f"/cases/{ids['C2']}/comment", {"text": "called the customer"})
    await post(desk, "li", f"/cases/{ids['C3']}/transition", {"to": "resolved", "outcome": "false_positive"})
    before = await precision(desk)
    annotated = retractions("annotated")
    await feed(desk, retraction(taken), retraction(commented), retraction(resolved))
    for customer, status in (("C1", "open"), ("C2", "open"), ("C3", "resolved")):
        (case,) = await cases(desk, customer)
        assert case.case.status == status and case.case.retracted == 1, customer
        assert trail(case)[-1] == ("system", "finding_retracted"), customer
    (c3,) = await cases(desk, "C3")
    assert c3.case.outcome == "false_positive"  # the analyst's conclusion stands
    assert retractions("annotated") == annotated + 3
    assert await precision(desk) == before


async def test_a_case_with_another_finding_is_annotated_and_closed_once_all_are_taken_back(desk: Client) -> None:
    first, second = finding("C1"), finding("C1", rule="net_outflow_streak", severity="high")
    await feed(desk, first, second)
    await feed(desk, retraction(first))
    (case,) = await cases(desk, "C1")
    assert (case.case.status, case.case.count, case.case.retracted) == ("open", 2, 1)
    assert trail(case) == [("system", "opened"), ("system", "finding_added"), ("system", "finding_retracted")]
    assert on_retraction(await desk.app[CASES].get(case.case.id)) is OnRetraction.CLOSE  # the last one left
    await feed(desk, retraction(second, "R2"))
    (case,) = await cases(desk, "C1")
    assert (case.case.status, case.case.outcome, case.case.retracted) == ("dismissed", RETRACTED, 2)


async def test_a_replayed_retraction_changes_nothing(desk: Client) -> None:
    alert, kept = finding("C1"), finding("C2")
    await feed(desk, alert, kept)
    await feed(desk, retraction(alert))
    await feed(desk, retraction(kept))
    await post(desk, "li", f"/cases/{(await cases(desk, 'C2'))[0].case.id}/comment", {"text": "seen"})
    before = [await cases(desk, c) for c in ("C1", "C2")]
    counted = {o: retractions(o) for o in ("closed", "annotated", "unmatched")}
    # the feed repeats them (a worker crash), and a second reversal's retraction names the same finding
    await feed(desk, retraction(alert), retraction(kept), retraction(alert, "R9"))
    store: CaseStore = desk.app[CASES]
    assert await store.intake([retraction(alert), retraction(kept)]) == Taken(0, 0, 0, 0, 0)
    assert [await cases(desk, c) for c in ("C1", "C2")] == before
    assert {o: retractions(o) for o in counted} == counted


async def test_a_retraction_of_a_finding_that_opened_no_case_changes_nothing(desk: Client) -> None:
    await feed(desk, finding("C1"))
    (case,) = await cases(desk, "C1")
    unmatched = retractions("unmatched")
    push = finding("C1", rule="push_x", category="sweep", kind="push")
    await feed(desk, retraction(finding("C1", rule="fast_in_fast_out")), retraction(finding("C9")))
    await feed(desk, push, retraction(push))  # a push opens no case, so its retraction finds none
    assert await cases(desk, "C1") == [case] and await cases(desk, "C9") == []
    assert CaseList.model_validate(await get(desk, "/cases")).total == 1
    assert retractions("unmatched") == unmatched + 2  # a push's retraction is skipped like the push


async def test_a_finding_that_arrives_after_its_retraction_opens_no_case(desk: Client) -> None:
    late = finding("C1")
    await feed(desk, retraction(late))
    await feed(desk, late)
    assert await cases(desk, "C1") == []


async def test_a_real_reversal_closes_the_case_of_what_it_triggered(desk: Client) -> None:
    """The rules engine's own findings and retractions: a large credit fires a collection
    alert; its reversal takes it back, and the desk closes the case it opened."""
    zone, config = SETTINGS.zone, StateConfig(SETTINGS.zone)

    def event(txn_id: str, day: int, hour: int, direction: str, amount: str) -> TransactionEvent:
        ts = dt.datetime(2024, 3, day, hour, tzinfo=zone).isoformat()
        return TransactionEvent.model_validate({"txn_id": txn_id, "customer_id": "c", "account_id": "a", "ts": ts,
                                                "direction": direction, "amount": amount})  # fmt: skip

    events = [e for i in range(1, 8) for e in (event(f"c{i}", i, 10, "credit", "5000"),
                                                event(f"d{i}", i, 12, "debit", "5000"))]  # fmt: skip
    big = event("big", 9, 10, "credit", "900000")
    events += [big, reversal_of(big, "rev", dt.datetime(2024, 3, 9, 11, tzinfo=zone))]
    state, found = CustomerState("c"), []
    for e in events:
        before = state.balance
        assert apply_transaction(state, e, config) is Outcome.APPLIED
        judged = judge(state, e, before, RulesConfig(), config).findings
        found += [orjson.loads(orjson.dumps(f.as_dict(zone))) for f in judged]
    taking_back = [f for f in found if f["trigger_txn_id"] == "rev"]
    assert taking_back and all(f.get("retracts") for f in taking_back)
    await feed(desk, *[f for f in found if f["trigger_txn_id"] != "rev"])
    store: CaseStore = desk.app[CASES]
    was = {c.case.id: (await store.get(c.case.id), {f.id for f in c.findings}) for c in await cases(desk, "c")}
    await feed(desk, *taking_back)
    retracted = {f["retracts"] for f in taking_back}
    for case_id, (before_, ids) in was.items():
        assert before_ is not None
        after = await store.get(case_id)
        assert after is not None
        gone = len(ids & retracted)
        untouched = before_.status == "open" and before_.first_action_at_ms is None
        closes = gone > 0 and untouched and before_.retracted + gone >= before_.count
        assert after.retracted == before_.retracted + gone
        assert (after.status, after.outcome) == (("dismissed", RETRACTED) if closes else (before_.status, None))
    assert any(c.case.outcome == RETRACTED for c in await cases(desk, "c"))


async def test_a_history_finding_opens_no_case_by_default(desk: Client) -> None:
    old = history(finding("C1"))
    await feed(desk, old, history(finding("C2", kind="recommendation", rule="sweep_offer", category="sweep")))
    assert CaseList.model_validate(await get(desk, "/cases")).total == 0
    await feed(desk, retraction(old))  # its retraction finds no case, and opens none
    assert CaseList.model_validate(await get(desk, "/cases")).total == 0
    await feed(desk, finding("C1"))  # a live finding opens its case as always, unmarked
    (case,) = await cases(desk, "C1")
    assert case.case.history is False and case.case.count == 1


@pytest.fixture
async def history_desk(redis_url: str) -> AsyncIterator[Client]:
    """The desk told to take history findings (``FUNDFLOW_CASES_FROM_HISTORY=true``)."""
    told = SETTINGS.model_copy(update={"cases_from_history": True})
    app = create_api(told, redis_url, f"127.0.0.1:{free_port()}")
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_with_the_setting_a_history_finding_opens_a_case_marked_history(history_desk: Client) -> None:
    old, newer = history(finding("C1")), history(finding("C1", rule="net_outflow_streak"))
    await feed(history_desk, old, newer)
    (case,) = await cases(history_desk, "C1")
    assert case.case.history is True and case.case.count == 2
    assert [f.model_dump().get("history") for f in case.findings] == [True, True]
    await feed(history_desk, finding("C1"))  # a live finding joins: the case is no longer history alone
    (case,) = await cases(history_desk, "C1")
    assert case.case.history is False and case.case.count == 3
    other = history(finding("C2"))
    await feed(history_desk, other)
    await feed(history_desk, retraction(other))  # history is taken back like any finding
    (case,) = await cases(history_desk, "C2")
    assert (case.case.status, case.case.outcome, case.case.history) == ("dismissed", RETRACTED, True)

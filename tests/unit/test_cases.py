"""The pure case rules: who may do what to a case in which state, and rule precision."""

from __future__ import annotations

import dataclasses

import pytest

from cases.store import (
    Actor,
    Assign,
    Case,
    Comment,
    Refused,
    Transition,
    decide,
    outcomes_for,
    priority,
)
from tests.reference import rule_precision

LI, WANG = Actor("li.wei", "analyst"), Actor("wang", "analyst")
BOSS, VIEWER = Actor("zhang", "supervisor"), Actor("v", "viewer")
NAMES = frozenset({"li.wei", "wang", "zhang"})
NOW = 1_800_000_000_000


def case(**changes: object) -> Case:
    base = Case(
        id=7, type="alert", customer_id="C1", category="outflow_risk", rule="large_external_outflow",
        rules=("large_external_outflow",), severity="high", tier="II", priority=1, status="open", assignee=None,
        count=1, opened_at_ms=NOW - 60_000, updated_at_ms=NOW - 60_000, first_action_at_ms=None, closed_at_ms=None,
        outcome=None, note=None, first_finding_ts="", last_finding_ts="", version=3,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def refused(status: int, c: Case, actor: Actor, action: object, match: str = "") -> None:
    with pytest.raises(Refused, match=match) as caught:
        decide(c, actor, action, NOW, NAMES)  # type: ignore[arg-type]
    assert caught.value.status == status, caught.value.message


def test_priority_from_severity_and_tier() -> None:
    assert priority("high", "I") == 1 and priority("high", "IV") == 2 and priority("high", None) == 2
    assert priority("medium", "II") == 2 and priority("medium", "III") == 3
    assert priority("low", "I") == 3 and priority("low", None) == 4 and priority("info", "I") == 4


def test_viewer_changes_nothing() -> None:
    for action in (Comment("hi"), Comment(""), Assign("li.wei"), Transition("in_progress"), Transition("dismissed")):
        refused(403, case(), VIEWER, action, "viewer")


def test_analyst_takes_an_unassigned_case_by_working_it() -> None:
    change = decide(case(), LI, Transition("in_progress"), NOW, NAMES)
    assert change.case.status == "in_progress" and change.case.assignee == "li.wei"
    assert change.case.first_action_at_ms == NOW and change.case.version == 4
    assert [(e["action"], e.get("from"), e.get("to")) for e in change.audit] == [
        ("assign", None, "li.wei"),
        ("transition", "open", "in_progress"),
    ]
    assert change.fields == {"assignee": "li.wei", "status": "in_progress", "updated_at": str(NOW),
                             "first_action_at": str(NOW)}  # fmt: skip
    assert ("zadd", "ix:assignee:li.wei") in change.moves and ("zrem", "ix:status:open") in change.moves


def test_analyst_cannot_touch_someone_elses_case() -> None:
    theirs = case(assignee="wang", status="in_progress")
    for action in (Comment("x"), Transition("resolved", "false_positive"), Transition("dismissed"), Assign("li.wei")):
        refused(403, theirs, LI, action, "assigned to wang")
    assert decide(theirs, WANG, Comment("called"), NOW, NAMES).audit[0]["text"] == "called"
    resolved = decide(theirs, BOSS, Transition("resolved", "confirmed_outflow"), NOW, NAMES).case
    assert resolved.status == "resolved" and resolved.assignee == "wang" and resolved.closed_at_ms == NOW


def test_only_a_supervisor_assigns_others() -> None:
    refused(403, case(), LI, Assign("wang"), "only to themselves")
    assert decide(case(), LI, Assign("li.wei"), NOW, NAMES).case.assignee == "li.wei"
    assert decide(case(assignee="li.wei"), LI, Assign(None), NOW, NAMES).case.assignee is None
    assert decide(case(assignee="li.wei"), BOSS, Assign("wang"), NOW, NAMES).case.assignee == "wang"
    refused(422, case(), BOSS, Assign("nobody"), "unknown assignee")
    refused(409, case(assignee="wang"), BOSS, Assign("wang"), "already assigned")
    refused(409, case(status="resolved", outcome="false_positive"), BOSS, Assign("wang"), "reopen")


def test_resolution_needs_an_outcome_of_the_category() -> None:
    refused(422, case(), LI, Transition("resolved"), "confirmed_outflow, retained_after_contact")
    refused(422, case(), LI, Transition("resolved", "funds_left"), "must be one of")
    refused(422, case(category="collection"), LI, Transition("resolved", "confirmed_outflow"), "funds_retained")
    refused(422, case(), LI, Transition("resolved", "other"), "note is required")
    refused(422, case(), LI, Transition("dismissed", "false_positive"), "only resolving")
    done = decide(case(), LI, Transition("resolved", "other", note="moved abroad"), NOW, NAMES)
    assert done.case.outcome == "other" and done.case.note == "moved abroad" and done.slot == "release"
    assert outcomes_for("collection") == ("funds_retained", "funds_left", "false_positive", "other")
    assert "other" in outcomes_for("sweep")


def test_reopen_is_a_supervisors_with_a_reason() -> None:
    closed = case(status="resolved", outcome="false_positive", assignee="li.wei", closed_at_ms=NOW - 1)
    refused(403, closed, LI, Transition("open", reason="wrong"), "only a supervisor")
    refused(422, closed, BOSS, Transition("open"), "reason")
    refused(422, closed, BOSS, Transition("open", reason="   "), "reason")
    refused(409, closed, BOSS, Transition("dismissed"), "reopen it first")
    again = decide(closed, BOSS, Transition("open", reason="customer called back"), NOW, NAMES)
    assert again.case.status == "open" and again.case.outcome is None and again.case.closed_at_ms is None
    assert again.slot == "claim" and again.audit[0]["reason"] == "customer called back"
    assert again.audit[0]["outcome_was"] == "false_positive"
    refused(409, case(status="in_progress"), BOSS, Transition("open", reason="x"), "only a resolved or dismissed")


def test_bad_transitions_and_texts() -> None:
    refused(422, case(), LI, Transition("closed"), "unknown status")
    refused(409, case(), LI, Transition("open", reason="x"), "already open")
    refused(409, case(status="in_progress", assignee="li.wei"), LI, Transition("in_progress"), "already")
    refused(422, case(), LI, Comment(""), "comment text is required")
    refused(422, case(), LI, Comment("x" * 4001), "longer than 4000")


def test_first_action_is_kept() -> None:
    later = decide(case(first_action_at_ms=NOW - 5), LI, Comment("again"), NOW, NAMES)
    assert later.case.first_action_at_ms == NOW - 5 and "first_action_at" not in later.fields


def test_rule_precision_from_outcomes() -> None:
    opened = NOW - 100_000
    closed = [
        case(id=1, status="resolved", outcome="confirmed_outflow", opened_at_ms=opened,
             first_action_at_ms=opened + 10_000, closed_at_ms=opened + 40_000),
        case(id=2, status="resolved", outcome="retained_after_contact", opened_at_ms=opened,
             first_action_at_ms=opened + 20_000, closed_at_ms=opened + 60_000),
        case(id=3, status="resolved", outcome="false_positive", opened_at_ms=opened,
             first_action_at_ms=opened + 30_000, closed_at_ms=opened + 80_000,
             rules=("large_external_outflow", "drain")),
        case(id=4, status="dismissed", opened_at_ms=opened, closed_at_ms=opened + 1, rules=("drain",)),
    ]  # fmt: skip
    rows = {r.rule: r for r in rule_precision(closed, {"large_external_outflow": 5, "drain": 2}, {"drain": 3})}
    big = rows["large_external_outflow"]
    assert (big.resolved, big.confirmed, big.dismissed, big.cases) == (3, 2, 0, 5)
    assert big.precision == 0.6667 and big.median_first_action_seconds == 20 and big.median_resolution_seconds == 60
    drain = rows["drain"]
    assert (drain.resolved, drain.confirmed, drain.dismissed, drain.precision, drain.findings) == (1, 0, 1, 0.0, 3)
    assert rule_precision([], {"x": 1}, {})[0].precision is None

"""The pure case rules (``cases.model``): who may do what to a case in which state, what
changes, why a request is refused, and rule precision. No Redis here: the store's tests
are in ``tests/pipeline/test_cases.py`` and ``tests/pipeline/test_precision_tallies.py``."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from cases.model import (
    CASE_TYPES,
    CATEGORIES,
    CONFIRMING,
    GENERIC_OUTCOMES,
    OUTCOMES,
    RETRACTED,
    STATUSES,
    Actor,
    Assign,
    Case,
    Comment,
    OnRetraction,
    Reason,
    Refused,
    Transition,
    counts_for_precision,
    decide,
    on_retraction,
    open_slot,
    outcomes_for,
    priority,
    valid_name,
)
from streams.api.cases import STATUS_OF
from tests.support.reference import rule_precision

FORBIDDEN, NOT_FOUND, CONFLICT, INVALID = Reason.FORBIDDEN, Reason.NOT_FOUND, Reason.CONFLICT, Reason.INVALID

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


def refused(reason: Reason, c: Case, actor: Actor, action: object, match: str | None = None) -> None:
    with pytest.raises(Refused, match=match) as caught:
        decide(c, actor, action, NOW, NAMES)  # type: ignore[arg-type]
    assert caught.value.reason == reason, caught.value.message


def test_priority_from_severity_and_tier() -> None:
    assert priority("high", "I") == 1 and priority("high", "IV") == 2 and priority("high", None) == 2
    assert priority("medium", "II") == 2 and priority("medium", "III") == 3
    assert priority("low", "I") == 3 and priority("low", None) == 4 and priority("info", "I") == 4


def test_viewer_changes_nothing() -> None:
    for action in (Comment("hi"), Comment(""), Assign("li.wei"), Transition("in_progress"), Transition("dismissed", "duplicate")):  # noqa: E501
        refused(FORBIDDEN, case(), VIEWER, action, "viewer")


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
    for action in (Comment("x"), Transition("resolved", "false_positive"), Transition("dismissed", "duplicate"), Assign("li.wei")):  # noqa: E501
        refused(FORBIDDEN, theirs, LI, action, "assigned to wang")
    assert decide(theirs, WANG, Comment("called"), NOW, NAMES).audit[0]["text"] == "called"
    resolved = decide(theirs, BOSS, Transition("resolved", "confirmed_outflow"), NOW, NAMES).case
    assert resolved.status == "resolved" and resolved.assignee == "wang" and resolved.closed_at_ms == NOW


def test_only_a_supervisor_assigns_others() -> None:
    refused(FORBIDDEN, case(), LI, Assign("wang"), "only to themselves")
    assert decide(case(), LI, Assign("li.wei"), NOW, NAMES).case.assignee == "li.wei"
    assert decide(case(assignee="li.wei"), LI, Assign(None), NOW, NAMES).case.assignee is None
    assert decide(case(assignee="li.wei"), BOSS, Assign("wang"), NOW, NAMES).case.assignee == "wang"
    refused(INVALID, case(), BOSS, Assign("nobody"), "unknown assignee")
    refused(CONFLICT, case(assignee="wang"), BOSS, Assign("wang"), "already assigned")
    refused(CONFLICT, case(status="resolved", outcome="false_positive"), BOSS, Assign("wang"), "reopen")


def test_resolution_needs_an_outcome_of_the_category() -> None:
    refused(INVALID, case(), LI, Transition("resolved"), "confirmed_outflow, retained_after_contact")
    refused(INVALID, case(), LI, Transition("resolved", "funds_left"), "must be one of")
    refused(INVALID, case(category="collection"), LI, Transition("resolved", "confirmed_outflow"), "funds_retained")
    refused(INVALID, case(), LI, Transition("resolved", "other"), "note is required")
    refused(INVALID, case(), LI, Transition("dismissed"), "a dismissal needs a reason")
    refused(INVALID, case(), LI, Transition("dismissed", "funds_left"), "a dismissal needs a reason")
    refused(INVALID, case(), LI, Transition("in_progress", "duplicate"), "only resolving or dismissing")
    done = decide(case(), LI, Transition("resolved", "other", note="moved abroad"), NOW, NAMES)
    assert done.case.outcome == "other" and done.case.note == "moved abroad" and done.slot == "release"
    assert outcomes_for("collection") == ("funds_retained", "funds_left", "false_positive", "other")
    assert "other" in outcomes_for("sweep")


def test_reopen_is_a_supervisors_with_a_reason() -> None:
    closed = case(status="resolved", outcome="false_positive", assignee="li.wei", closed_at_ms=NOW - 1)
    refused(FORBIDDEN, closed, LI, Transition("open", reason="wrong"), "only a supervisor")
    refused(INVALID, closed, BOSS, Transition("open"), "reason")
    refused(INVALID, closed, BOSS, Transition("open", reason="   "), "reason")
    refused(CONFLICT, closed, BOSS, Transition("dismissed", "duplicate"), "reopen it first")
    again = decide(closed, BOSS, Transition("open", reason="customer called back"), NOW, NAMES)
    assert again.case.status == "open" and again.case.outcome is None and again.case.closed_at_ms is None
    assert again.slot == "claim" and again.audit[0]["reason"] == "customer called back"
    assert again.audit[0]["outcome_was"] == "false_positive"
    refused(CONFLICT, case(status="in_progress"), BOSS, Transition("open", reason="x"), "only a resolved or dismissed")


def test_bad_transitions_and_texts() -> None:
    refused(INVALID, case(), LI, Transition("closed"), "unknown status")
    refused(CONFLICT, case(), LI, Transition("open", reason="x"), "already open")
    refused(CONFLICT, case(status="in_progress", assignee="li.wei"), LI, Transition("in_progress"), "already")
    refused(INVALID, case(), LI, Comment(""), "comment text is required")
    refused(INVALID, case(), LI, Comment("x" * 4001), "longer than 4000")


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


# ---------------------------------------------------------------- the lifecycle, whole

# (from, to) -> None when a supervisor may move an assigned case so, else the refusal's reason
MOVES: dict[tuple[str, str], Reason | None] = {
    ("open", "open"): CONFLICT, ("open", "in_progress"): None, ("open", "resolved"): None,
    ("open", "dismissed"): None,
    ("in_progress", "open"): CONFLICT, ("in_progress", "in_progress"): CONFLICT, ("in_progress", "resolved"): None,
    ("in_progress", "dismissed"): None,
    ("resolved", "open"): None, ("resolved", "in_progress"): CONFLICT, ("resolved", "resolved"): CONFLICT,
    ("resolved", "dismissed"): CONFLICT,
    ("dismissed", "open"): None, ("dismissed", "in_progress"): CONFLICT, ("dismissed", "resolved"): CONFLICT,
    ("dismissed", "dismissed"): CONFLICT,
}  # fmt: skip


def _move(to: str) -> Transition:
    if to == "resolved":
        return Transition("resolved", "confirmed_outflow")
    if to == "dismissed":
        return Transition("dismissed", "not_actionable")
    return Transition(to, reason="customer called back" if to == "open" else None)


@pytest.mark.parametrize(("start", "to"), sorted(MOVES))
def test_every_move_between_statuses(start: str, to: str) -> None:
    closed = start in ("resolved", "dismissed")
    before = case(status=start, assignee="wang", outcome="false_positive" if start == "resolved" else None,
                  closed_at_ms=NOW - 1 if closed else None)  # fmt: skip
    expected = MOVES[(start, to)]
    if expected is not None:
        refused(expected, before, BOSS, _move(to))
        return
    change = decide(before, BOSS, _move(to), NOW, NAMES)
    assert change.case.status == to and change.case.version == before.version + 1
    assert change.fields["status"] == to and change.case.updated_at_ms == NOW
    assert ("zrem", f"ix:status:{start}") in change.moves and ("zadd", f"ix:status:{to}") in change.moves
    assert change.slot == {"open": "claim", "in_progress": "", "resolved": "release", "dismissed": "release"}[to]
    assert (change.case.closed_at_ms == NOW) == (to in ("resolved", "dismissed"))
    assert change.audit[-1]["action"] == "transition" and change.audit[-1]["from"] == start


def test_a_comment_moves_nothing_but_the_trail() -> None:
    change = decide(case(assignee="li.wei", status="in_progress"), LI, Comment("called"), NOW, NAMES)
    assert change.moves == [] and change.slot == "" and change.case.status == "in_progress"
    assert change.fields == {"updated_at": str(NOW), "first_action_at": str(NOW)}
    assert change.audit == [{"at": NOW, "actor": "li.wei", "role": "analyst", "action": "comment", "text": "called"}]


# ---------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("actor", "assignee", "allowed"),
    [
        (VIEWER, None, False), (VIEWER, "v", False),
        (LI, None, True), (LI, "li.wei", True), (LI, "wang", False),
        (BOSS, None, True), (BOSS, "wang", True),
    ],
)  # fmt: skip
def test_who_works_a_case(actor: Actor, assignee: str | None, allowed: bool) -> None:
    work = (Comment("x"), Transition("in_progress"), Transition("resolved", "false_positive"),
            Transition("dismissed", "duplicate"))  # fmt: skip
    for action in work:
        if allowed:  # a comment changes no state: the version stays (no compare-and-set on it)
            version = 3 if isinstance(action, Comment) else 4
            assert decide(case(assignee=assignee), actor, action, NOW, NAMES).case.version == version
        else:
            refused(FORBIDDEN, case(assignee=assignee), actor, action)


def test_roles_rank() -> None:
    assert BOSS.at_least("analyst") and BOSS.at_least("viewer") and LI.at_least("analyst")
    assert not LI.at_least("supervisor") and not VIEWER.at_least("analyst") and VIEWER.at_least("viewer")


# ---------------------------------------------------------------- outcomes, priority, names


def test_every_category_has_its_outcomes() -> None:
    assert set(OUTCOMES) <= set(CATEGORIES)
    for category in CATEGORIES:
        allowed = outcomes_for(category)
        assert "false_positive" in allowed and "other" in allowed
        assert allowed == OUTCOMES.get(category, GENERIC_OUTCOMES)
    every = {outcome for category in CATEGORIES for outcome in outcomes_for(category)}
    assert CONFIRMING.issubset(every)
    assert not CONFIRMING & {"false_positive", "other", "not_actionable"}


def test_priority_for_every_severity_and_tier() -> None:
    """Tiers I and II raise a case one step; an unknown severity counts as info."""
    table = {"high": (1, 2), "medium": (2, 3), "low": (3, 4), "info": (4, 4), "unknown": (4, 4)}
    for severity, (top_tiers, others) in table.items():
        assert priority(severity, "I") == priority(severity, "II") == top_tiers
        assert priority(severity, "III") == priority(severity, "IV") == priority(severity, None) == others


def test_names_and_slots() -> None:
    assert valid_name("li.wei") and valid_name("a@b-c_1") and not valid_name("") and not valid_name("a b")
    assert not valid_name("x" * 65)
    assert case().slot == open_slot("alert", "C1", "outflow_risk") == "alert|C1|outflow_risk"
    assert set(CASE_TYPES) == {"alert", "recommendation"} and STATUSES[0] == "open"


# ---------------------------------------------------------------- refusals


def test_a_refusal_carries_a_reason_and_a_message() -> None:
    with pytest.raises(Refused) as caught:
        decide(case(), VIEWER, Comment("hi"), NOW, NAMES)
    assert caught.value.reason is Reason.FORBIDDEN and caught.value.reason.value == "forbidden"
    assert str(caught.value) == caught.value.message == "a viewer cannot comment on it"


def test_the_http_layer_answers_every_reason_with_its_own_status() -> None:
    """One dict maps reasons to statuses (``streams.api.cases.STATUS_OF``): every reason, no two alike."""
    assert set(STATUS_OF) == set(Reason)
    assert len(set(STATUS_OF.values())) == len(Reason)
    assert STATUS_OF[Reason.NOT_FOUND] == 404 and STATUS_OF[Reason.INVALID] == 422


ROOT = Path(__file__).resolve().parents[2]
HTTP_STATUSES = {200, 201, 204, 400, 401, 403, 404, 409, 422, 503}
PURE_IMPORTS = {"__future__", "dataclasses", "re", "collections.abc", "enum", "typing", "streams.settings"}


def test_the_rules_are_pure_and_the_desk_speaks_no_http() -> None:
    """``cases/model.py`` imports no Redis, no I/O, no clock; no module of ``cases/`` names an HTTP status."""
    model = ast.parse((ROOT / "cases" / "model.py").read_text())
    imported = {alias.name for node in ast.walk(model) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(model) if isinstance(node, ast.ImportFrom)}
    assert imported <= PURE_IMPORTS, imported - PURE_IMPORTS
    for path in sorted((ROOT / "cases").glob("*.py")):
        numbers = {
            node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)
            and type(node.value) is int
        }  # fmt: skip
        assert not numbers & HTTP_STATUSES, (path.name, numbers & HTTP_STATUSES)


# ---------------------------------------------------------------- retractions


def test_a_retraction_closes_only_an_untouched_case_left_with_nothing() -> None:
    """Closed: still open, no person acted, and the finding taken back was the last one standing."""
    close, annotate = OnRetraction.CLOSE, OnRetraction.ANNOTATE
    assert on_retraction(case()) is close
    assert on_retraction(case(count=2)) is annotate  # another finding stands
    assert on_retraction(case(count=2, retracted=1)) is close  # the other was taken back before
    assert on_retraction(case(first_action_at_ms=NOW - 5)) is annotate  # assigned, commented, started ...
    assert on_retraction(case(assignee="li.wei", first_action_at_ms=NOW - 5)) is annotate
    assert on_retraction(case(status="in_progress", first_action_at_ms=NOW - 5)) is annotate
    for closed in ("resolved", "dismissed"):  # a person's conclusion stands
        assert on_retraction(case(status=closed, outcome="confirmed_outflow", first_action_at_ms=NOW - 5)) is annotate
    reopened = decide(case(status="dismissed", first_action_at_ms=NOW - 9), BOSS, Transition("open", reason="x"),
                      NOW, NAMES).case  # fmt: skip
    assert reopened.status == "open" and on_retraction(reopened) is annotate


def test_a_retracted_case_counts_in_no_precision() -> None:
    retracted = case(status="dismissed", outcome=RETRACTED, closed_at_ms=NOW)
    assert not counts_for_precision(retracted) and not counts_for_precision(case())
    assert counts_for_precision(case(status="dismissed", closed_at_ms=NOW))
    assert counts_for_precision(case(status="resolved", outcome="false_positive", closed_at_ms=NOW))
    rows = rule_precision([retracted], {"large_external_outflow": 1}, {"large_external_outflow": 1})
    assert [(r.resolved, r.confirmed, r.dismissed, r.precision) for r in rows] == [(0, 0, 0, None)]


def test_no_person_may_choose_the_retracted_outcome() -> None:
    """Only the intake closes a case as retracted: it is no outcome of any category."""
    assert all(RETRACTED not in outcomes_for(category) for category in CATEGORIES)
    assert RETRACTED not in CONFIRMING
    refused(INVALID, case(), LI, Transition("resolved", RETRACTED), "outcome")
    refused(INVALID, case(), LI, Transition("dismissed", RETRACTED), "outcome")

"""The case rules: what a case is, who may do what to it in which state, and what changes.

One open case per customer, finding type (alert / recommendation) and rule
family (``category``): a second finding for the same three joins the case that
is open (its ``count`` grows) instead of opening another. A case moves
``open -> in_progress -> resolved | dismissed``; a supervisor may reopen a closed
one (with a reason). Resolving records an outcome from a fixed list per
category (``OUTCOMES``); what analysts conclude becomes each rule's precision
(``RulePrecision``, kept by ``cases.store``).

A retraction (the monitor takes a finding back) closes the case as ``RETRACTED`` or
annotates it (``on_retraction``); such a case counts in no precision
(``counts_for_precision``).

``decide`` is the whole of the rules people act under: given a case, an actor, an action and the
time, it answers the ``Change`` (new fields, audit entries, index moves) or raises
``Refused`` with a ``Reason``. Nothing here reads Redis, the network or a clock:
the time comes in as an argument, and ``cases.store`` applies what ``decide``
answers. How a reason reaches people (an HTTP status) is the HTTP layer's
(``streams.api.cases``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streams.settings import NAME_PATTERN, RESERVED_NAMES, Role

STATUSES = ("open", "in_progress", "resolved", "dismissed")
OPEN_STATUSES = frozenset({"open", "in_progress"})
CASE_TYPES = ("alert", "recommendation")
CATEGORIES = ("collection", "repayment", "outflow_risk", "sweep", "ledger")
SEVERITIES = ("info", "low", "medium", "high")
TIERS = ("I", "II", "III", "IV")
# Who works a case: analysts (the desk's default), or the customer's relationship manager (a
# collection opportunity or sweep the contact table routes to ``rm`` for the live tier:
# docs/contact.md).
QUEUES = ("analyst", "rm")
OUTCOMES: dict[str, tuple[str, ...]] = {
    "outflow_risk": ("confirmed_outflow", "retained_after_contact", "false_positive", "not_actionable", "other"),
    "collection": ("funds_retained", "funds_left", "false_positive", "other"),
}
GENERIC_OUTCOMES = ("confirmed", "false_positive", "other")  # repayment, sweep, ledger
# The rule was right about the customer (whatever the analyst then achieved).
CONFIRMING = frozenset({"confirmed_outflow", "retained_after_contact", "funds_retained", "funds_left", "confirmed"})
# The outcome of a case the intake closed because the monitor took its findings back (a
# retraction): never a person's choice, and never counted in a rule's precision, for the
# rule was neither right nor wrong about money that never moved.
RETRACTED = "retracted"
SYSTEM = "system"  # the actor the audit trail names for the intake (its entries also say ``by_system: true``)
# Why a case is dismissed (required): only ``false_positive`` is a judgement of the rule, and it alone of
# the dismissals counts in the rule's precision (as a case the rule got wrong); the others count nowhere.
DISMISSALS = ("false_positive", "duplicate", "not_actionable", "other")
# Names no token may carry (``RESERVED_NAMES``): the product writes them itself (the intake's ``system``,
# the demo's ``demo``, the stream quota's ``anonymous``, and ``token-N`` for the N-th plain-string token).
_RESERVED = re.compile(r"token-[0-9]+")
MAX_TEXT = 4000
MAX_COMMENTS = 1000  # per case, by default (``FUNDFLOW_CASES_MAX_COMMENTS``)
RANK: dict[Role, int] = {"viewer": 0, "analyst": 1, "supervisor": 2}
HOUR_MS = 3_600_000
# The 看板's age buckets of open cases: (label, opened at least this long ago); the last one has no end.
AGE_BUCKETS = (("<1h", 0), ("1-4h", HOUR_MS), ("4-24h", 4 * HOUR_MS), ("1-3d", 24 * HOUR_MS),
               ("3-7d", 72 * HOUR_MS), (">7d", 168 * HOUR_MS))  # fmt: skip
_NAME = re.compile(NAME_PATTERN)


def outcomes_for(category: str) -> tuple[str, ...]:
    return OUTCOMES.get(category, GENERIC_OUTCOMES)


def priority(severity: str, tier: str | None) -> int:
    """1 (work first) .. 4: severity, raised one step for the top two contribution tiers."""
    score = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    score += 1 if tier in ("I", "II") else 0
    return min(4, 5 - score)


def reserved_name(name: str) -> bool:
    """A name the product writes itself, which no named token may claim."""
    return name.lower() in RESERVED_NAMES or bool(_RESERVED.fullmatch(name.lower()))


def article(word: str) -> str:
    """``word`` with its indefinite article: "an analyst", "a viewer"."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def valid_name(name: str) -> bool:
    """A name a token may carry, and so a name a case may be assigned to."""
    return bool(_NAME.fullmatch(name))


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on a case: the name the audit trail records, a role, and the fingerprint of the
    token that authenticated it (idempotency records are kept per token, never per name)."""

    name: str
    role: Role
    token: str = ""

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


class Reason(StrEnum):
    """Why a request is refused (the HTTP layer maps each to a status)."""

    NOT_FOUND = "not_found"  # no such case
    FORBIDDEN = "forbidden"  # the actor's role, or the case's assignee, does not allow it
    CONFLICT = "conflict"  # not in this state, or another case holds the slot, or it keeps changing
    INVALID = "invalid"  # a value the rules refuse: an outcome, an assignee, a missing reason, a reused key
    MALFORMED = "malformed"  # the request itself cannot be read (the HTTP layer's: a query, body or header)
    BUSY = "busy"  # the case kept changing under concurrent changes: the one refusal a retry may outgrow


class Refused(Exception):
    """A request the case rules refuse: ``reason`` says why in a word, ``message`` to a person."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Case:
    id: int
    type: str
    customer_id: str
    category: str
    rule: str  # the rule of the finding that opened it
    rules: tuple[str, ...]  # every rule with a finding in it
    severity: str  # the highest seen
    tier: str | None  # the latest finding's
    priority: int
    status: str
    assignee: str | None
    count: int  # findings in the case
    opened_at_ms: int
    updated_at_ms: int
    first_action_at_ms: int | None
    closed_at_ms: int | None
    outcome: str | None
    note: str | None
    first_finding_ts: str
    last_finding_ts: str
    version: int
    retracted: int = 0  # its findings the monitor took back (retractions)
    history: bool = False  # every finding in it is history (before the go-live), taken in on request
    queue: str = "analyst"  # QUEUES: rm once a finding in it was routed to a relationship manager

    @property
    def slot(self) -> str:
        """What at most one open case holds: its type, customer and category."""
        return open_slot(self.type, self.customer_id, self.category)


def open_slot(case_type: str, customer_id: str, category: str) -> str:
    return f"{case_type}|{customer_id}|{category}"


def index(name: str, value: str | None) -> str:
    """An index's name below the case keys: ``ix:status:open``; ``-`` is "none" (unassigned)."""
    return f"ix:{name}:{value if value else '-'}"


# ---------------------------------------------------------------- retractions


class OnRetraction(StrEnum):
    """What a retraction of one of a case's findings does to the case."""

    CLOSE = "close"  # dismissed with outcome ``RETRACTED``: nothing is left in it and no person touched it
    ANNOTATE = "annotate"  # an audit entry; the case stays as it is for the analyst


def on_retraction(case: Case) -> OnRetraction:
    """What taking back one more of ``case``'s findings does (``intake.lua`` does the same).

    A case is closed only when it is still open, no person has acted on it (an assignment,
    a comment, a transition: ``first_action_at``), and the finding taken back was the last
    of its findings not taken back before; otherwise someone may have learnt something from
    it, or it still holds a finding that stands, so the analyst decides."""
    untouched = case.status == "open" and case.first_action_at_ms is None
    return OnRetraction.CLOSE if untouched and case.retracted + 1 >= case.count else OnRetraction.ANNOTATE


def counts_for_precision(case: Case) -> bool:
    """Whether a closed case counts in its rules' precision tallies (``tally.lua`` agrees)."""
    return case.status in ("resolved", "dismissed") and case.outcome != RETRACTED


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Assign:
    assignee: str | None  # None: unassign


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


@dataclass(frozen=True, slots=True)
class Transition:
    to: str
    outcome: str | None = None
    note: str | None = None
    reason: str | None = None  # required to reopen


Action = Assign | Comment | Transition


@dataclass(slots=True)
class Change:
    """What an action does to a case: new hash fields, audit entries, index moves."""

    case: Case  # the case after the change
    fields: dict[str, str] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    moves: list[tuple[str, str]] = field(default_factory=list)  # ("zadd" | "zrem", index name)
    slot: str = ""  # "claim": the case becomes the open one of its slot; "release": no longer
    comment: dict[str, Any] | None = None  # a comment: appended without the case's compare-and-set


def _text(value: str | None, what: str, required: bool) -> str | None:
    if value is None or not value.strip():
        if required:
            raise Refused(Reason.INVALID, f"{what} is required")
        return None
    if len(value) > MAX_TEXT:
        raise Refused(Reason.INVALID, f"{what} is longer than {MAX_TEXT} characters")
    return value


def _may_work(case: Case, actor: Actor, doing: str) -> None:
    if not actor.at_least("analyst"):
        raise Refused(Reason.FORBIDDEN, f"{article(actor.role)} cannot {doing}")
    if actor.role == "analyst" and case.assignee not in (None, actor.name):
        raise Refused(
            Reason.FORBIDDEN, f"case {case.id} is assigned to {case.assignee}; only they or a supervisor can {doing}"
        )


def decide(case: Case, actor: Actor, action: Action, now_ms: int, assignable: frozenset[str]) -> Change:
    """What ``actor`` doing ``action`` to ``case`` at ``now_ms`` changes, or ``Refused``.

    ``assignable``: the names a case may be assigned to (analysts' and supervisors')."""
    change = Change(case)
    updates: dict[str, Any] = {}

    def record(what: str, name: str, before: Any, after: Any, **extra: Any) -> None:
        entry = {"at": now_ms, "actor": actor.name, "role": actor.role, "action": what, "field": name}
        change.audit.append({**entry, "from": before, "to": after, **extra})

    def assign(to: str | None) -> None:
        record("assign", "assignee", case.assignee, to)
        updates["assignee"] = to
        change.moves += [("zrem", index("assignee", case.assignee)), ("zadd", index("assignee", to))]

    if isinstance(action, Comment):
        _may_work(case, actor, "comment on it")
        text = _text(action.text, "comment text", required=True)
        change.comment = {"at": now_ms, "actor": actor.name, "role": actor.role, "action": "comment", "text": text}
        change.audit.append(change.comment)
    elif isinstance(action, Assign):
        to = action.assignee
        if to is not None and to not in assignable:
            raise Refused(Reason.INVALID, f"unknown assignee {to!r}: not an analyst or supervisor token's name")
        if case.status not in OPEN_STATUSES:
            raise Refused(Reason.CONFLICT, f"case {case.id} is {case.status}: reopen it before assigning")
        if to == case.assignee:
            raise Refused(Reason.CONFLICT, f"case {case.id} is already {'assigned to ' + to if to else 'unassigned'}")
        if not actor.at_least("supervisor"):
            _may_work(case, actor, "assign it")
            if to not in (actor.name, None):
                raise Refused(
                    Reason.FORBIDDEN, "an analyst assigns cases only to themselves; a supervisor assigns anyone"
                )
        assign(to)
    else:
        to = action.to
        if to not in STATUSES:
            raise Refused(Reason.INVALID, f"unknown status {to!r}: one of {', '.join(STATUSES)}")
        if to == case.status:
            raise Refused(Reason.CONFLICT, f"case {case.id} is already {to}")
        if to == "open":
            if case.status in OPEN_STATUSES:
                raise Refused(
                    Reason.CONFLICT, f"case {case.id} is {case.status}: only a resolved or dismissed case is reopened"
                )
            if not actor.at_least("supervisor"):
                raise Refused(Reason.FORBIDDEN, "only a supervisor reopens a case")
            reason = _text(action.reason, "a reason to reopen", required=True)
            record("transition", "status", case.status, "open", reason=reason, outcome_was=case.outcome)
            updates.update(status="open", outcome=None, note=None, closed_at_ms=None)
            change.slot = "claim"
        else:
            if case.status not in OPEN_STATUSES:
                raise Refused(Reason.CONFLICT, f"case {case.id} is {case.status}: a supervisor must reopen it first")
            if to == "in_progress" and case.status != "open":
                raise Refused(Reason.CONFLICT, f"case {case.id} is {case.status}")
            doing = {"in_progress": "start it", "resolved": "resolve it", "dismissed": "dismiss it"}[to]
            _may_work(case, actor, doing)
            outcome = action.outcome
            note = _text(action.note, "note", required=to == "resolved" and outcome == "other")
            if to == "resolved":
                allowed = outcomes_for(case.category)
                if outcome not in allowed:
                    raise Refused(
                        Reason.INVALID, f"outcome for {article(case.category)} case must be one of {', '.join(allowed)}"
                    )
            elif to == "dismissed":
                if outcome not in DISMISSALS:
                    reasons = ", ".join(DISMISSALS)
                    raise Refused(Reason.INVALID, f"a dismissal needs a reason (outcome): one of {reasons}")
                if outcome == "other" and note is None:
                    raise Refused(Reason.INVALID, "note is required")
            elif outcome is not None:
                raise Refused(Reason.INVALID, "only resolving or dismissing a case takes an outcome")
            if case.assignee is None:  # working an unassigned case takes it
                assign(actor.name)
            record("transition", "status", case.status, to, outcome=outcome, note=note)
            updates.update(status=to)
            if to != "in_progress":
                updates.update(outcome=outcome, note=note, closed_at_ms=now_ms)
                change.slot = "release"
        if "status" in updates:
            change.moves += [("zrem", index("status", case.status)), ("zadd", index("status", updates["status"]))]
    updates["updated_at_ms"] = now_ms
    if case.first_action_at_ms is None:
        updates["first_action_at_ms"] = now_ms
    # a comment changes no state: it is appended without the compare-and-set on the version
    change.case = dataclasses.replace(case, **updates, version=case.version + (0 if change.comment else 1))
    change.fields = _fields(change.case, updates)
    return change


_STORED_AS = {"updated_at_ms": "updated_at", "first_action_at_ms": "first_action_at", "closed_at_ms": "closed_at"}


def _fields(case: Case, updates: Mapping[str, Any]) -> dict[str, str]:
    return {
        _STORED_AS.get(name, name): "" if getattr(case, name) is None else str(getattr(case, name)) for name in updates
    }


# ---------------------------------------------------------------- outcomes -> rules


@dataclass(frozen=True, slots=True)
class RulePrecision:
    rule: str
    cases: int  # every case the rule has a finding in
    findings: int  # its findings taken into cases
    resolved: int
    confirmed: int
    dismissed: int
    precision: float | None  # confirmed / judged; None before any judgement
    median_first_action_seconds: float | None  # over its resolved cases
    median_resolution_seconds: float | None
    judged: int = 0  # resolved, and dismissed as false_positive: what analysts judged of the rule

"""The rules of rule versions (``rules.versions``): any sequence of actions by any actors in any
role keeps four eyes (no version approved by its author or by anyone but a supervisor), and
moves the book exactly as a slow, obviously correct reference does; the diff between two rule
sets names exactly the settings that differ; the timeline picks the version in force."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.config import RulesConfig, check_rules
from rules.versions import (
    BEGINNING_US,
    Book,
    Code,
    RuleRefusal,
    TimelineEntry,
    diff_lines,
    fingerprint,
    four_eyes_kept,
    side_by_side,
    version_at,
)
from streams.rulestep import fingerprint as worker_fingerprint
from tests.support.versions import DEFAULTS_FP, DEFAULTS_JSON, actions, in_memory

T0 = 1_000_000_000


@dataclass
class Reference:
    """The book as plain records, each rule written out once, in the order a request meets them."""

    versions: dict[int, dict[str, Any]] = field(default_factory=dict)
    timeline: list[tuple[int, int]] = field(default_factory=list)  # (effective, version)
    shadow: int | None = None
    shadows_ended: int = 0  # by a rejection or a promotion of the version in shadow

    def __post_init__(self) -> None:
        self.versions[1] = {"status": "approved", "author": "deployment", "approver": "deployment",
                            "approver_role": "system", "fp": DEFAULTS_FP}  # fmt: skip
        self.timeline.append((BEGINNING_US, 1))

    def last(self) -> int:
        return self.timeline[-1][1]

    def propose(self, text: str, who: str, role: str, reason: str, now: int) -> str:
        if role == "viewer":
            return "forbidden"
        if not reason.strip():
            return "invalid"
        config, problems = check_rules(text)
        if config is None or problems:
            return "invalid"
        fp = worker_fingerprint(config)[0]  # the worker's fingerprint: the versions' must be the same
        if fp == self.versions[self.last()]["fp"]:
            return "invalid"
        self.versions[len(self.versions) + 1] = {"status": "proposed", "author": who, "approver": None,
                                                 "approver_role": None, "fp": fp}  # fmt: skip
        return "ok"

    def approve(self, n: int, who: str, role: str, now: int) -> str:
        v = self.versions.get(n)
        if v is None:
            return "not_found"
        if role != "supervisor" or who == v["author"]:
            return "forbidden"
        if v["status"] != "proposed":
            return "conflict"
        v.update(status="approved", approver=who, approver_role=role)
        return "ok"

    def reject(self, n: int, who: str, role: str, reason: str, now: int) -> str:
        v = self.versions.get(n)
        if v is None:
            return "not_found"
        if role != "supervisor" or who == v["author"]:
            return "forbidden"
        if not reason.strip():
            return "invalid"
        if v["status"] != "proposed":
            return "conflict"
        v["status"] = "rejected"
        if self.shadow == n:
            self.shadow = None
            self.shadows_ended += 1
        return "ok"

    def promote(self, n: int, who: str, role: str, now: int, effective: int) -> str:
        v = self.versions.get(n)
        if v is None:
            return "not_found"
        if role != "supervisor":
            return "forbidden"
        if v["status"] != "approved" or self.last() == n:
            return "conflict"
        if effective < BEGINNING_US or effective < self.timeline[-1][0]:
            return "invalid"
        self.timeline.append((effective, n))
        if self.shadow == n:
            self.shadow = None
            self.shadows_ended += 1
        return "ok"

    def rollback(self, who: str, role: str, now: int, effective: int) -> str:
        earlier = [version for _, version in self.timeline if version != self.last()]
        if not earlier:
            return "conflict"
        return self.promote(earlier[-1], who, role, now, effective)

    def start_shadow(self, n: int, who: str, role: str, now: int) -> str:
        v = self.versions.get(n)
        if v is None:
            return "not_found"
        if role == "viewer":
            return "forbidden"
        if v["status"] == "rejected" or self.last() == n or self.shadow is not None:
            return "conflict"
        self.shadow = n
        return "ok"

    def stop_shadow(self, who: str, role: str, now: int) -> str:
        if role == "viewer":
            return "forbidden"
        if self.shadow is None:
            return "conflict"
        self.shadow = None
        return "ok"


@settings(max_examples=80)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=50))
def test_any_actions_by_anyone_move_the_book_as_the_reference(rng: random.Random, steps: int) -> None:
    """...and keep four eyes, the timeline's order, and one audit entry per change."""
    book, reference = Book(), Reference()
    assert book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0) and not book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    changes = 1  # the bootstrap
    for name, args in actions(rng, steps, T0):
        args = in_memory(name, args)
        try:
            getattr(book, name)(*args)
            got = "ok"
            changes += 1
        except RuleRefusal as exc:
            got = exc.code.value
        assert got == getattr(reference, name)(*args), (name, args)
        assert four_eyes_kept(book.versions.values())
    assert {n: v.status for n, v in book.versions.items()} == {n: v["status"] for n, v in reference.versions.items()}
    approvers = {n: v["approver"] for n, v in reference.versions.items()}
    assert {n: v.approver for n, v in book.versions.items()} == approvers
    assert [(e.effective_us, e.version) for e in book.timeline] == reference.timeline
    assert (book.shadow.version if book.shadow else None) == reference.shadow
    for version in book.versions.values():
        if version.status == "approved" and version.number > 1:
            assert version.approver != version.author and version.approver_role == "supervisor"
        assert version.fingerprint == reference.versions[version.number]["fp"]
    effective = [e.effective_us for e in book.timeline]
    assert effective == sorted(effective)
    assert all(book.versions[e.version].status == "approved" for e in book.timeline)
    assert len(book.audit) == changes + reference.shadows_ended  # (a decision that ends a shadow run says so too)


def test_four_eyes_is_seen_broken() -> None:
    book = Book()
    book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    version = book.propose("outflow:\n  streak_days: 5\n", "li.wei", "supervisor", "r", T0)
    from dataclasses import replace

    assert not four_eyes_kept([replace(version, status="approved", approver="li.wei", approver_role="supervisor")])
    assert not four_eyes_kept([replace(version, status="approved", approver="wang", approver_role="analyst")])
    assert four_eyes_kept([replace(version, status="approved", approver="wang", approver_role="supervisor")])


def test_the_versions_fingerprint_is_the_workers() -> None:
    for config in (RulesConfig(), RulesConfig(disabled=frozenset({"ledger_drift", "churn_drift", "balance_drawdown"}))):
        assert fingerprint(config) == worker_fingerprint(config)


AMOUNTS = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False)
SETTINGS_CHANGED = {
    "outflow.large_external_amount": AMOUNTS,
    "collection.min_amount": AMOUNTS,
    "sweep.min_amount": AMOUNTS,
    "outflow.streak_days": st.integers(min_value=2, max_value=90),
    "marketing.per_day": st.integers(min_value=0, max_value=100),
    "repayment.severity": st.sampled_from(["info", "low", "medium", "high"]),
}


def _with(changes: dict[str, Any]) -> RulesConfig:
    data = RulesConfig().model_dump()
    for path, value in changes.items():
        section, name = path.split(".")
        data[section][name] = value
    return RulesConfig.model_validate(data)


@given(
    st.dictionaries(st.sampled_from(sorted(SETTINGS_CHANGED)), st.just(None)).flatmap(
        lambda chosen: st.fixed_dictionaries({path: SETTINGS_CHANGED[path] for path in chosen})
    ),
    st.sets(st.sampled_from(["churn_drift", "ledger_drift", "fast_in_fast_out"])),
)
def test_the_diff_names_exactly_the_settings_that_differ(changes: dict[str, Any], disabled: set[str]) -> None:
    before = RulesConfig()
    after = _with(changes).model_copy(update={"disabled": frozenset(disabled)})
    a, b = fingerprint(before)[1], fingerprint(after)[1]
    shown_before, shown_after = before.model_dump(mode="json"), after.model_dump(mode="json")
    expected = {path for path in changes if _at(shown_before, path) != _at(shown_after, path)}
    if frozenset(disabled) != before.disabled:
        expected.add("disabled")
    lines = diff_lines(a, b)
    assert {line.split(":", 1)[0] for line in lines} == expected
    assert len(lines) == len(expected)
    assert diff_lines(a, a) == [] and {r.path for r in side_by_side(a, b)} == {r.path for r in side_by_side(a, a)}
    assert {line.split(":", 1)[0] for line in diff_lines(b, a)} == expected


def _at(shown: dict[str, Any], path: str) -> Any:
    section, name = path.split(".")
    return shown[section][name]


def test_the_diff_reads_as_a_person_would_write_it() -> None:
    a = fingerprint(RulesConfig())[1]
    b = fingerprint(_with({"outflow.large_external_amount": Decimal(80_000)}).model_copy(
        update={"disabled": frozenset({"ledger_drift"})}))[1]  # fmt: skip
    expected = ["disabled: +ledger_drift -churn_drift", "outflow.large_external_amount: 100000 -> 80000"]
    assert diff_lines(a, b) == expected


def test_the_version_in_force_at_an_instant() -> None:
    timeline = [TimelineEntry(0, 1, "a", "d", 0), TimelineEntry(100, 2, "b", "s", 5),
                TimelineEntry(100, 3, "c", "s", 6), TimelineEntry(200, 1, "a", "s", 7)]  # fmt: skip
    for t, expected in ((-1, None), (0, 1), (99, 1), (100, 3), (199, 3), (200, 1), (10**18, 1)):
        found = version_at(timeline, t)
        assert (found.version if found else None) == expected, t
    book = Book()
    book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, T0)
    try:
        book.rollback("s", "supervisor", T0, T0)
    except RuleRefusal as exc:
        assert exc.code is Code.CONFLICT
    else:
        raise AssertionError("a rollback with nothing before it")

"""Rule versions for the tests: rules texts and random sequences of actions by any actors
(``rules.versions.Book`` and ``streams.storage.rulebook.Rulebook`` take the same calls)."""

from __future__ import annotations

import contextlib
import random
from typing import Any

from rules.config import RulesConfig
from rules.versions import Book, RuleRefusal, fingerprint

DEFAULTS_FP, DEFAULTS_JSON = fingerprint(RulesConfig())
CANDIDATE = "outflow:\n  drawdown_fraction: 0.2\n"
OTHER = "disabled: [churn_drift, ledger_drift]\ncollection:\n  min_amount: 8000\n"
TEXTS = (CANDIDATE, OTHER, "version: 1\n", "outflow:\n  streak_days: 1\n", "sweep:\n  min_amount: 20000\n")
PEOPLE = ("li.wei", "wang.fang", "chen.jie", "zhao.min")
ROLES = ("viewer", "analyst", "analyst", "supervisor", "supervisor", "supervisor")  # mostly roles that may act
ACTIONS = ("propose", "approve", "approve", "reject", "promote", "promote", "rollback", "start_shadow",
           "stop_shadow")  # fmt: skip
GRACE_US = 7


def actions(rng: random.Random, steps: int, t0: int) -> list[tuple[str, tuple[Any, ...]]]:
    """``steps`` calls (name, arguments) by any person acting in any role, at increasing times. Each
    version number is either any number or, half the time, one whose status the action wants
    (found by running the calls on a ``Book`` as they are drawn), so that most kinds of call
    succeed now and then."""
    book = Book()
    book.bootstrap(DEFAULTS_JSON, DEFAULTS_FP, t0)
    out: list[tuple[str, tuple[Any, ...]]] = []
    for i in range(steps):
        now = t0 + 1000 * (i + 1)
        who, role = rng.choice(PEOPLE), rng.choice(ROLES)
        name = rng.choice(ACTIONS)
        wanted = {"approve": "proposed", "reject": "proposed", "start_shadow": "proposed", "promote": "approved"}
        fitting = [v.number for v in book.versions.values() if v.status == wanted.get(name)]
        number = rng.choice(fitting) if fitting and rng.random() < 0.5 else rng.randint(1, len(book.versions) + 1)
        effective = rng.choice([None, now - 5_000, now, now + 10_000])
        call: tuple[str, tuple[Any, ...]]
        if name == "propose":
            call = (name, (rng.choice(TEXTS), who, role, rng.choice(["why", "why", "why", " "]), now))
        elif name == "approve":
            call = (name, (number, who, role, now))
        elif name == "reject":
            call = (name, (number, who, role, rng.choice(["no", "no", ""]), now))
        elif name == "promote":
            call = (name, (number, who, role, now, effective))
        elif name == "rollback":
            call = (name, (who, role, now, effective))
        elif name == "start_shadow":
            call = (name, (number, who, role, now))
        else:
            call = (name, (who, role, now))
        out.append(call)
        with contextlib.suppress(RuleRefusal):
            getattr(book, call[0])(*in_memory(*call))
    return out


def in_memory(name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments of a call for a ``Book``, which takes every promotion's instant: without one,
    the store's grace (``GRACE_US``) after now."""
    if name in ("promote", "rollback") and args[-1] is None:
        return (*args[:-1], args[-2] + GRACE_US)
    return args

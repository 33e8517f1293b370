"""Where a push leaves FundFlow: may it go, on which channel, or is it held and why.

``decide`` is pure (a push, the customer's live tier, consent, the contact table, now);
``Gate`` reads the tiers and consents of a batch of pushes in two round trips, and records
the held ones (``ContactStore.hold``). The webhook relay asks it about every push before
it POSTs one (``alerts.relay``): nothing else hands pushes to a gateway.

Held reasons (``fundflow_pushes_held_total{why}``, docs/metrics.md):
``opt_out:push`` / ``opt_out:sms`` (the channel the route uses is opted out, itself or
through ``all``), ``complaint`` (a complaint within ``complaint_quiet_days``), ``route:rm``
(the customer's live tier routes this finding to a relationship manager: the case intake
files its case in the ``rm`` queue instead).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from contact.model import Consent
from contact.routes import CHANNEL_OF_ROUTE, PUSH_CHANNEL, ContactConfig, Route
from contact.store import ContactStore, live_tiers
from rules.config import RULE_NAMES


@dataclass(frozen=True, slots=True)
class Decision:
    route: Route
    tier: str | None
    held: str | None  # why it may not go out; None: deliver it

    def delivered_body(self, push: dict[str, Any]) -> dict[str, Any]:
        """The push as the gateway receives it: the route's channel, the route and the live tier."""
        return {**push, "channel": PUSH_CHANNEL[self.route], "route": self.route, "tier": self.tier}


def is_push(finding: Any) -> bool:
    """A push the relay must judge (a retraction of one is delivered as it is: it cancels)."""
    return (
        isinstance(finding, dict)
        and finding.get("type") == "push"
        and "retracts" not in finding
        and isinstance(finding.get("customer_id"), str)
    )


def decide(push: dict[str, Any], tier: str | None, consent: Consent, config: ContactConfig, now: int) -> Decision:
    route = config.route(tier, str(push.get("category", "")))
    if route == "rm":
        return Decision(route, tier, "route:rm")
    return Decision(route, tier, consent.held(CHANNEL_OF_ROUTE[route], now, config.complaint_quiet_days))  # type: ignore[arg-type]


def rule_label(push: dict[str, Any]) -> str:
    """The push's rule as a metric label: a known rule name, never what a record made up."""
    rule = push.get("rule")
    return rule if isinstance(rule, str) and rule in RULE_NAMES else "other"


def held_entry(push: dict[str, Any], decision: Decision, now_ms: int) -> dict[str, Any]:
    return {
        "id": push["id"],
        "customer_id": push["customer_id"],
        "rule": push.get("rule"),
        "category": push.get("category"),
        "ts": push.get("ts"),
        "tier": decision.tier,
        "route": decision.route,
        "why": decision.held,
        "held_at": now_ms,
    }


class Gate:
    def __init__(self, store: ContactStore, config: ContactConfig, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    async def judge(self, pushes: Sequence[dict[str, Any]]) -> list[Decision]:
        customers = sorted({p["customer_id"] for p in pushes})
        tiers = await live_tiers(self.store.redis, self.store.keys, customers)
        consents = await self.store.consents(customers) if customers else {}
        now = int(self.clock())
        return [decide(p, tiers[p["customer_id"]], consents[p["customer_id"]], self.config, now) for p in pushes]

    async def hold(self, held: Sequence[tuple[dict[str, Any], Decision]]) -> list[bool]:
        """Record the held pushes; which of them were held for the first time."""
        now_ms = int(self.clock() * 1000)
        return await self.store.hold([held_entry(p, d, now_ms) for p, d in held])

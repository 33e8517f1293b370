"""The business rules: (state after an event, the event, the balance before it,
the rule config) -> findings. Pure: no I/O, no clock; time is the event's.

A rule *decides*; ``streams.rulestep`` serialises what it finds into the
outbox, and ``alerts/`` delivers. What a rule remembers between events (edge
flags, firing times, push counts, sent campaigns) lives in
``state.rule_state`` and is committed atomically with the state, so a worker
restart or a replay (whose events are duplicates and never reach the rules)
can never fire twice.

* Edge-triggered: a condition that stays true fires once, when it becomes
  true (drawdown, streak, ledger drift, churn drift); it re-arms when false.
* Cool-down per rule and customer, in event time, in both directions: two
  firings of a rule for one customer are never closer than its cool-down,
  whatever order the events arrive in.
* Events older than ``max_lateness_hours`` before the customer's newest event
  fire nothing (reported as suppressed ``stale``): alerting on last month's
  news helps no one, and it bounds what the cool-downs must remember.
* Push triggers: hard caps per local day and ISO week, quiet hours, opt-out,
  one per campaign; every refusal is reported with its reason.
* Risk veto: no push while the customer had an outflow-risk or repayment finding
  in the ``marketing.risk_veto_days`` before it, or has an overdue instalment
  unpaid; no sweep recommendation while an instalment is overdue. Pushes are
  decided after every other finding of their event, so a finding of the same
  moment vetoes them too (docs/findings.md).
* Same history, same findings (docs/findings.md): a finding depends on the
  customer's events, the rules and the lateness bounds only. Transaction rules
  read transactions alone (one topic, one order); due dates are judged at fixed
  event-time check points once the transactions have passed them, whichever
  topic came first; the sweep reserves the instalments the transactions show and moves only
  what the customer's own 90 days say is idle (docs/findings.md, "The sweep's buffer").
* Messages write numbers for people (``rules.fmt``: ``189%``, ``1,234.50``); evidence keeps
  the machine-readable strings.

Cost: most checks are O(1) gates on the event; the ones that need windows
walk only the kept events of that window (bounded by the window, never by
the customer's history), and each computes only the metrics it reads, exactly
as ``rules.metrics.evaluate`` defines them (property tests in
``tests/unit/test_rules_engine.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal, localcontext
from typing import Any
from zoneinfo import ZoneInfo

from rules import fmt
from rules.config import MarketingConfig, RulesConfig, Severity
from rules.events import LoanEvent, TransactionEvent
from rules.money import money, rounded, to_cent
from rules.state import (
    CREDIT,
    EXTERNAL,
    HOUR_US,
    LOAN_REPAYMENT,
    LOT_AMOUNT,
    LOT_TS,
    NO_FLOW,
    US_PER_DAY,
    ZERO,
    CustomerState,
    StateConfig,
    event_time,
    local_day,
    midnight_us,
    remaining_since,
)

INSTALMENT_WINDOW_US = 28 * US_PER_DAY  # shorter than any month: one instalment per loan
RISK_CATEGORIES = frozenset({"outflow_risk", "repayment"})  # the findings that veto pushes
OVERDUE_KEPT = 24  # unpaid overdue due dates remembered per customer (the newest; any one of them vetoes)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # alert | recommendation | push
    rule: str
    category: str  # collection | repayment | outflow_risk | sweep | ledger
    severity: Severity
    customer_id: str
    tier: str | None
    ts_us: int
    trigger_txn_id: str
    evidence: dict[str, Any]
    message: str
    extra: dict[str, Any] = field(default_factory=dict)
    # A retraction's: the event time of the finding it takes back (not published; a retraction
    # of a finding from before the go-live is history too: docs/events.md, "History")
    retracted_us: int | None = None

    @property
    def id(self) -> str:
        """Deterministic: the same trigger always gives the same id (replays are recognisable)."""
        salt = self.extra.get("campaign") or self.extra.get("retracts", "")
        text = f"{self.kind}|{self.rule}|{self.customer_id}|{self.trigger_txn_id}|{salt}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def as_dict(self, zone: ZoneInfo) -> dict[str, Any]:
        moment = dt.datetime.fromtimestamp(self.ts_us / 1_000_000, dt.UTC).astimezone(zone)
        return {
            "id": self.id,
            "type": self.kind,
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "customer_id": self.customer_id,
            "tier": self.tier,
            "ts": moment.isoformat(),
            "trigger_txn_id": self.trigger_txn_id,
            "evidence": self.evidence,
            "message": self.message,
            **self.extra,
        }


@dataclass(slots=True)
class Judgement:
    findings: list[Finding] = field(default_factory=list)
    suppressed: list[tuple[str, str]] = field(default_factory=list)  # (rule, why)


def ratio(value: Decimal) -> str:
    return str(rounded(value, 4))


class _Judge:
    """One event's evaluation; collects findings and refusals."""

    def __init__(
        self,
        state: CustomerState,
        event: TransactionEvent | LoanEvent,
        config: RulesConfig,
        state_config: StateConfig,
        tier: str | None,
    ) -> None:
        self.state = state
        self.event = event
        self.config = config
        self.state_config = state_config
        self.zone = state_config.zone
        self.tier = tier
        self.ts, self.day = event_time(event, self.zone)
        self.memory: dict[str, Any] = state.rule_state
        self.out = Judgement()
        self.pending: list[tuple[Finding, str]] = []  # pushes, decided after the event's other findings
        # the newest loan repayment before this event: what pays an overdue instalment
        self.repaid_before: int | None = self.memory.get("repaid")
        if isinstance(event, TransactionEvent):
            self.trigger = event.txn_id
        else:
            self.trigger = f"loan:{event.loan_id}@{event.ts.isoformat()}"
        # What "now" is for this customer: its newest transaction (LoanEvents come on their own
        # topic in no fixed order with the transactions, so they must not move it).
        newest = state.last_txn_us if isinstance(event, TransactionEvent) else state.last_us
        self.newest = max(newest or self.ts, self.ts)

    def cash(self, value: Decimal) -> str:
        """Money in a message: the deployment currency's minor digits, thousands separated (``rules.fmt``)."""
        return fmt.amount(value, self.state_config.currency)

    # --- memory -----------------------------------------------------------------
    def as_of(self) -> int:
        """The moment the metrics are taken at: ``rules.metrics.evaluate``'s ``as_of``."""
        return max(self.newest, self.state.last_txn_us or 0)

    def edge(self, key: str, condition: bool) -> bool:
        """True when ``condition`` became true with this event; remembers it either way."""
        active: dict[str, bool] = self.memory.setdefault("active", {})
        was = active.get(key, False)
        if condition:
            active[key] = True
        else:
            active.pop(key, None)
        return condition and not was

    def once(self, key: str) -> bool:
        """True the first time ``key`` is seen (a due date, a month): never again."""
        done: list[str] = self.memory.setdefault("once", [])
        if key in done:
            return False
        done.append(key)
        if len(done) > 64:
            del done[: len(done) - 64]
        return True

    def cooled(self, rule: str, hours: float) -> bool:
        """No firing of ``rule`` within ``hours`` of this event, either side; records this one."""
        fired: dict[str, list[int]] = self.memory.setdefault("fired", {})
        times = fired.setdefault(rule, [])
        window = int(hours * HOUR_US)
        if any(abs(t - self.ts) < window for t in times):
            self.out.suppressed.append((rule, "cooldown"))
            return False
        times.append(self.ts)
        horizon = self.newest - window - int(self.config.max_lateness_hours * HOUR_US)
        fired[rule] = sorted(t for t in times if t >= horizon)
        return True

    # --- emitting -----------------------------------------------------------------
    def emit(
        self,
        rule: str,
        category: str,
        severity: Severity,
        cooldown_hours: float | None,
        evidence: dict[str, Any],
        message: str,
        kind: str = "alert",
        extra: dict[str, Any] | None = None,
        at: tuple[int, str] | None = None,
        reported_us: int | None = None,
    ) -> Finding | None:
        """A finding of this event, or, with ``at`` = (event time, trigger), of an event-time
        check point (no cool-down then: ``cooldown_hours`` is None; ``reported_us``: the time
        of the loan report that announced its due date)."""
        if rule in self.config.disabled:
            return None
        if cooldown_hours is not None and not self.cooled(rule, cooldown_hours):
            return None
        ts_us, trigger = at if at is not None else (self.ts, self.trigger)
        finding = Finding(
            kind=kind,
            rule=rule,
            category=category,
            severity=severity,
            customer_id=self.state.customer_id,
            tier=self.tier,
            ts_us=ts_us,
            trigger_txn_id=trigger,
            evidence=evidence,
            message=message,
            extra=extra or {},
        )
        self.out.findings.append(finding)
        if kind != "push" and category in RISK_CATEGORIES:
            self.note_risk(ts_us, rule, reported_us)
        return finding

    # --- the risk veto --------------------------------------------------------------
    def txn_clock(self) -> int:
        """The customer's newest transaction: LoanEvents, in no fixed order with them, never move it."""
        return self.state.last_txn_us if self.state.last_txn_us is not None else self.ts

    def note_risk(self, ts_us: int, rule: str, reported_us: int | None) -> None:
        """Remember a finding that vetoes pushes, as long as a push can still fall in its
        window: pushes come at most ``max_lateness_hours`` before the newest transaction."""
        window = self.config.marketing.risk_veto_days * US_PER_DAY
        horizon = self.txn_clock() - window - int(self.config.max_lateness_hours * HOUR_US)
        risk: list[list[Any]] = self.memory.get("risk", [])
        risk.append([ts_us, rule, reported_us])
        kept = sorted((entry for entry in risk if entry[0] >= horizon), key=lambda e: (e[0], e[1]))
        if kept:
            self.memory["risk"] = kept
        else:
            self.memory.pop("risk", None)

    def note_overdue(self, due_us: int, reported_us: int) -> None:
        """An overdue check point that fired: unpaid until a loan repayment at or after it
        (which a LoanEvent that came late may find already made)."""
        repaid = self.memory.get("repaid")
        if repaid is not None and repaid >= due_us:
            return
        overdue: list[list[int]] = self.memory.setdefault("overdue", [])
        overdue.append([due_us, reported_us])
        self.memory["overdue"] = sorted(overdue)[-OVERDUE_KEPT:]

    def known_report(self, reported_us: int | None) -> bool:
        """Whether every delivery inside the lateness bound has the loan report of ``reported_us``
        by now: one later than ``loan_lateness_days`` behind the transactions is refused
        (``late_loan``), so a report that old is here or never comes. A due date's finding
        vetoes only then; before, the veto would depend on which topic came first."""
        if reported_us is None:
            return True
        return reported_us < self.txn_clock() - self.config.loan_lateness_days * US_PER_DAY

    def unpaid_overdue(self) -> bool:
        """An overdue check point at or before this event, no loan repayment since (before this event)."""
        paid = self.repaid_before if self.repaid_before is not None else -1
        return any(
            due <= self.ts and due > paid and self.known_report(reported)
            for due, reported in self.memory.get("overdue", ())
        )

    def risk_veto(self) -> str | None:
        """The rule that vetoes a push at this event, or None: the newest outflow-risk or
        repayment finding of the ``risk_veto_days`` before it (event time, never after it),
        else an overdue instalment still unpaid."""
        window = self.config.marketing.risk_veto_days * US_PER_DAY
        recent = [
            (ts, rule)
            for ts, rule, reported in self.memory.get("risk", ())
            if self.ts - window <= ts <= self.ts and self.known_report(reported)
        ]
        if recent:
            return str(max(recent)[1])
        if self.unpaid_overdue():
            return "repayment_overdue"
        return None

    def after_event(self, event: TransactionEvent) -> None:
        """Note a loan repayment (it pays every overdue instalment due before it), and forget
        the overdue instalments paid: whatever the transaction's age, so the memory follows
        the transactions alone."""
        own = event.counterparty_customer_id == event.customer_id
        if event.kind == "loan_repayment" and event.reverses is None and not own:
            repaid = self.memory.get("repaid")
            if repaid is None or self.ts > repaid:
                self.memory["repaid"] = repaid = self.ts
            overdue = [entry for entry in self.memory.get("overdue", ()) if entry[0] > repaid]
            if overdue:
                self.memory["overdue"] = overdue
            else:
                self.memory.pop("overdue", None)

    # --- pushes ---------------------------------------------------------------------
    def push(self, source: Finding, campaign_key: str) -> None:
        """A push following ``source``: decided in ``send_pushes``, once the event's other
        findings (a drawdown or a salary anomaly of the same transaction) are known."""
        self.pending.append((source, campaign_key))

    def send_pushes(self) -> None:
        for source, campaign_key in self.pending:
            self._push(source, campaign_key)
        self.pending = []

    def _push(self, source: Finding, campaign_key: str) -> None:
        marketing: MarketingConfig = self.config.marketing
        rule = f"push_{campaign_key}"
        if not marketing.enabled or rule in self.config.disabled:
            return
        campaign = marketing.campaigns.get(campaign_key)
        if campaign is None:
            return
        why = push_refusal(self.memory, self.state.customer_id, self.ts, campaign, marketing, self.zone)
        if why is None:  # judged last: a risk_veto count is of pushes that would have gone out
            vetoed_by = self.risk_veto()
            why = None if vetoed_by is None else f"risk_veto:{vetoed_by}"
        if why is not None:
            self.out.suppressed.append((rule, why))
            return
        record_push(self.memory, self.ts, campaign, self.newest)
        self.out.findings.append(
            Finding(
                kind="push",
                rule=rule,
                category=source.category,
                severity="info",
                customer_id=self.state.customer_id,
                tier=self.tier,
                ts_us=self.ts,
                trigger_txn_id=self.trigger,
                evidence={"source_finding": source.id, "source_rule": source.rule, **source.evidence},
                message=source.message,
                extra={"channel": marketing.channel, "template": campaign, "campaign": campaign},
            )
        )


# --- marketing caps (pure, shared with the tests) -------------------------------------


def _week(ts_us: int, zone: ZoneInfo) -> tuple[int, int]:
    iso = dt.date.fromordinal(local_day(ts_us, zone)).isocalendar()
    return iso.year, iso.week


def _quiet(ts_us: int, zone: ZoneInfo, start: dt.time, end: dt.time) -> bool:
    local = dt.datetime.fromtimestamp(ts_us / 1_000_000, dt.UTC).astimezone(zone).time()
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def push_refusal(
    memory: dict[str, Any], customer_id: str, ts_us: int, campaign: str, marketing: MarketingConfig, zone: ZoneInfo
) -> str | None:
    """Why a push at ``ts_us`` may not go out, or None. Caps count pushes by local day and ISO week.
    Consent and complaints are not the worker's: they apply at delivery (contact.gate)."""
    if _quiet(ts_us, zone, marketing.quiet_start, marketing.quiet_end):
        return "quiet_hours"
    if campaign in memory.get("campaigns", ()):
        return "campaign_already_sent"
    sent: list[int] = memory.get("pushes", [])
    day = local_day(ts_us, zone)
    if sum(1 for t in sent if local_day(t, zone) == day) >= marketing.per_day:
        return "daily_cap"
    week = _week(ts_us, zone)
    if sum(1 for t in sent if _week(t, zone) == week) >= marketing.per_week:
        return "weekly_cap"
    return None


def record_push(memory: dict[str, Any], ts_us: int, campaign: str, newest_us: int) -> None:
    sent: list[int] = memory.setdefault("pushes", [])
    sent.append(ts_us)
    # Keep more than a week before anything that can still push (events are at most
    # max_lateness old), so the caps of every week still open are always counted.
    memory["pushes"] = sorted(t for t in sent if t >= newest_us - 30 * US_PER_DAY)
    memory.setdefault("campaigns", []).append(campaign)


# --- window helpers (bounded by the window, not the history) -----------------------------


def _recent(state: CustomerState, since_us: int) -> Iterable[Any]:
    """The flows after ``since_us``, newest first (a reversal, a reversed transaction or an
    own-account transfer is none: docs/events.md)."""
    for record in reversed(state.events):
        if record.ts_us <= since_us:
            return
        if not record.flags & NO_FLOW:
            yield record


def _day_nets(state: CustomerState, from_day: int, flows_only: bool = False) -> dict[int, Decimal]:
    """Each day's net from ``from_day`` on: of every record (what moved the balance), or of
    the flows alone (the net-outflow streak)."""
    nets: dict[int, Decimal] = {}
    for record in reversed(state.events):
        if record.day < from_day:
            break
        if flows_only and record.flags & NO_FLOW:
            continue
        nets[record.day] = nets.get(record.day, ZERO) + record.amount
    return nets


def _end_of_day(state: CustomerState, today: int, days: int) -> list[Decimal]:
    """End-of-day balances of the ``days`` days ending today (today: the balance now),
    from the customer's first day on; oldest first."""
    first = state.first_day if state.first_day is not None else today
    start = max(today - days + 1, first)
    nets = _day_nets(state, start + 1)
    balances = [state.balance]
    running = state.balance
    for day in range(today, start, -1):
        running -= nets.get(day, ZERO)
        balances.append(running)
    return balances[::-1]


def average_end_of_day(state: CustomerState, today: int, days: int) -> Decimal:
    """The mean of ``_end_of_day(state, today, days)`` from one walk and no list: a day's
    net moved the end-of-day balance of every day of the window before it, so the sum of
    the ``n`` balances is ``n * balance - sum(net(d) * (d - start))`` (days after
    ``today``, from events that arrived out of order, move none of them). The drawdown
    check runs on every debit; this is most of its cost."""
    first = state.first_day if state.first_day is not None else today
    start = max(today - days + 1, first)
    n = max(today - start + 1, 1)  # a day before the first one: the balance now, as _end_of_day says
    moved = ZERO
    for record in reversed(state.events):
        day = record.day
        if day <= start:
            break
        if day <= today:
            moved += record.amount * (day - start)
    return (state.balance * n - moved) / n


def external_drift(state: CustomerState, as_of_us: int) -> tuple[Decimal, int]:
    """``external_outflow_share_30d`` and ``external_banks_90d`` exactly as
    ``rules.metrics.evaluate`` defines them, from one walk of the 90 days (the churn
    check needs only these two, on every external debit's first of the day)."""
    start_30d, start_90d = as_of_us - 30 * US_PER_DAY, as_of_us - 90 * US_PER_DAY
    outflow = external = ZERO
    banks: set[str] = set()
    for record in _recent(state, start_90d):
        flags = record.flags
        if flags & EXTERNAL and record.bank is not None:
            banks.add(record.bank)
        if not flags & CREDIT and record.ts_us > start_30d:
            outflow -= record.amount
            if flags & EXTERNAL:
                external -= record.amount
    if not outflow:
        return ZERO, len(banks)
    with localcontext() as ctx:
        ctx.prec = 34  # as evaluate() divides
        return external / outflow, len(banks)


def inflow_and_retention(state: CustomerState, as_of_us: int) -> tuple[Decimal, Decimal | None]:
    """``inflow_90d`` and ``retention_days_avg_90d`` exactly as ``rules.metrics.evaluate``
    defines them (the same records, summed in the same order, divided in the same
    context), from one walk of the 90 days: the collection check needs only these two,
    and the whole of ``evaluate`` was a sixth of the step's cost."""
    inflow = consumed = weighted = ZERO
    for record in _recent(state, as_of_us - 90 * US_PER_DAY):
        if record.flags & CREDIT:
            inflow += record.amount
        else:
            consumed += record.consumed
            weighted += record.weighted_age_us
    with localcontext() as ctx:
        ctx.prec = 34  # as evaluate() divides
        return inflow, weighted / consumed / US_PER_DAY if consumed else None


def _streak(state: CustomerState, today: int, limit: int) -> int:
    nets = _day_nets(state, today - limit, flows_only=True)
    streak = 0
    while streak < limit and nets.get(today - streak, ZERO) < 0 and (today - streak) in nets:
        streak += 1
    return streak


# --- the rules ------------------------------------------------------------------------------


def judge(
    state: CustomerState,
    event: TransactionEvent | LoanEvent,
    balance_before: Decimal,
    config: RulesConfig,
    state_config: StateConfig,
    tier: str | None = None,
) -> Judgement:
    """Everything the rules find in ``event``, which was just applied to ``state``."""
    j = _Judge(state, event, config, state_config, tier)
    if isinstance(event, LoanEvent):
        _register_due(j, event)  # a LoanEvent fires nothing itself: it adds check points
        _due_dates(j)
        return j.out
    if event.reverses is not None:
        _retract(j, event.reverses)  # whatever its age: the findings it takes back went out
    if j.ts < j.newest - int(config.max_lateness_hours * HOUR_US):
        j.out.suppressed.append(("all", "stale"))
        j.after_event(event)
        return j.out
    _due_dates(j)
    # A reversal is never fresh money, and an own-account transfer never left: neither is a flow
    flow = event.reverses is None and event.counterparty_customer_id != event.customer_id
    if flow:
        if event.direction == "credit":
            _collection(j, event)
        else:
            _outflow(j, event, balance_before)
            if event.kind == "loan_repayment":
                _sweep(j, event)
    if event.balance_after is not None:
        _ledger(j)
    if flow:
        _income(j)
    j.send_pushes()
    j.after_event(event)
    _remember_triggered(j)
    return j.out


def _remember_triggered(j: _Judge) -> None:
    """What this transaction triggered, so that its reversal can take it back: kept as long
    as the transaction can be reversed (the dedup horizon), in the rules' memory."""
    mine = [f for f in j.out.findings if f.trigger_txn_id == j.trigger and "retracts" not in f.extra]
    triggered: dict[str, list[Any]] | None = j.memory.get("triggered")
    if not mine and not triggered:
        return
    if triggered is None:
        triggered = j.memory["triggered"] = {}
    if mine:
        triggered[j.trigger] = [j.ts, [[f.id, f.kind, f.rule, f.category, f.severity] for f in mine]]
    horizon = j.newest - j.state_config.dedup_horizon_us
    for txn in [txn for txn, (ts, _) in triggered.items() if ts <= horizon]:
        del triggered[txn]
    if not triggered:
        del j.memory["triggered"]


def _retract(j: _Judge, reversed_txn: str) -> None:
    """A retraction for every finding the reversed transaction triggered (docs/events.md,
    "Retractions"), each once: its memory goes with it. The rules' other memory (cool-downs,
    push caps) stays as it is: a push that went out was a contact, taken back or not."""
    triggered: dict[str, list[Any]] = j.memory.get("triggered", {})
    entry = triggered.pop(reversed_txn, None)
    if not triggered:
        j.memory.pop("triggered", None)
    if entry is None:
        return
    for finding_id, kind, rule, category, severity in entry[1]:
        j.out.findings.append(
            Finding(
                kind=kind,
                rule=rule,
                category=category,
                severity=severity,
                customer_id=j.state.customer_id,
                tier=j.tier,
                ts_us=j.ts,
                trigger_txn_id=j.trigger,
                evidence={"retracts": finding_id, "reversed_txn_id": reversed_txn},
                message=f"撤回: 触发交易已冲正 — taken back: the transaction that triggered {rule} was reversed",
                extra={"retracts": finding_id, "reason": "trigger_reversed"},
                retracted_us=entry[0],
            )
        )


def _collection(j: _Judge, event: TransactionEvent) -> None:
    rule = j.config.collection
    if not rule.enabled or event.amount < rule.min_amount:
        return
    earlier = [r.amount for r in _recent(j.state, j.ts - 90 * US_PER_DAY) if r.flags & CREDIT and r.ts_us != j.ts]
    usual = sum(earlier, ZERO) / len(earlier) if earlier else ZERO
    if usual and event.amount < rule.usual_inflow_multiple * usual:
        return
    inflow_90d, retention = inflow_and_retention(j.state, j.as_of())
    inflow_before = inflow_90d - event.amount
    rate: Decimal | None = None
    if inflow_before > 0:
        remaining = remaining_since(j.state, j.ts - 90 * US_PER_DAY)
        newest = j.state.lots[-1] if j.state.lots else None
        if newest is not None and newest[LOT_TS] == j.ts and newest[LOT_AMOUNT] <= event.amount:
            remaining -= newest[LOT_AMOUNT]  # the lot this credit just formed is not the customer's habit
        rate = remaining / inflow_before
    leaves = rate is not None and rate < rule.max_collection_rate
    quick = retention is not None and retention < rule.max_retention_days
    if not (leaves or quick):
        return
    finding = j.emit(
        "collection_opportunity",
        "collection",
        rule.severity,
        rule.cooldown_hours,
        {
            "amount": money(event.amount),
            "min_amount": money(rule.min_amount),
            "usual_credit_90d": money(usual),
            "usual_inflow_multiple": str(rule.usual_inflow_multiple),
            "collection_rate_90d_before": ratio(rate) if rate is not None else None,
            "max_collection_rate": str(rule.max_collection_rate),
            "retention_days_avg_90d": ratio(retention) if retention is not None else None,
            "max_retention_days": str(rule.max_retention_days),
            "balance": money(j.state.balance),
        },
        f"资金归集机会: 大额入账 {j.cash(event.amount)}, 该客户资金通常很快流出 — "
        f"large credit of {j.cash(event.amount)} at a customer whose money usually leaves; contact now",
    )
    if finding is not None:
        j.push(finding, "collection")


def _outflow(j: _Judge, event: TransactionEvent, balance_before: Decimal) -> None:
    rule = j.config.outflow
    if not rule.enabled:
        return
    amount = event.amount
    if event.external and (
        amount >= rule.large_external_amount
        or (
            amount >= rule.large_external_min_amount
            and balance_before > 0
            and amount >= rule.large_external_share * balance_before
        )
    ):
        j.emit(
            "large_external_outflow",
            "outflow_risk",
            rule.severity,
            rule.cooldown_hours,
            {
                "amount": money(amount),
                "balance_before": money(balance_before),
                "share_of_balance": ratio(amount / balance_before) if balance_before > 0 else None,
                "large_external_amount": money(rule.large_external_amount),
                "large_external_share": str(rule.large_external_share),
                "counterparty_bank": event.counterparty_bank,
            },
            f"大额他行流出 {j.cash(amount)} — large external outflow of {j.cash(amount)} "
            f"to {event.counterparty_bank or 'another bank'}",
        )
    if event.external:
        _fast_in_fast_out(j, amount)
        _churn(j)
    _drawdown(j)
    streak = _streak(j.state, j.day, rule.streak_days)
    if j.edge("streak", streak >= rule.streak_days):
        j.emit(
            "net_outflow_streak",
            "outflow_risk",
            "medium",
            rule.cooldown_hours,
            {"streak_days": streak, "threshold_days": rule.streak_days, "balance": money(j.state.balance)},
            f"连续{streak}天净流出 — net outflow {streak} days in a row",
        )


def _fast_in_fast_out(j: _Judge, amount: Decimal) -> None:
    rule = j.config.outflow
    since = j.ts - int(rule.fast_out_hours * HOUR_US)
    credits = external_out = ZERO
    for record in _recent(j.state, since):
        if record.ts_us > j.ts:
            continue
        if record.flags & CREDIT:
            credits += record.amount
        elif record.flags & EXTERNAL:
            external_out -= record.amount
    if credits < rule.fast_out_min_amount or external_out < rule.fast_out_share * credits:
        return
    j.emit(
        "fast_in_fast_out",
        "outflow_risk",
        rule.severity,
        rule.cooldown_hours,
        {
            "credits": money(credits),
            "external_debits": money(external_out),
            "share": ratio(external_out / credits),
            "threshold_share": str(rule.fast_out_share),
            "hours": rule.fast_out_hours,
        },
        f"快进快出: {j.cash(credits)} 入账后 {rule.fast_out_hours:g} 小时内 {j.cash(external_out)} "
        f"({fmt.percent(external_out / credits)}) 转出他行 — fast in, fast out: "
        f"{fmt.percent(external_out / credits)} of recent credits left within {rule.fast_out_hours:g} h",
    )


def _drawdown(j: _Judge) -> None:
    rule = j.config.outflow
    average = average_end_of_day(j.state, j.day, 30)
    floor = rule.drawdown_fraction * average
    below = average >= rule.drawdown_min_avg_balance and j.state.balance < floor
    if not j.edge("drawdown", below):
        return
    balances = _end_of_day(j.state, j.day, min(rule.drawdown_within_days + 1, 30))  # the same 30 days' tail
    recent_high = max(balances[:-1] or [ZERO])
    if recent_high >= floor:
        j.emit(
            "balance_drawdown",
            "outflow_risk",
            rule.severity,
            rule.cooldown_hours,
            {
                "balance": money(j.state.balance),
                "avg_balance_30d": money(average),
                "fraction": str(rule.drawdown_fraction),
                "highest_end_of_day_last_days": money(recent_high),
                "within_days": rule.drawdown_within_days,
            },
            f"余额骤降至 {j.cash(j.state.balance)}, 低于30日均余额 {j.cash(average)} 的 "
            f"{fmt.percent(rule.drawdown_fraction)} — balance fell to {j.cash(j.state.balance)}, below "
            f"{fmt.percent(rule.drawdown_fraction)} of its 30-day average {j.cash(average)} "
            f"within {rule.drawdown_within_days} days",
        )


def _churn(j: _Judge) -> None:
    rule = j.config.outflow
    last = j.memory.get("churn")
    if last is not None and last[0] == j.day:
        return  # checked today already
    share, banks = external_drift(j.state, max(j.newest, j.state.last_txn_us or 0))
    previous = Decimal(last[1]) if last is not None else ZERO
    j.memory["churn"] = [j.day, str(share)]
    drifting = banks >= rule.churn_min_banks and share >= rule.churn_share
    if j.edge("churn", drifting) and share - previous >= rule.churn_rise:
        j.emit(
            "churn_drift",
            "outflow_risk",
            "medium",
            rule.cooldown_hours,
            {
                "external_outflow_share_30d": ratio(share),
                "previous_share": ratio(previous),
                "external_banks_90d": banks,
                "churn_share": str(rule.churn_share),
                "churn_rise": str(rule.churn_rise),
            },
            f"资金分散外流: 他行流出占比升至 {fmt.percent(share)}, 涉及 {banks} 家他行 — money is drifting to "
            f"other banks: {fmt.percent(share)} of the outflow, {banks} banks",
        )


def spending(state: CustomerState, since_us: int, until_us: int) -> list[tuple[int, Decimal]]:
    """(time, amount) of every outflow after ``since_us`` up to ``until_us``, oldest first: the
    debits that are flows, loan repayments left out (the sweep reserves those apart)."""
    found = [
        (record.ts_us, -record.amount)
        for record in _recent(state, since_us)
        if not record.flags & (CREDIT | LOAN_REPAYMENT) and record.ts_us <= until_us
    ]
    return found[::-1]


def largest_outflow(debits: list[tuple[int, Decimal]], window_us: int) -> Decimal:
    """The most that left in any ``window_us`` of ``debits`` (oldest first): the customer's
    worst month of the history given, in one pass of a sliding window."""
    largest = total = ZERO
    start = 0
    for ts, amount in debits:
        total += amount
        while debits[start][0] <= ts - window_us:
            total -= debits[start][1]
            start += 1
        largest = max(largest, total)
    return largest


def lowest_balance(state: CustomerState, since_us: int) -> Decimal:
    """The lowest balance the account had after ``since_us``: now, after each kept transaction
    since then, and at ``since_us`` itself, but never before the customer's first transaction
    (there was no account to hold a balance of 0 then)."""
    balance = lowest = state.balance
    records = state.events
    for i in range(len(records) - 1, -1, -1):
        if records[i].ts_us <= since_us:
            break
        balance -= records[i].amount  # the balance before this record
        if i or records[0].ts_us != state.first_us:  # (before the customer's first: no account yet)
            lowest = min(lowest, balance)
    return lowest


def expected_redemption(state: CustomerState, since_us: int, until_us: int, kept: Decimal, amount: Decimal) -> Decimal:
    """What a sweep of ``amount`` that leaves ``kept`` in the account can expect to be redeemed
    within 30 days, from the customer's own months: for each day of the history that has 30
    days after it up to ``until_us``, how far their own money (every flow but loan repayments)
    fell below where it stood that day within the next 30 days, beyond ``kept`` (at most
    ``amount``); the mean over those days (a ``Decimal``; the caller rounds it to the cent).
    Days × kept flows: it runs only for a sweep about to be recommended."""
    flows = [r for r in _recent(state, since_us) if not r.flags & LOAN_REPAYMENT and r.ts_us <= until_us]
    points: list[tuple[int, Decimal]] = []
    level = ZERO
    for record in reversed(flows):
        level += record.amount
        points.append((record.ts_us, level))
    starts = range(since_us, until_us - 30 * US_PER_DAY + 1, US_PER_DAY)
    if not starts:
        return ZERO
    total = ZERO
    for start in starts:
        before = [value for ts, value in points if ts <= start]
        at = before[-1] if before else ZERO
        low = min((value for ts, value in points if start < ts <= start + 30 * US_PER_DAY), default=at)
        total += min(amount, max(at - low - kept, ZERO))
    return total / len(starts)


def _sweep(j: _Judge, event: TransactionEvent) -> None:
    rule = j.config.sweep
    if not rule.enabled:
        return
    # What the customer's history says (docs/findings.md, "The sweep's buffer"): the money that
    # stayed through the last ``buffer_history_days`` (their lowest balance: some of it, the
    # history is short), less a share of their worst month's outflow (a salary month, a yearly
    # bill, a purchase that recurs), less the next instalments.
    since = j.ts - rule.buffer_history_days * US_PER_DAY
    debits = spending(j.state, since, j.ts)
    recent = j.ts - 30 * US_PER_DAY
    outflow = sum((amount for ts, amount in debits if ts > recent), ZERO)
    worst_month = largest_outflow(debits, 30 * US_PER_DAY)
    buffer = worst_month * rule.buffer_months_of_outflow
    lowest = lowest_balance(j.state, since)
    # The next instalments are the ones just paid: every loan repayment of the last 28 days
    # (this one included) recurs within the month. Taken from the transactions alone, so the
    # reservation never depends on whether the loan system's report of the loan arrived
    # before or after the repayment (docs/findings.md), and it covers loans held elsewhere.
    next_instalments = ZERO
    paid = 0
    for record in _recent(j.state, j.ts - INSTALMENT_WINDOW_US):
        if record.flags & LOAN_REPAYMENT and not record.flags & CREDIT and record.ts_us <= j.ts:
            next_instalments -= record.amount
            paid += 1
    idle = j.state.balance - buffer
    if rule.idle_floor_share is not None:
        idle = min(idle, lowest * rule.idle_floor_share)
    idle -= next_instalments
    amount = (idle / rule.round_to).to_integral_value(rounding=ROUND_DOWN) * rule.round_to
    if amount < rule.min_amount:
        return
    if "post_repayment_sweep" not in j.config.disabled and j.unpaid_overdue():
        # money the overdue instalment needs is not idle: no sweep until it is paid (this
        # repayment may be the one that catches up; the next one will tell)
        j.out.suppressed.append(("post_repayment_sweep", "risk_veto:repayment_overdue"))
        return
    # The gain quoted honestly: the customer's own months say how much of the sweep they would
    # have taken back within 30 days, on average; that part earns nothing (counted as redeemed
    # at once: the figure errs low, never high).
    redemption = to_cent(expected_redemption(j.state, since, j.ts, j.state.balance - amount, amount))
    spread = rule.product_rate - rule.deposit_rate
    yearly = to_cent(amount * spread)
    gain = to_cent((amount - redemption) * spread * 30 / 365)
    finding = j.emit(
        "post_repayment_sweep",
        "sweep",
        rule.severity,
        rule.cooldown_hours,
        {
            "balance": money(j.state.balance),
            "repayment": money(event.amount),
            "typical_outflow_30d": money(outflow),
            "largest_outflow_30d": money(worst_month),
            "lowest_balance": money(lowest),
            "buffer_history_days": rule.buffer_history_days,
            "idle_floor_share": None if rule.idle_floor_share is None else str(rule.idle_floor_share),
            "safety_buffer": money(buffer),
            "next_instalments_reserved": money(next_instalments),
            "repayments_28d": paid,
            "idle": money(idle),
            "min_amount": money(rule.min_amount),
            "expected_redemption_30d": money(redemption),
        },
        f"还款后闲置资金 {j.cash(idle)}: 建议转入{rule.product_name} {j.cash(amount)}, "
        f"预计30天增收 {j.cash(gain)} (已扣除预计赎回 {j.cash(redemption)}; "
        f"全年持有 {j.cash(yearly)}) — after the repayment, sweep {j.cash(amount)} "
        f"to {rule.product_name}: +{j.cash(gain)} expected over 30 days, net of an expected "
        f"redemption of {j.cash(redemption)} (+{j.cash(yearly)} a year if all of it stays)",
        kind="recommendation",
        extra={
            "amount": money(amount),
            "product": rule.product,
            "product_rate": str(rule.product_rate),
            "deposit_rate": str(rule.deposit_rate),
            "expected_yearly_gain": money(yearly),
            "expected_gain_30d": money(gain),
        },
    )
    if finding is not None:
        j.push(finding, "sweep")


def _ledger(j: _Judge) -> None:
    rule = j.config.ledger
    if not rule.enabled or not j.state.ledger:
        return
    ledger = sum((entry[1] for entry in j.state.ledger.values()), ZERO)
    drift = j.state.balance - ledger
    if j.edge("ledger", abs(drift) > rule.tolerance):
        j.emit(
            "ledger_drift",
            "ledger",
            rule.severity,
            rule.cooldown_hours,
            {
                "balance": money(j.state.balance),
                "ledger_balance": money(ledger),
                "ledger_drift": money(drift),
                "tolerance": money(rule.tolerance),
            },
            f"对账差异 {j.cash(drift)}: 流水余额与核心账务余额不一致 — "
            f"balance and core ledger differ by {j.cash(drift)}",
        )


# --- due dates, judged in event time ----------------------------------------------------------
#
# A LoanEvent that reports a next due date D of an active loan registers (loan, D) once, in
# ``rule_state["dues"]``, with the figures of that first report. The checks of (loan, D) sit at
# fixed event-time points: the reminder at the start of day D - reminder_days and again at the
# start of day D (balance short of the instalment), the overdue check at the start of day
# D + overdue_days. A loan repayment seen since the report (at most a month before D, at least
# from D - 10 days) pays D: neither check fires then. A check point is judged as soon as the
# customer's transactions have passed it and the loan is registered, whichever came last,
# from the kept transactions before it, so the arrival order of the two topics does not
# matter. docs/findings.md states the bound.

REMIND, DUE, OVERDUE = "remind", "due", "overdue"
PAID_FROM_DAYS = (31, 10)  # a repayment pays D from the report on, within these days before D


def _paid_from(entry: dict[str, Any], zone: ZoneInfo) -> int:
    """Where a repayment starts to count for this due date: the report that announced it,
    but not more than a month before the date, and always from 10 days before it."""
    earliest, latest = (midnight_us(entry["due"] - days, zone) for days in PAID_FROM_DAYS)
    reported: int = entry["at"]
    return min(max(reported, earliest), latest)


def _points(due: int, config: RulesConfig, zone: ZoneInfo) -> list[tuple[str, int]]:
    """(check, when it is judged) of one due date."""
    rule = config.repayment
    return [
        (REMIND, midnight_us(due - rule.reminder_days, zone)),
        (DUE, midnight_us(due, zone)),
        (OVERDUE, midnight_us(due + rule.overdue_days, zone)),
    ]


def _register_due(j: _Judge, event: LoanEvent) -> None:
    if event.status == "closed" or event.installment <= 0:
        return
    dues: dict[str, dict[str, Any]] = j.memory.setdefault("dues", {})
    key = f"{event.loan_id} {event.next_due.isoformat()}"
    if key in dues:
        return  # a later report of the same due date: the first one's figures stand
    clock = j.state.last_txn_us
    if clock is not None and j.ts < clock - j.config.loan_lateness_days * US_PER_DAY:
        j.out.suppressed.append(("repayment", "late_loan"))
        return
    dues[key] = {
        "loan": event.loan_id,
        "due": event.next_due.toordinal(),
        "at": j.ts,
        "installment": str(event.installment),
        "outstanding": str(event.outstanding),
        # a check point the report came after does not apply: the report did not exist yet
        "done": [check for check, when in _points(event.next_due.toordinal(), j.config, j.zone) if when <= j.ts],
    }


def _balance_at(state: CustomerState, ts_us: int) -> Decimal:
    """The balance just before ``ts_us``: the kept transactions at or after it taken back."""
    balance = state.balance
    for record in reversed(state.events):
        if record.ts_us < ts_us:
            break
        balance -= record.amount
    return balance


def _repaid(state: CustomerState, since: int, until: int) -> bool:
    """A loan repayment at ``since`` or later, before ``until``."""
    return any(r.flags & LOAN_REPAYMENT and r.ts_us < until for r in _recent(state, since - 1))


def _due_dates(j: _Judge) -> None:
    """Judge every registered check point the customer's transactions have passed."""
    rule = j.config.repayment
    dues: dict[str, dict[str, Any]] | None = j.memory.get("dues")
    clock = j.state.last_txn_us
    if not dues or clock is None:
        return
    kept_from = midnight_us(j.state.kept_from_day, j.zone) if j.state.kept_from_day is not None else None
    for key, entry in sorted(dues.items(), key=lambda item: (item[1]["due"], item[1]["loan"])):
        since = _paid_from(entry, j.zone)
        for check, when in _points(entry["due"], j.config, j.zone):
            if check in entry["done"] or when > clock:
                continue
            entry["done"].append(check)
            if not rule.enabled:
                continue
            if kept_from is not None and since < kept_from:  # the transactions it reads are gone
                j.out.suppressed.append((f"repayment_{check}", "late"))
                continue
            if _repaid(j.state, since, when):
                continue
            if check == OVERDUE:
                _overdue(j, entry, when, since)
            elif _due_short(j, entry, when, check) and DUE not in entry["done"]:
                entry["done"].append(DUE)  # one reminder per due date
        finished = {REMIND, DUE, OVERDUE} <= set(entry["done"])
        if finished and kept_from is not None and midnight_us(entry["due"], j.zone) < kept_from:
            del dues[key]  # every check of it is behind the kept window: a re-report is too late anyway


def _due_short(j: _Judge, entry: dict[str, Any], when: int, check: str) -> bool:
    installment = Decimal(entry["installment"])
    balance = _balance_at(j.state, when)
    if balance >= installment:
        return False
    _due_finding(
        j,
        entry,
        when,
        "repayment_due_short",
        {"balance": money(balance), "days_left": j.config.repayment.reminder_days if check == REMIND else 0},
        f"余额 {j.cash(balance)} 不足 — instalment due {{due}}, balance {j.cash(balance)} short",
    )
    return True


def _overdue(j: _Judge, entry: dict[str, Any], when: int, since: int) -> None:
    days = j.config.repayment.overdue_days
    seen_from = dt.datetime.fromtimestamp(since / 1_000_000, dt.UTC).astimezone(j.zone).isoformat()
    finding = _due_finding(
        j,
        entry,
        when,
        "repayment_overdue",
        {"days_overdue": days, "outstanding": money(Decimal(entry["outstanding"])), "no_repayment_since": seen_from},
        f"已过 {days} 天未见还款 — no repayment {days} days after the due date {{due}}",
    )
    if finding is not None:
        j.note_overdue(when, entry["at"])


def _due_finding(
    j: _Judge, entry: dict[str, Any], when: int, rule_name: str, evidence: dict[str, Any], tail: str
) -> Finding | None:
    """A due date's finding: at the check point's time, triggered by (loan, due date)."""
    rule = j.config.repayment
    loan_id = entry["loan"]
    due = dt.date.fromordinal(entry["due"]).isoformat()
    installment = money(Decimal(entry["installment"]))
    said = j.cash(Decimal(entry["installment"]))
    overdue = rule_name == "repayment_overdue"
    head = (
        f"逾期风险: 贷款 {loan_id} 应于 {due} 还款 {said}, "
        if overdue
        else f"还款提醒: 贷款 {loan_id} 将于 {due} 还款 {said}, "
    )
    return j.emit(
        rule_name,
        "repayment",
        rule.overdue_severity if overdue else rule.severity,
        None,  # each (loan, due date) check fires at most once; a cool-down would make it order-dependent
        {"loan_id": loan_id, "next_due": due, "installment": installment, **evidence},
        head + tail.format(due=due),
        at=(when, f"loan:{loan_id}:due:{due}"),
        reported_us=entry["at"],
    )


def _income(j: _Judge) -> None:
    """Salary/pension missing or down sharply last month against the customer's own months."""
    rule = j.config.repayment
    date = dt.date.fromordinal(j.day)
    month = date.year * 12 + date.month - 1
    checked = j.memory.get("income_checked")
    if checked is not None and checked >= month:
        return
    j.memory["income_checked"] = month
    incomes = j.state.income_months
    last = month - 1
    pattern = [incomes.get(last - k, ZERO) for k in range(1, rule.income_months + 1)]
    if not incomes or min(pattern) <= 0:
        return  # no regular income to compare with
    usual = sum(pattern, ZERO) / len(pattern)
    got = incomes.get(last, ZERO)
    if got < (1 - rule.income_drop) * usual and j.once(f"income:{last}"):
        missing = got == 0
        j.emit(
            "salary_flow_anomaly",
            "repayment",
            rule.severity,
            rule.cooldown_hours,
            {
                "month": f"{last // 12}-{last % 12 + 1:02d}",
                "income": money(got),
                "usual_income": money(usual),
                "drop_threshold": str(rule.income_drop),
                "months_compared": rule.income_months,
            },
            ("工资/养老金未到账" if missing else "工资/养老金大幅下降")
            + f" ({last // 12}-{last % 12 + 1:02d}: {j.cash(got)}, 通常 {j.cash(usual)}) — "
            + ("salary/pension missing" if missing else "salary/pension down sharply")
            + " last month",
        )

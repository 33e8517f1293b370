"""``fundflow evaluate-rules``: were the alerts worth a person's time?

Judges each rule the way a bank would, against what really happened next in
the data, beside the base rate over comparable events:

- outflow risk (large external outflow, fast-in-fast-out, drawdown, streak,
  churn drift): *drained* = the balance ``horizon`` days after the trigger is
  below half of the customer's average end-of-day balance over the 30 days
  before it. Base: the same test after every debit of every customer.
- collection opportunity: *left* = within ``horizon`` days the balance falls
  below the balance before the credit plus half of the credit (most of the
  inflow left). Base: every credit of at least the rule's minimum amount.
- other rules: counted, with the share of distinct customers they fired on.
- post-repayment sweeps (``recommendations.jsonl``): judged by their outcome, the customer's
  actual later transactions replayed with the swept amount taken out (``sweep_outcome``):
  the share of sweeps short within the horizon, the depth, the headroom, and the gain net of
  the redemptions a short customer would have made.

An alert a reversal took back (docs/events.md, "Retractions") is not judged: the money it
reacted to never moved. It is counted as ``retracted`` beside its rule.

Only triggers with a full horizon of data after them are judged; the rest are
counted as "too recent". Pure computation over two files: the events JSONL the
backtest ran on and its ``alerts.jsonl``.

Beside the data's verdict, the analysts' (issue 19, "outcomes teach the rules"):
per rule, the precision of its resolved cases (confirmed / resolved), volume and
median times, as ``cases.store.CaseStore.precision`` reads them for
``GET /rules/precision``. The command reads them from the cases in Redis
(``streams.cli.commands.read_precision``); here they are only laid out.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, localcontext
from pathlib import Path
from statistics import median
from typing import Any

import orjson

from cases.model import RulePrecision
from rules import fmt
from rules.config import SweepRule
from rules.money import to_cent
from rules.state import to_us
from streams.errors import ConfigError

OUTFLOW_RULES = ("large_external_outflow", "fast_in_fast_out", "balance_drawdown", "net_outflow_streak", "churn_drift")
DAY = dt.timedelta(days=1)
SWEEP_RULE = "post_repayment_sweep"
YEAR_US = 365 * 86_400 * 1_000_000
DEPOSIT_RATE = SweepRule().deposit_rate  # for a sweep that does not carry the rate it was compared with


@dataclass(slots=True)
class Timeline:
    """One customer's balance after each transaction, in event-time order."""

    times: list[dt.datetime]
    balances: list[Decimal]
    credits: list[tuple[dt.datetime, Decimal, Decimal]]  # (ts, amount, balance before)
    debits: list[dt.datetime]

    def balance_at(self, moment: dt.datetime) -> Decimal:
        i = bisect.bisect_right(self.times, moment)
        return self.balances[i - 1] if i else Decimal(0)

    def average_before(self, moment: dt.datetime, days: int = 30) -> Decimal:
        points = [self.balance_at(moment - DAY * k) for k in range(1, days + 1)]
        return sum(points, Decimal(0)) / len(points)

    def minimum_between(self, start: dt.datetime, end: dt.datetime) -> Decimal:
        i = bisect.bisect_right(self.times, start)
        j = bisect.bisect_right(self.times, end)
        values = [self.balance_at(start), *self.balances[i:j]]
        return min(values)


def timelines(events: Iterable[dict[str, Any]]) -> dict[str, Timeline]:
    rows: dict[str, list[tuple[dt.datetime, Decimal, str]]] = defaultdict(list)
    for event in events:
        if "txn_id" not in event or "direction" not in event:
            continue
        signed = Decimal(str(event["amount"])) * (1 if event["direction"] == "credit" else -1)
        rows[str(event["customer_id"])].append((dt.datetime.fromisoformat(event["ts"]), signed, event["direction"]))
    result = {}
    for customer, items in rows.items():
        items.sort(key=lambda r: r[0])
        balance = Decimal(0)
        line = Timeline([], [], [], [])
        for ts, signed, direction in items:
            if direction == "credit":
                line.credits.append((ts, signed, balance))
            else:
                line.debits.append(ts)
            balance += signed
            line.times.append(ts)
            line.balances.append(balance)
        result[customer] = line
    return result


def drained(line: Timeline, moment: dt.datetime, horizon: int) -> bool:
    average = line.average_before(moment)
    return average > 0 and line.balance_at(moment + DAY * horizon) < average / 2


def inflow_left(line: Timeline, moment: dt.datetime, amount: Decimal, before: Decimal, horizon: int) -> bool:
    return line.minimum_between(moment, moment + DAY * horizon) < before + amount / 2


@dataclass(slots=True)
class Outcomes:
    """What really happened after each moment of a history, computed once and judged
    against any number of alert sets (``fundflow tune`` judges one per threshold)."""

    lines: dict[str, Timeline]
    horizon: int
    judged_until: dt.datetime | None
    base_drain: list[bool]
    _base_left: dict[Decimal, list[bool]]

    def base_left(self, collection_min: Decimal) -> list[bool]:
        if collection_min not in self._base_left:
            until = self.judged_until
            self._base_left[collection_min] = [
                inflow_left(line, ts, amount, before, self.horizon)
                for line in self.lines.values()
                for ts, amount, before in line.credits
                if amount >= collection_min and until is not None and ts <= until
            ]
        return self._base_left[collection_min]


def outcomes(events: list[dict[str, Any]], horizon: int = 30) -> Outcomes:
    lines = timelines(events)
    last = max((line.times[-1] for line in lines.values() if line.times), default=None)
    judged_until = last - DAY * horizon if last is not None else None
    base_drain = (
        [drained(line, ts, horizon) for line in lines.values() for ts in line.debits if ts <= judged_until]
        if judged_until is not None
        else []
    )
    return Outcomes(lines, horizon, judged_until, base_drain, {})


def evaluate(
    events: list[dict[str, Any]], alerts: list[dict[str, Any]], *, horizon: int = 30, collection_min: Decimal
) -> dict[str, Any]:
    return judge(outcomes(events, horizon), alerts, collection_min)


def standing(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts a rule is judged by: not a retraction, and not taken back by one (its trigger
    was reversed: the money it reacted to never moved, so what happened next says nothing of
    the rule). Retracted alerts are counted apart (``retracted`` in the report)."""
    retracted = {a["retracts"] for a in alerts if a.get("retracts")}
    return [a for a in alerts if not a.get("retracts") and a.get("id") not in retracted]


def judge(history: Outcomes, alerts: list[dict[str, Any]], collection_min: Decimal) -> dict[str, Any]:
    """Each rule's alerts against what happened next, beside the base rate."""
    lines, horizon, judged_until = history.lines, history.horizon, history.judged_until
    if judged_until is None:
        return {"rules": {}, "customers": 0}
    base_drain = history.base_drain
    base_left = history.base_left(collection_min)
    by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for alert in standing(alerts):
        by_rule[str(alert["rule"])].append(alert)
    taken_back: dict[str, int] = defaultdict(int)
    for alert in alerts:
        if alert.get("retracts"):
            taken_back[str(alert["rule"])] += 1
            by_rule.setdefault(str(alert["rule"]), [])
    report: dict[str, Any] = {}
    for rule, fired in sorted(by_rule.items()):
        customers = {a["customer_id"] for a in fired}
        entry: dict[str, Any] = {
            "fired": len(fired),
            "retracted": taken_back.get(rule, 0),
            "customers": len(customers),
            "customer_share": round(len(customers) / len(lines), 4) if lines else 0.0,
        }
        if rule in OUTFLOW_RULES or rule == "collection_opportunity":
            hits = []
            for alert in fired:
                line = lines.get(str(alert["customer_id"]))
                moment = dt.datetime.fromisoformat(alert["ts"])
                if line is None or moment > judged_until:
                    continue
                if rule == "collection_opportunity":
                    amount = Decimal(str(alert["evidence"].get("amount", "0")))
                    hits.append(inflow_left(line, moment, amount, line.balance_at(moment) - amount, horizon))
                else:
                    hits.append(drained(line, moment, horizon))
            base = base_left if rule == "collection_opportunity" else base_drain
            entry.update(_rates(hits, base))
            entry["outcome"] = "inflow left" if rule == "collection_opportunity" else "balance drained"
        report[rule] = entry
    return {
        "customers": len(lines),
        "horizon_days": horizon,
        "judged_until": judged_until.isoformat(),
        "base": {"debits": _share(base_drain), "large_credits": _share(base_left)},
        "rules": report,
    }


def _share(outcomes: list[bool]) -> dict[str, Any]:
    return {"n": len(outcomes), "rate": round(sum(outcomes) / len(outcomes), 4) if outcomes else None}


def _rates(outcomes: list[bool], base: list[bool]) -> dict[str, Any]:
    hit, floor = _share(outcomes), _share(base)
    lift = round(hit["rate"] / floor["rate"], 2) if hit["rate"] is not None and floor["rate"] else None
    return {"judged": hit["n"], "hit_rate": hit["rate"], "base_rate": floor["rate"], "lift": lift}


def with_analysts(result: dict[str, Any], rows: Sequence[RulePrecision] | None, source: str) -> dict[str, Any]:
    """``result`` with the analysts' precision per rule beside it; ``rows`` None: not read
    (``source`` says why), empty: no case in Redis yet."""
    analysts = None
    if rows is not None:
        analysts = {row.rule: {k: v for k, v in asdict(row).items() if k != "rule"} for row in rows}
    return {**result, "analysts": {"source": source, "rules": analysts}}


def render(result: dict[str, Any]) -> str:
    analysts = (result.get("analysts") or {}).get("rules")
    out = [
        f"rules judged against what happened in the next {result.get('horizon_days')} days "
        f"({result.get('customers')} customers; triggers up to {result.get('judged_until')})",
        "",
        f"{'rule':<26} {'fired':>6} {'customers':>10} {'share':>7} {'judged':>7} {'hit rate':>9} {'base':>7} "
        f"{'lift':>6}{'  analysts' if analysts is not None else ''}  outcome",
    ]
    for rule, e in result.get("rules", {}).items():
        hit = "—" if e.get("hit_rate") is None else f"{e['hit_rate']:.1%}"
        base = "—" if e.get("base_rate") is None else f"{e['base_rate']:.1%}"
        lift = "—" if e.get("lift") is None else f"{e['lift']:.1f}×"
        seen = "" if analysts is None else f"  {percent((analysts.get(rule) or {}).get('precision')):>8}"
        out.append(
            f"{rule:<26} {e['fired']:>6} {e['customers']:>10} {e['customer_share']:>7.1%} {e.get('judged', '—'):>7} "
            f"{hit:>9} {base:>7} {lift:>6}{seen}  {e.get('outcome', '')}"
        )
    if "sweeps" in result:
        out += ["", *render_sweeps(result["sweeps"])]
    if "analysts" in result:
        out += ["", *render_analysts(result["analysts"])]
    return "\n".join(out)


def render_analysts(analysts: dict[str, Any]) -> list[str]:
    """The analysts' table: what the people who worked the cases concluded, per rule."""
    rules: dict[str, dict[str, Any]] | None = analysts.get("rules")
    if rules is None:
        return [f"analysts' precision: {analysts.get('source')}"]
    if not rules:
        return [f"analysts' precision: no case yet in {analysts.get('source')}"]
    out = [
        f"analysts' precision from the cases in {analysts.get('source')} "
        "(confirmed / resolved; a case counts for every rule with a finding in it)",
        "",
        f"{'rule':<26} {'cases':>6} {'findings':>9} {'resolved':>9} {'confirmed':>10} {'dismissed':>10} "
        f"{'precision':>10} {'1st action':>11} {'resolution':>11}",
    ]
    for rule, r in rules.items():
        out.append(
            f"{rule:<26} {r['cases']:>6} {r['findings']:>9} {r['resolved']:>9} {r['confirmed']:>10} "
            f"{r['dismissed']:>10} {percent(r['precision']):>10} {duration(r['median_first_action_seconds']):>11} "
            f"{duration(r['median_resolution_seconds']):>11}"
        )
    return out


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def duration(seconds: float | None) -> str:
    """A median time for people: ``45 s``, ``12 min``, ``3.5 h``, ``2.1 d``."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def low_precision(rows: Sequence[RulePrecision], min_precision: float, min_resolved: int) -> list[RulePrecision]:
    """Rules whose analysts confirm fewer than ``min_precision`` of at least ``min_resolved``
    resolved cases: alerts that cost the analysts' time more often than they were right."""
    return [r for r in rows if r.precision is not None and r.resolved >= min_resolved and r.precision < min_precision]


# --- sweeps, judged by their outcome ---------------------------------------------------------
#
# A post-repayment sweep moves money out of the current account into a fund. Had the customer
# followed it, every later transaction of theirs would have met a balance lower by the swept
# amount: the sweep left them short if that balance went below zero within the horizon. A fund
# can be redeemed, so a short customer takes back what the account needs, when it needs it; the
# sweep then earns only on what stayed, for as long as it stayed.


@dataclass(frozen=True, slots=True)
class Flow:
    """One transaction after the sweep: when, the signed amount, whether it pays a loan."""

    ts_us: int
    amount: Decimal
    repayment: bool = False


@dataclass(frozen=True, slots=True)
class SweepOutcome:
    """What one sweep would have done over its horizon (exact, unrounded)."""

    headroom: Decimal  # the lowest balance reached with the amount swept out (< 0: short, by this much)
    short: bool  # below zero at some moment of the horizon
    short_of_instalment: bool  # below the next instalment at some moment before it was paid
    redeemed: Decimal  # what the account would have needed back from the fund by the horizon's end
    gain: Decimal  # earned over the horizon on what stayed in the fund, for as long as it stayed
    held_gain: Decimal  # earned had it all stayed the whole horizon (what the old message implied)


def sweep_outcome(
    balance: Decimal,
    start_us: int,
    later: Sequence[Flow],
    amount: Decimal,
    instalment: Decimal,
    spread: Decimal,
    horizon_us: int,
) -> SweepOutcome:
    """Replay ``later`` (the customer's transactions after the sweep, in order) against the
    account with ``amount`` taken out at ``start_us``, when the balance was ``balance``.

    The fund holds ``min(amount, lowest real balance so far)`` (never below zero): each time
    the account would go below zero the customer redeems just what it needs. ``gain`` is
    ``spread`` (product rate minus deposit rate, a year) on that holding over the horizon.
    Pure and exact: only ``Decimal`` and integer microseconds."""
    end = start_us + horizon_us
    lowest = running = balance
    held = min(amount, max(balance, Decimal(0)))
    short_of_instalment = balance - amount < instalment
    instalment_due = True  # until the next loan repayment is paid
    area = Decimal(0)  # Σ held × µs
    last = start_us
    for flow in later:
        if flow.ts_us > end:
            break
        if flow.ts_us > last:
            area += held * (flow.ts_us - last)
            last = flow.ts_us
        if flow.repayment and flow.amount < 0:
            instalment_due = False
        running += flow.amount
        lowest = min(lowest, running)
        if instalment_due and running - amount < instalment:
            short_of_instalment = True
        held = min(held, max(running, Decimal(0)))
    area += held * (end - last)
    with localcontext() as ctx:
        ctx.prec = 60  # amounts × µs × rates stay exact far beyond a cent
        gain = spread * area / YEAR_US
        held_gain = spread * amount * horizon_us / YEAR_US
    return SweepOutcome(lowest - amount, lowest - amount < 0, short_of_instalment, amount - held, gain, held_gain)


Paths = dict[str, tuple[list[Flow], dict[str, int]]]  # customer -> (transactions, txn_id -> position)


def flows(events: Iterable[dict[str, Any]]) -> Paths:
    """Each customer's transactions in event-time order (the file's order within a moment) and
    the position of each ``txn_id`` in them."""
    rows: dict[str, list[tuple[int, int, Flow, str]]] = defaultdict(list)
    for n, event in enumerate(events):
        if "txn_id" not in event or "direction" not in event:
            continue
        signed = Decimal(str(event["amount"])) * (1 if event["direction"] == "credit" else -1)
        ts = to_us(dt.datetime.fromisoformat(event["ts"]))
        repayment = event.get("kind") == "loan_repayment" and not event.get("reverses")
        rows[str(event["customer_id"])].append((ts, n, Flow(ts, signed, repayment), str(event["txn_id"])))
    result = {}
    for customer, items in rows.items():
        items.sort(key=lambda r: (r[0], r[1]))
        result[customer] = ([r[2] for r in items], {r[3]: i for i, r in enumerate(items)})
    return result


def judge_sweeps(
    events: list[dict[str, Any]],
    recommendations: list[dict[str, Any]],
    horizon: int,
    deposit_rate: Decimal,
    paths: Paths | None = None,
) -> dict[str, Any] | None:
    """Every standing post-repayment sweep replayed against the customer's actual later
    transactions (``sweep_outcome``); None when there is none. A sweep closer than the horizon
    to the data's end is judged on the days the data has (counted as ``partial_horizon``):
    unlike a hit rate, a shortfall seen is a shortfall, and leaving the last month's sweeps
    out would leave out a third of Berka's. ``paths``: ``flows(events)``, when already made."""
    sweeps = [r for r in standing(recommendations) if r.get("rule") == SWEEP_RULE]
    if not sweeps:
        return None
    paths = flows(events) if paths is None else paths
    last = max((path[-1].ts_us for path, _ in paths.values() if path), default=0)
    horizon_us = horizon * 86_400 * 1_000_000
    judged: list[tuple[dict[str, Any], SweepOutcome]] = []
    short_of_data = 0
    for sweep in sweeps:
        path, position = paths.get(str(sweep["customer_id"]), ([], {}))
        start = to_us(dt.datetime.fromisoformat(sweep["ts"]))
        if not path:
            continue
        short_of_data += start + horizon_us > last
        at = position.get(str(sweep.get("trigger_txn_id")))
        if at is None:  # not in this file: the last transaction at or before the sweep's moment
            at = bisect.bisect_right([f.ts_us for f in path], start) - 1
        balance = sum((f.amount for f in path[: at + 1]), Decimal(0))
        evidence = sweep.get("evidence") or {}
        instalment = Decimal(str(evidence.get("next_instalments_reserved") or evidence.get("repayment") or 0))
        spread = Decimal(str(sweep.get("product_rate", 0))) - Decimal(str(sweep.get("deposit_rate", deposit_rate)))
        amount = Decimal(str(sweep["amount"]))
        judged.append((sweep, sweep_outcome(balance, start, path[at + 1 :], amount, instalment, spread, horizon_us)))
    return {**sweep_summary(len(sweeps), judged, horizon), "partial_horizon": short_of_data}


def sweep_summary(made: int, judged: list[tuple[dict[str, Any], SweepOutcome]], horizon: int) -> dict[str, Any]:
    """The outcome of the judged sweeps: shares short, depth, headroom, gain net of redemptions."""
    outcomes = [o for _, o in judged]
    short = [o for o in outcomes if o.short]
    n = len(outcomes)
    swept = sum((Decimal(str(s["amount"])) for s, _ in judged), Decimal(0))
    gain = sum((o.gain for o in outcomes), Decimal(0))
    held = sum((o.held_gain for o in outcomes), Decimal(0))
    return {
        "made": made,
        "judged": n,
        "customers": len({s["customer_id"] for s, _ in judged}),
        "swept": str(to_cent(swept)),
        "short": len(short),
        "short_share": round(len(short) / n, 4) if n else None,
        "short_of_instalment": sum(o.short_of_instalment for o in outcomes),
        "short_of_instalment_share": round(sum(o.short_of_instalment for o in outcomes) / n, 4) if n else None,
        "redeemed": sum(o.redeemed > 0 for o in outcomes),
        "depth_lowest": str(to_cent(min(o.headroom for o in short))) if short else None,
        "depth_median": str(to_cent(median(o.headroom for o in short))) if short else None,
        "headroom_median": str(to_cent(median(o.headroom for o in outcomes))) if outcomes else None,
        "gain": str(to_cent(gain)),  # net of redemptions, over the horizon
        "gain_if_held": str(to_cent(held)),
        "gain_kept_share": round(float(gain / held), 4) if held else None,
        "horizon_days": horizon,
    }


def render_sweeps(sweeps: dict[str, Any] | None) -> list[str]:
    """The sweeps' outcome for people."""
    if sweeps is None:
        return ["sweeps: none in recommendations.jsonl"]
    if not sweeps["judged"]:
        return [f"sweeps: {sweeps['made']} made, none with a full {sweeps['horizon_days']}-day horizon after it"]
    days = sweeps["horizon_days"]
    depth = (
        f"shortfall lowest {fmt.amount(sweeps['depth_lowest'])}, median {fmt.amount(sweeps['depth_median'])}"
        if sweeps["short"]
        else "no shortfall"
    )
    return [
        f"sweeps judged by their outcome: {sweeps['judged']} of {sweeps['made']} post-repayment sweeps "
        f"({sweeps['customers']} customers, {fmt.amount(sweeps['swept'])} swept) replayed against the customer's "
        f"next {days} days with the amount taken out ({sweeps.get('partial_horizon', 0)} with fewer days of data)",
        f"  below zero within {days} days: {sweeps['short']} ({fmt.percent(sweeps['short_share'], 1)}); "
        f"below the next instalment before it was paid: {sweeps['short_of_instalment']} "
        f"({fmt.percent(sweeps['short_of_instalment_share'], 1)}); {depth}",
        f"  median headroom {fmt.amount(sweeps['headroom_median'])}; gain over {days} days net of redemptions "
        f"{fmt.amount(sweeps['gain'])} of {fmt.amount(sweeps['gain_if_held'])} had every sweep stayed "
        f"({fmt.percent(sweeps['gain_kept_share'])}); {sweeps['redeemed']} sweeps partly or wholly redeemed",
    ]


def run_evaluate(
    events_path: Path,
    backtest_dir: Path,
    horizon: int,
    collection_min: Decimal,
    deposit_rate: Decimal = DEPOSIT_RATE,
) -> dict[str, Any]:
    """Each rule's alerts judged (``alerts.jsonl``), and the sweeps (``recommendations.jsonl``,
    when the backtest wrote one) by their outcome; ``deposit_rate`` for a sweep that does not
    carry the rate it was compared with."""
    events = [orjson.loads(line) for line in events_path.read_bytes().splitlines() if line.strip()]
    alerts_file = backtest_dir / "alerts.jsonl"
    if not alerts_file.exists():
        raise ConfigError(f"no alerts.jsonl in {backtest_dir}: run `fundflow backtest` first")
    alerts = [orjson.loads(line) for line in alerts_file.read_bytes().splitlines() if line.strip()]
    result = evaluate(events, alerts, horizon=horizon, collection_min=collection_min)
    recommendations_file = backtest_dir / "recommendations.jsonl"
    if recommendations_file.exists():
        lines = recommendations_file.read_bytes().splitlines()
        recommendations = [orjson.loads(line) for line in lines if line.strip()]
        result["sweeps"] = judge_sweeps(events, recommendations, horizon, deposit_rate)
    return result

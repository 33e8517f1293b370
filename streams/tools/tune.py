"""``fundflow tune EVENTS.jsonl --out DIR``: calibrate the rule thresholds on your own history.

For each predictive rule's main threshold, the real rules (``streams.rulestep.rules_step``,
the step the worker runs: no second implementation of any rule, no Kafka) run over the
file once per value of a grid, and every value's alerts are judged the way
``fundflow evaluate-rules`` judges a backtest: after an outflow-risk alert, did the
balance drain within the horizon; after a collection alert, did the inflow leave.

Writes ``DIR/<rule>.csv`` (value, alerts fired, customers hit, share of customers,
judged, hit rate, base rate, lift), ``DIR/tables.md`` (the same, for people), and
``DIR/rules.yaml``: the given rules (or the defaults) with, per rule, the value of best
lift among those that fire on at least ``min_customers`` and at most ``max_share`` of
the customers; a rule with no such value above lift 1 is listed under ``disabled``.
The suggested file is validated by the same loader ``fundflow worker`` uses.

Given the analysts' precision per rule (from the cases, as ``fundflow evaluate-rules``
shows it), ``tables.md`` opens with it and marks each rule whose analysts confirm fewer
than ``min_precision`` of at least ``min_resolved`` resolved cases: the history may say
the rule beats its base rate while the people who work its alerts find it mostly wrong.
The mark informs; it does not change the suggested values.

The sweep is judged by its outcome, not a hit rate: its two knobs (``SWEEP_GRID``) run in the
same passes, each setting's sweeps are replayed against the customers' actual later
transactions (``evaluate.judge_sweeps``), and the suggestion keeps the most swept money among
the settings that leave at most ``max_short_share`` of their sweeps short within the horizon
(none: ``post_repayment_sweep`` under ``disabled``). ``DIR/post_repayment_sweep.csv`` and
``tables.md`` hold the trade-off; the command prints it.

One grid pass sets every rule's knob at once: each rule reads only its own thresholds
(their cool-downs and severities, which the grid never varies, are per rule), so a rule
fires the same whatever the other rules' thresholds are. The passes are the grid's
length, not the sum of its lengths.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import yaml

from cases.model import RulePrecision
from rules import fmt
from rules.config import RulesConfig, RulesConfigError, load_rules, parse_rules
from rules.events import Event
from rules.state import CustomerState, StateConfig
from streams.deadletter import RawRecord
from streams.decode import decode
from streams.errors import ConfigError, InvalidEvent
from streams.rulestep import RulesProvider, rules_step
from streams.settings import Settings, state_config
from streams.tools.evaluate import (
    OUTFLOW_RULES,
    SWEEP_RULE,
    Outcomes,
    duration,
    flows,
    judge,
    judge_sweeps,
    low_precision,
    outcomes,
    percent,
)
from streams.tools.progress import Progress
from streams.tools.replay import read_lines, route
from streams.topics import ALERTS, RECOMMENDATIONS

MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Knob:
    """One rule's main threshold and the values tried (loosest first)."""

    rule: str
    path: str  # section.field in rules.yaml
    values: tuple[str, ...]


KNOBS: tuple[Knob, ...] = (
    Knob("collection_opportunity", "collection.usual_inflow_multiple", ("1", "1.5", "2", "3", "5")),
    Knob("large_external_outflow", "outflow.large_external_share", ("0.3", "0.5", "0.7", "0.8", "0.9")),
    Knob("fast_in_fast_out", "outflow.fast_out_share", ("0.5", "0.6", "0.7", "0.8", "0.9")),
    Knob("balance_drawdown", "outflow.drawdown_fraction", ("0.5", "0.4", "0.3", "0.2", "0.1")),
    Knob("net_outflow_streak", "outflow.streak_days", ("3", "4", "5", "7", "10")),
    Knob("churn_drift", "outflow.churn_share", ("0.4", "0.5", "0.6", "0.7", "0.8")),
)
COLUMNS = ("value", "fired", "customers", "customer_share", "judged", "hit_rate", "base_rate", "lift")
# The sweep is judged by its outcome, not by a hit rate (``evaluate.judge_sweeps``): its two knobs
# together, loosest last; ``fundflow tune`` keeps the most swept money within the shortfall target.
SWEEP_KNOBS = ("sweep.idle_floor_share", "sweep.buffer_months_of_outflow")
SWEEP_GRID: tuple[tuple[str, str], ...] = tuple(
    (floor, months) for floor in ("0.5", "0.6", "0.7", "0.8") for months in ("1", "0.5", "0.25")
)
SWEEP_COLUMNS = (
    "idle_floor_share",
    "buffer_months_of_outflow",
    "sweeps",
    "customers",
    "swept",
    "short",
    "short_share",
    "depth_lowest",
    "depth_median",
    "headroom_median",
    "gain",
)


@dataclass(frozen=True, slots=True)
class Analysts:
    """What the analysts concluded per rule (None: not read, ``source`` says why) and
    when a rule's precision counts as low."""

    rows: tuple[RulePrecision, ...] | None = None
    source: str = "not read"
    min_precision: float = 0.5
    min_resolved: int = 20

    def low(self) -> dict[str, RulePrecision]:
        return {r.rule: r for r in low_precision(self.rows or (), self.min_precision, self.min_resolved)}


def load_events(path: Path) -> tuple[list[Event], list[dict[str, Any]], int]:
    """The file's valid events (as the worker would decode them), their JSON objects for the
    outcome judge, and how many lines a backtest would dead-letter."""
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    events: list[Event] = []
    objects: list[dict[str, Any]] = []
    bad = 0
    for offset, line in enumerate(read_lines(path)):
        topic, key, obj = route(line)
        try:
            event = decode(RawRecord(topic, 0, offset, key, line), MAX_LINE_BYTES)
        except InvalidEvent:
            bad += 1
            continue
        assert obj is not None  # it decoded
        events.append(event)
        objects.append(obj)
    if not events:
        raise ConfigError(f"{path} has no valid events ({bad} unreadable lines)")
    return events, objects, bad


def alerts_of(
    events: list[Event], rules: RulesConfig, config: StateConfig, progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """The alerts the worker's step publishes for ``events`` in file order, under ``rules``."""
    return findings_of(events, rules, config, progress).get(ALERTS, [])


def findings_of(
    events: list[Event], rules: RulesConfig, config: StateConfig, progress: Callable[[int], None] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """What the worker's step publishes for ``events`` in file order, under ``rules``, by topic."""
    return _run_step(events, rules_step(config, RulesProvider.fixed(rules)), progress)


def _run_step(
    events: list[Event],
    step: Callable[[CustomerState, Event], tuple[Any, list[bytes]]],
    progress: Callable[[int], None] | None,
) -> dict[str, list[dict[str, Any]]]:
    states: dict[str, CustomerState] = {}
    found: dict[str, list[dict[str, Any]]] = {}
    for done, event in enumerate(events):
        if progress is not None and done % 5000 == 0:
            progress(done)
        state = states.get(event.customer_id)
        if state is None:
            state = states[event.customer_id] = CustomerState(event.customer_id)
        for entry in step(state, event)[1]:
            topic, _, value = entry.split(b"\n", 2)
            found.setdefault(topic.decode(), []).append(orjson.loads(value))
    return found


def with_values(base: RulesConfig, settings: dict[str, str]) -> RulesConfig:
    """``base`` with ``section.field`` set to each value (validated as a rules file would be)."""
    data = base.model_dump()
    for path, value in settings.items():
        section, name = path.split(".")
        data[section][name] = value
    return RulesConfig.model_validate(data)


def measure(history: Outcomes, alerts: list[dict[str, Any]], rules: RulesConfig) -> dict[str, dict[str, Any]]:
    report = judge(history, alerts, rules.collection.min_amount)
    return dict(report.get("rules", {}))


def sweep_row(floor: str, months: str, sweeps: dict[str, Any] | None) -> dict[str, Any]:
    """One line of the sweep's trade-off table (``evaluate.judge_sweeps``' figures)."""
    got = sweeps or {}
    return {
        "idle_floor_share": floor,
        "buffer_months_of_outflow": months,
        "sweeps": got.get("judged", 0),
        "customers": got.get("customers", 0),
        "swept": got.get("swept", "0.00"),
        "short": got.get("short", 0),
        "short_share": got.get("short_share"),
        "depth_lowest": got.get("depth_lowest"),
        "depth_median": got.get("depth_median"),
        "headroom_median": got.get("headroom_median"),
        "gain": got.get("gain", "0.00"),
    }


def best_sweep(rows: list[dict[str, Any]], max_short_share: float) -> dict[str, Any] | None:
    """The row that sweeps the most money with at most ``max_short_share`` of its sweeps short
    (ties: fewer short), or None when no row makes a sweep within the target."""
    fit = [r for r in rows if r["sweeps"] and r["short_share"] is not None and r["short_share"] <= max_short_share]
    return max(fit, key=lambda r: (Decimal(r["swept"]), -r["short_share"]), default=None)


def best(rows: list[dict[str, Any]], max_share: float, min_customers: int) -> dict[str, Any] | None:
    """The row of best lift (ties: more customers) that fires within the volume cap, or None."""
    fit = [
        r
        for r in rows
        if r["lift"] is not None and r["customers"] >= min_customers and r["customer_share"] <= max_share
    ]
    return max(fit, key=lambda r: (r["lift"], r["customers"]), default=None)


def run_tune(
    events_path: Path,
    out: Path,
    config: StateConfig,
    *,
    base: RulesConfig | None = None,
    max_share: float = 0.05,
    min_customers: int = 3,
    horizon_days: int = 30,
    analysts: Analysts | None = None,
    max_short_share: float = 0.05,
) -> dict[str, Any]:
    """The body of ``fundflow tune``: tables and a suggested rules.yaml in ``out``; the sweep's
    knobs chosen for at most ``max_short_share`` of sweeps short within the horizon."""
    if not 0 < max_share <= 1:
        raise ConfigError(f"--max-share {max_share} must be in (0, 1]")
    if not 0 <= max_short_share <= 1:
        raise ConfigError(f"--max-short-share {max_short_share} must be in [0, 1]")
    analysts = analysts or Analysts()
    if not 0 <= analysts.min_precision <= 1:
        raise ConfigError(f"--min-precision {analysts.min_precision} must be in [0, 1]")
    events, objects, bad = load_events(events_path)
    base = base or RulesConfig()
    measured_rules = base.model_copy(update={"disabled": base.disabled - {k.rule for k in KNOBS}})
    history = outcomes(objects, horizon_days)
    paths = flows(objects)
    passes = max(max(len(k.values) for k in KNOBS), len(SWEEP_GRID))
    tables: dict[str, list[dict[str, Any]]] = {k.rule: [] for k in KNOBS}
    sweep_rows: list[dict[str, Any]] = []
    progress = Progress(passes * len(events), "tune")
    try:
        for index in range(passes):
            chosen = {k.path: k.values[min(index, len(k.values) - 1)] for k in KNOBS}
            chosen.update(zip(SWEEP_KNOBS, SWEEP_GRID[min(index, len(SWEEP_GRID) - 1)], strict=True))
            rules = with_values(measured_rules, chosen)  # a rule disabled in ``base`` is measured too
            found = findings_of(events, rules, config, _offset(progress, index * len(events)))
            measured = measure(history, found.get(ALERTS, []), rules)
            if index < len(SWEEP_GRID):
                sweeps = judge_sweeps(
                    objects, found.get(RECOMMENDATIONS, []), horizon_days, rules.sweep.deposit_rate, paths
                )
                sweep_rows.append(sweep_row(*SWEEP_GRID[index], sweeps))
            for knob in KNOBS:
                if index >= len(knob.values):
                    continue
                entry = measured.get(knob.rule, {})
                tables[knob.rule].append(
                    {
                        "value": chosen[knob.path],
                        "fired": entry.get("fired", 0),
                        "customers": entry.get("customers", 0),
                        "customer_share": entry.get("customer_share", 0.0),
                        "judged": entry.get("judged", 0),
                        "hit_rate": entry.get("hit_rate"),
                        "base_rate": entry.get("base_rate"),
                        "lift": entry.get("lift"),
                    }
                )
            progress((index + 1) * len(events))
    finally:
        progress.close()

    suggestion: dict[str, str] = {}
    disabled: list[str] = []
    picks: dict[str, dict[str, Any] | None] = {}
    for knob in KNOBS:
        pick = best(tables[knob.rule], max_share, min_customers)
        picks[knob.rule] = pick
        if pick is None or pick["lift"] <= 1:
            disabled.append(knob.rule)
        else:
            suggestion[knob.path] = pick["value"]
    sweep_pick = best_sweep(sweep_rows, max_short_share)
    if sweep_pick is None:
        disabled.append(SWEEP_RULE)
    else:
        suggestion.update(
            zip(SWEEP_KNOBS, (sweep_pick["idle_floor_share"], sweep_pick["buffer_months_of_outflow"]), strict=True)
        )
    sweep_table = SweepTable(sweep_rows, sweep_pick, max_short_share, horizon_days)
    suggested = write_outputs(out, base, tables, suggestion, disabled, picks, analysts, sweep_table)
    return {
        "sweep": {"rows": sweep_rows, "pick": sweep_pick, "max_short_share": max_short_share},
        "sweep_table": render_sweep_table(sweep_table),
        "events": len(events),
        "unreadable_lines": bad,
        "customers": len(history.lines),
        "max_share": max_share,
        "suggested": suggestion,
        "disabled": disabled,
        "analysts_low": {rule: row.precision for rule, row in analysts.low().items()},
        "rules_file": str(suggested),
    }


def _offset(progress: Callable[[int], None], start: int) -> Callable[[int], None]:
    return lambda done: progress(start + done)


@dataclass(frozen=True, slots=True)
class SweepTable:
    """The sweep's trade-off: each setting of its knobs, its sweeps and their outcome."""

    rows: list[dict[str, Any]]
    pick: dict[str, Any] | None
    max_short_share: float
    horizon_days: int


def render_sweep_table(table: SweepTable) -> list[str]:
    """The trade-off table for people (markdown), the chosen row marked ◀."""
    days = table.horizon_days
    lines = [
        f"## {SWEEP_RULE} — `{SWEEP_KNOBS[0]}` × `{SWEEP_KNOBS[1]}` "
        f"(short = below zero within {days} days had the customer followed it)",
        "",
        f"Target: at most {fmt.percent(Decimal(str(table.max_short_share)), 1)} of sweeps short; "
        "◀ keeps the most swept money within it.",
        "",
        "| floor share | months of outflow | sweeps | customers | swept | short | short share | "
        "lowest | median shortfall | median headroom | gain net of redemptions |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table.rows:
        mark = " ◀" if r is table.pick else ""
        share = "—" if r["short_share"] is None else fmt.percent(Decimal(str(r["short_share"])), 1)
        lines.append(
            f"| {r['idle_floor_share']}{mark} | {r['buffer_months_of_outflow']} | {r['sweeps']} | {r['customers']} | "
            f"{fmt.amount(r['swept'])} | {r['short']} | {share} | {_money(r['depth_lowest'])} | "
            f"{_money(r['depth_median'])} | {_money(r['headroom_median'])} | {fmt.amount(r['gain'])} |"
        )
    if table.pick is None:
        lines += ["", f"disabled: no setting keeps the sweeps within the target ({SWEEP_RULE} listed under disabled)"]
    return [*lines, ""]


def _money(value: str | None) -> str:
    return "—" if value is None else fmt.amount(value)


def write_outputs(
    out: Path,
    base: RulesConfig,
    tables: dict[str, list[dict[str, Any]]],
    suggestion: dict[str, str],
    disabled: list[str],
    picks: dict[str, dict[str, Any] | None],
    analysts: Analysts,
    sweep: SweepTable | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Rule thresholds measured on your history (`fundflow tune`)", "", *analysts_table(analysts)]
    seen = {r.rule: r for r in analysts.rows or ()}
    low = analysts.low()
    for knob in KNOBS:
        rows = tables[knob.rule]
        with (out / f"{knob.rule}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        pick = picks[knob.rule]
        outcome = "balance drained" if knob.rule in OUTFLOW_RULES else "inflow left"
        lines += [
            f"## {knob.rule} — `{knob.path}` (hit = {outcome})",
            "",
            *([analysts_line(seen.get(knob.rule), low, analysts), ""] if analysts.rows else []),
            "| value | fired | customers | share | judged | hit rate | base rate | lift |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            mark = " ◀" if pick is not None and r is pick and knob.rule not in disabled else ""
            lines.append(
                f"| {r['value']}{mark} | {r['fired']} | {r['customers']} | {r['customer_share']:.1%} | {r['judged']} | "
                f"{_pct(r['hit_rate'])} | {_pct(r['base_rate'])} | {_lift(r['lift'])} |"
            )
        lines += ["", "disabled: no value beats the base rate within the cap" if knob.rule in disabled else "", ""]
    if sweep is not None:
        with (out / f"{SWEEP_RULE}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, SWEEP_COLUMNS)
            writer.writeheader()
            writer.writerows(sweep.rows)
        lines += render_sweep_table(sweep)
    (out / "tables.md").write_text("\n".join(lines), encoding="utf-8")

    data = base.model_dump(mode="json", exclude_defaults=True)
    for path, value in suggestion.items():
        section, name = path.split(".")
        data.setdefault(section, {})[name] = _number(value)
    tuned = {knob.rule for knob in KNOBS} | ({SWEEP_RULE} if sweep is not None else set())
    data["disabled"] = sorted((base.disabled - tuned) | set(disabled))
    text = "# Suggested by `fundflow tune` (see tables.md next to it)\n" + yaml.safe_dump(
        data, sort_keys=True, allow_unicode=True
    )
    parse_rules(text, "suggested rules.yaml")  # what fundflow worker would load
    target = out / "rules.yaml"
    target.write_text(text, encoding="utf-8")
    return target


def analysts_table(analysts: Analysts) -> list[str]:
    """The analysts' precision per rule, low ones marked, as the head of ``tables.md``."""
    if analysts.rows is None:
        return [f"Analysts' precision: {analysts.source}.", ""]
    if not analysts.rows:
        return [f"Analysts' precision: no case yet in {analysts.source}.", ""]
    low = analysts.low()
    lines = [
        f"## What the analysts concluded (cases in {analysts.source})",
        "",
        f"Precision = confirmed / resolved cases. ⚠: below {analysts.min_precision:.0%} "
        f"over at least {analysts.min_resolved} resolved cases.",
        "",
        "| rule | cases | resolved | confirmed | dismissed | precision | median first action | median resolution |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in analysts.rows:
        mark = " ⚠" if r.rule in low else ""
        lines.append(
            f"| {r.rule}{mark} | {r.cases} | {r.resolved} | {r.confirmed} | {r.dismissed} | {percent(r.precision)} | "
            f"{duration(r.median_first_action_seconds)} | {duration(r.median_resolution_seconds)} |"
        )
    return [*lines, ""]


def analysts_line(row: RulePrecision | None, low: dict[str, RulePrecision], analysts: Analysts) -> str:
    if row is None or row.precision is None:
        return "Analysts' precision: — (no resolved case of this rule yet)"
    text = f"Analysts' precision: {percent(row.precision)} of {row.resolved} resolved cases"
    if row.rule in low:
        return (
            f"{text} ⚠ below {analysts.min_precision:.0%}: the analysts find this rule's alerts mostly wrong; "
            "prefer a stricter value below, or disable it"
        )
    few = row.resolved < analysts.min_resolved
    return text + (f" (fewer than {analysts.min_resolved}: not judged)" if few else "")


def _number(value: str) -> int | float:
    number = Decimal(value)
    return int(number) if number == number.to_integral_value() else float(number)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _lift(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def run_tune_command(
    settings: Settings,
    events: Path,
    out: Path,
    max_share: float,
    *,
    analysts: Sequence[RulePrecision] | None = None,
    source: str = "not read",
    low: tuple[float, int] = (0.5, 20),
    max_short: float = 0.05,
) -> int:
    """``fundflow tune EVENTS.jsonl --out DIR [--max-share 0.05]``: starts from the rules file
    in force (``FUNDFLOW_RULES_FILE``) when there is one, else the defaults; ``analysts``
    (the analysts' precision per rule, from the cases) is shown and low ones marked."""
    try:
        base = load_rules(settings.rules_file) if settings.rules_file.exists() else None
    except RulesConfigError as exc:
        raise ConfigError(str(exc)) from None
    seen = Analysts(None if analysts is None else tuple(analysts), source, *low)
    summary = run_tune(
        events,
        out,
        state_config(settings),
        base=base,
        max_share=max_share,
        analysts=seen,
        max_short_share=max_short,
    )
    chosen = ", ".join(f"{path}={value}" for path, value in summary["suggested"].items()) or "nothing"
    disabled = ", ".join(summary["disabled"]) or "none"
    flagged = ", ".join(f"{rule} ({percent(p)})" for rule, p in summary["analysts_low"].items())
    print(
        f"tune: {summary['events']} events, {summary['customers']} customers; suggested {chosen}; "
        f"disabled {disabled} -> {summary['rules_file']} (tables in {out})"
        + (f"; analysts' precision below {low[0]:.0%}: {flagged}" if flagged else "")
    )
    print("\n".join(summary["sweep_table"]).rstrip())
    return 0

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
from rules.config import RulesConfig, RulesConfigError, load_rules, parse_rules
from rules.events import Event
from rules.state import CustomerState, StateConfig
from streams.deadletter import RawRecord
from streams.decode import decode
from streams.errors import ConfigError, InvalidEvent
from streams.rulestep import RulesProvider, rules_step
from streams.settings import Settings, state_config
from streams.tools.evaluate import OUTFLOW_RULES, Outcomes, duration, judge, low_precision, outcomes, percent
from streams.tools.progress import Progress
from streams.tools.replay import read_lines, route
from streams.topics import ALERTS

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
    provider = RulesProvider(None)
    provider.config = rules
    step = rules_step(config, provider)
    states: dict[str, CustomerState] = {}
    found: list[dict[str, Any]] = []
    for done, event in enumerate(events):
        if progress is not None and done % 5000 == 0:
            progress(done)
        state = states.get(event.customer_id)
        if state is None:
            state = states[event.customer_id] = CustomerState(event.customer_id)
        for entry in step(state, event)[1]:
            topic, _, value = entry.split(b"\n", 2)
            if topic.decode() == ALERTS:
                found.append(orjson.loads(value))
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
) -> dict[str, Any]:
    """The body of ``fundflow tune``: tables and a suggested rules.yaml in ``out``."""
    if not 0 < max_share <= 1:
        raise ConfigError(f"--max-share {max_share} must be in (0, 1]")
    analysts = analysts or Analysts()
    if not 0 <= analysts.min_precision <= 1:
        raise ConfigError(f"--min-precision {analysts.min_precision} must be in [0, 1]")
    events, objects, bad = load_events(events_path)
    base = base or RulesConfig()
    measured_rules = base.model_copy(update={"disabled": base.disabled - {k.rule for k in KNOBS}})
    history = outcomes(objects, horizon_days)
    passes = max(len(k.values) for k in KNOBS)
    tables: dict[str, list[dict[str, Any]]] = {k.rule: [] for k in KNOBS}
    progress = Progress(passes * len(events), "tune")
    try:
        for index in range(passes):
            chosen = {k.path: k.values[min(index, len(k.values) - 1)] for k in KNOBS}
            rules = with_values(measured_rules, chosen)  # a rule disabled in ``base`` is measured too
            alerts = alerts_of(events, rules, config, _offset(progress, index * len(events)))
            measured = measure(history, alerts, rules)
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
    suggested = write_outputs(out, base, tables, suggestion, disabled, picks, analysts)
    return {
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


def write_outputs(
    out: Path,
    base: RulesConfig,
    tables: dict[str, list[dict[str, Any]]],
    suggestion: dict[str, str],
    disabled: list[str],
    picks: dict[str, dict[str, Any] | None],
    analysts: Analysts,
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
    (out / "tables.md").write_text("\n".join(lines), encoding="utf-8")

    data = base.model_dump(mode="json", exclude_defaults=True)
    for path, value in suggestion.items():
        section, name = path.split(".")
        data.setdefault(section, {})[name] = _number(value)
    tuned = {knob.rule for knob in KNOBS}
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
) -> int:
    """``fundflow tune EVENTS.jsonl --out DIR [--max-share 0.05]``: starts from the rules file
    in force (``FUNDFLOW_RULES_FILE``) when there is one, else the defaults; ``analysts``
    (the analysts' precision per rule, from the cases) is shown and low ones marked."""
    try:
        base = load_rules(settings.rules_file) if settings.rules_file.exists() else None
    except RulesConfigError as exc:
        raise ConfigError(str(exc)) from None
    seen = Analysts(None if analysts is None else tuple(analysts), source, *low)
    summary = run_tune(events, out, state_config(settings), base=base, max_share=max_share, analysts=seen)
    chosen = ", ".join(f"{path}={value}" for path, value in summary["suggested"].items()) or "nothing"
    disabled = ", ".join(summary["disabled"]) or "none"
    flagged = ", ".join(f"{rule} ({percent(p)})" for rule, p in summary["analysts_low"].items())
    print(
        f"tune: {summary['events']} events, {summary['customers']} customers; suggested {chosen}; "
        f"disabled {disabled} -> {summary['rules_file']} (tables in {out})"
        + (f"; analysts' precision below {low[0]:.0%}: {flagged}" if flagged else "")
    )
    return 0

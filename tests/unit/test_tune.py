"""``fundflow tune``: the real rules over a grid of thresholds, tables and a suggested rules.yaml."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from rules import fmt
from rules.config import RulesConfig, load_rules
from rules.state import StateConfig
from streams.errors import ConfigError
from streams.settings import Settings
from streams.tools.tune import (
    COLUMNS,
    KNOBS,
    SWEEP_COLUMNS,
    SWEEP_GRID,
    alerts_of,
    best,
    best_sweep,
    load_events,
    run_tune,
    run_tune_command,
    with_values,
)
from tests.support.tuning import ZONE, history, sweep_history, write

CONFIG = StateConfig(ZONE)


def table(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text(encoding="utf-8").splitlines()))


def test_tune_writes_a_table_per_rule_and_a_rules_file_the_worker_accepts(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", history(), [b"not json", b'{"txn_id": "x"}'])
    base = RulesConfig(disabled=frozenset({"balance_drawdown"}))  # measured anyway, and enabled: it works here
    summary = run_tune(events, tmp_path / "out", CONFIG, base=base, max_share=0.5)
    assert summary["unreadable_lines"] == 2 and summary["customers"] == 40
    for knob in KNOBS:
        rows = table(tmp_path / "out" / f"{knob.rule}.csv")
        assert tuple(rows[0]) == COLUMNS
        assert [r["value"] for r in rows] == list(knob.values)
    drawdown = {r["value"]: r for r in table(tmp_path / "out" / "balance_drawdown.csv")}
    assert int(drawdown["0.3"]["customers"]) == 10  # every drainer, no saver
    suggested = load_rules(tmp_path / "out" / "rules.yaml")  # what `fundflow worker` loads
    rows = [
        {"value": r["value"], "lift": float(r["lift"]) if r["lift"] else None,
         "customers": int(r["customers"]), "customer_share": float(r["customer_share"])}
        for r in drawdown.values()
    ]  # fmt: skip
    pick = best(rows, 0.5, 3)
    assert pick is not None and suggested.outflow.drawdown_fraction == Decimal(pick["value"])
    assert "balance_drawdown" not in suggested.disabled
    assert "collection_opportunity" in suggested.disabled  # never fires here: cannot beat its base rate
    assert "balance_drawdown" in (tmp_path / "out" / "tables.md").read_text()


def test_the_grid_runs_the_rules_the_worker_runs(tmp_path: Path) -> None:
    """A grid value gives exactly the alerts of a rules file that sets it."""
    events, _, _ = load_events(write(tmp_path / "events.jsonl", history(12)))
    rules = with_values(RulesConfig(), {"outflow.drawdown_fraction": "0.5"})
    assert rules == RulesConfig.model_validate({"outflow": {"drawdown_fraction": "0.5"}})
    fired = [a["rule"] for a in alerts_of(events, rules, CONFIG)]
    assert fired.count("balance_drawdown") == 3


def test_best_value_is_the_highest_lift_under_the_volume_cap() -> None:
    rows = [
        {"value": "a", "lift": 9.0, "customers": 2, "customer_share": 0.01},  # too few customers
        {"value": "b", "lift": 3.0, "customers": 30, "customer_share": 0.2},  # too many
        {"value": "c", "lift": 2.0, "customers": 5, "customer_share": 0.04},
        {"value": "d", "lift": 1.5, "customers": 8, "customer_share": 0.05},
        {"value": "e", "lift": None, "customers": 0, "customer_share": 0.0},
    ]
    assert best(rows, 0.05, 3) == rows[2]
    assert best(rows[:2], 0.05, 3) is None


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no such file"), (b"nonsense\n{}\n", r"has no valid events \(2 unreadable")]
)
def test_bad_input_is_one_line(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "events.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as caught:
        run_tune(path, tmp_path / "out", CONFIG)
    assert "\n" not in str(caught.value)


def test_max_share_must_be_a_share(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max-share"):
        run_tune(write(tmp_path / "e.jsonl", history(2)), tmp_path / "out", CONFIG, max_share=5)


def test_the_command_starts_from_the_rules_in_force_and_says_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("outflow:\n  large_external_amount: 7\n", encoding="utf-8")
    events = write(tmp_path / "events.jsonl", history(8))
    code = run_tune_command(Settings(rules_file=rules), events, tmp_path / "out", 0.5)
    assert code == 0
    printed = capsys.readouterr().out
    assert "tune: " in printed and "| floor share | months of outflow | sweeps |" in printed  # the trade-off table
    assert load_rules(tmp_path / "out" / "rules.yaml").outflow.large_external_amount == 7  # kept from the file
    rules.write_text("outflow: [", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        run_tune_command(Settings(rules_file=rules), events, tmp_path / "out", 0.5)


def test_the_sweep_keeps_the_most_money_within_the_shortfall_target(tmp_path: Path) -> None:
    """Issue 32: the sweep's knobs are chosen by outcome (share of sweeps short within 30 days),
    and the trade-off table shows each setting's sweeps, swept amount, short share and depth."""
    events = write(tmp_path / "events.jsonl", sweep_history())
    summary = run_tune(events, tmp_path / "out", CONFIG, max_share=0.5, max_short_share=0.03)
    rows = table(tmp_path / "out" / "post_repayment_sweep.csv")
    assert tuple(rows[0]) == SWEEP_COLUMNS and len(rows) == len(SWEEP_GRID)
    assert [(r["idle_floor_share"], r["buffer_months_of_outflow"]) for r in rows] == list(SWEEP_GRID)
    swept = {(r["idle_floor_share"], r["buffer_months_of_outflow"]): Decimal(r["swept"]) for r in rows}
    # every fourth customer spends 45,000 at once: sweeping 60% of the lowest balance or more leaves them short
    short = {key for key, r in zip(swept, rows, strict=True) if int(r["short"])}
    assert short == {key for key in swept if key[0] != "0.5"}
    assert all(r["depth_lowest"] for r in rows if int(r["short"])) and not any(r["depth_lowest"] for r in rows[:3])
    pick = summary["sweep"]["pick"]
    within = {key: amount for key, amount in swept.items() if key not in short}
    assert Decimal(pick["swept"]) == max(within.values()) and pick["idle_floor_share"] == "0.5"
    suggested = load_rules(tmp_path / "out" / "rules.yaml")
    assert (str(suggested.sweep.idle_floor_share), str(suggested.sweep.buffer_months_of_outflow)) == (
        pick["idle_floor_share"],
        pick["buffer_months_of_outflow"],
    )
    assert "post_repayment_sweep" not in suggested.disabled
    # a looser target keeps more money: the most swept of all, 3 of 72 short (4.2%)
    loose = best_sweep(summary["sweep"]["rows"], 0.05)
    assert loose is not None and Decimal(loose["swept"]) == max(swept.values()) and loose["short_share"] == 0.0417
    assert best_sweep(summary["sweep"]["rows"], 0.0) == pick  # none short: the 0.5 rows
    text = (tmp_path / "out" / "tables.md").read_text(encoding="utf-8")
    marked = next(
        line for line in text.splitlines() if "◀" in line and line.startswith(f"| {pick['idle_floor_share']}")
    )
    assert fmt.amount(pick["swept"]) in marked and "| 0 | 0.0% |" in marked
    assert "\n".join(summary["sweep_table"]) in text


def test_no_setting_within_the_target_disables_the_sweep(tmp_path: Path) -> None:
    events = write(tmp_path / "events.jsonl", sweep_history(4, spend=100_000))  # short under every setting
    summary = run_tune(events, tmp_path / "out", CONFIG, max_share=0.5, max_short_share=0.0)
    assert summary["sweep"]["pick"] is None and all(r["short"] for r in summary["sweep"]["rows"])
    assert "post_repayment_sweep" in load_rules(tmp_path / "out" / "rules.yaml").disabled
    assert "disabled: no setting keeps the sweeps within the target" in (tmp_path / "out" / "tables.md").read_text()
    with pytest.raises(ConfigError, match="max-short-share"):
        run_tune(events, tmp_path / "out", CONFIG, max_short_share=1.5)

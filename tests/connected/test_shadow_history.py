"""The shadow on history (issue 29): ``fundflow shadow EVENTS --rules CANDIDATE --out DIR`` on a
Berka slice, with a candidate that changes one threshold, gives the difference of two
backtests (the live rules' and the candidate's), finding by finding: what only the live
rules find is ``removed``, what only the candidate finds is ``added``, the same id with other
content is ``changed``, and the candidate's findings are its backtest's, byte for byte."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.tools.backtest import OUTPUT_FILES
from streams.tools.berka import convert_berka
from streams.topics import DLQ, SHADOW
from tests.support.backtests import pipeline_runs

pytestmark = pytest.mark.connected

CUSTOMERS = 40  # of each kind (with a loan, without): every rule in play, and two pipeline runs in ~20 s
LIVE = "outflow:\n  drawdown_fraction: 0.3\n"
CANDIDATE = "outflow:\n  drawdown_fraction: 0.5\n"  # one threshold: drawdowns added, and cool-downs move


def berka_slice(out: Path) -> Path:
    converted = out / "berka.jsonl"
    convert_berka(None, converted, ZoneInfo("Asia/Shanghai"))
    lines = converted.read_bytes().splitlines()
    objects = [orjson.loads(line) for line in lines]
    with_loans = {o["customer_id"] for o in objects if "loan_id" in o}
    others = {o["customer_id"] for o in objects} - with_loans
    keep = set(sorted(with_loans, key=int)[:CUSTOMERS]) | set(sorted(others, key=int)[:CUSTOMERS])
    sliced = out / "slice.jsonl"
    sliced.write_bytes(
        b"".join(line + b"\n" for line, o in zip(lines, objects, strict=True) if o["customer_id"] in keep)
    )
    return sliced


def findings(run: Path) -> dict[str, dict[str, Any]]:
    """Every finding a backtest published, by id."""
    found: dict[str, dict[str, Any]] = {}
    for topic, name in OUTPUT_FILES.items():
        if topic not in (DLQ, SHADOW):
            for line in (run / name).read_bytes().splitlines():
                finding = orjson.loads(line)
                found[finding["id"]] = finding
    return found


def test_the_history_diff_of_a_candidate_is_the_difference_of_two_backtests(tmp_path: Path) -> None:
    events = berka_slice(tmp_path)
    live, candidate = tmp_path / "live.yaml", tmp_path / "candidate.yaml"
    live.write_text(LIVE)
    candidate.write_text(CANDIDATE)
    shadowed, alone = pipeline_runs(
        (["shadow", str(events), "--rules", str(candidate), "--live", str(live)], tmp_path / "shadow", {}),
        (["backtest", str(events)], tmp_path / "candidate", {"FUNDFLOW_RULES_FILE": str(candidate)}),
    )
    mine, theirs = findings(shadowed), findings(alone)  # the live rules' (the shadow run's own), the candidate's
    expected = sorted(
        [(mine[i]["customer_id"], mine[i]["rule"], "removed", i, None) for i in mine.keys() - theirs.keys()]
        + [(theirs[i]["customer_id"], theirs[i]["rule"], "added", None, i) for i in theirs.keys() - mine.keys()]
        + [
            (mine[i]["customer_id"], mine[i]["rule"], "changed", i, i)
            for i in mine.keys() & theirs.keys()
            if mine[i] != theirs[i]
        ],
        key=str,
    )
    lines = [orjson.loads(line) for line in (shadowed / "diff.jsonl").read_bytes().splitlines()]
    got = sorted(((d["customer_id"], d["rule"], d["change"], d["live_id"], d["shadow_id"]) for d in lines), key=str)
    assert got == expected
    assert {change for _, _, change, _, _ in got} >= {"added", "removed"}  # (the candidate does change something)
    records = [orjson.loads(line) for line in (shadowed / "shadow.jsonl").read_bytes().splitlines()]
    shadow_findings = sorted(orjson.dumps(r["finding"]) for r in records if r["type"] == "finding")
    assert shadow_findings == sorted(orjson.dumps(f) for f in theirs.values())  # the candidate alone's, exactly
    report = (shadowed / "report.md").read_text()
    assert "| balance_drawdown |" in report and "lift live" in report
    summary = orjson.loads((shadowed / "summary.json").read_bytes())
    assert SHADOW not in {rule for rule in summary["alerts_by_rule"]} and summary["topics"][SHADOW] == len(records)

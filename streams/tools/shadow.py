"""``fundflow shadow EVENTS.jsonl --rules CANDIDATE.yaml [--live LIVE.yaml] --out DIR``: a
candidate rule set beside the live one over a file of history, through the pipeline.

It is ``fundflow backtest`` with a shadow from the beginning of time
(``FUNDFLOW_SHADOW_RULES_FILE``): the worker judges every event under the live rules and,
with a rule memory of its own, under the candidate, and writes the shadow's records to
``fundflow.shadow.v1`` (docs/events.md, "Shadow runs"), exactly as a live shadow run does.
So the candidate's findings are those of a backtest under the candidate alone, finding by
finding. Besides the backtest's files (the live findings), DIR gets:

- ``diff.jsonl``: one line per finding that differs, ``{"customer_id", "rule", "change":
  "added"|"removed"|"changed", "live_id", "shadow_id"}``, sorted;
- ``report.md``: per rule, the live and the candidate's counts, what was added, removed or
  changed, and beside them ``evaluate-rules``' volume and lift for each version.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from rules.config import RulesConfig, RulesConfigError, load_rules
from streams.errors import ConfigError
from streams.rulestep import rules_at_start
from streams.settings import Settings
from streams.tools.backtest import OUTPUT_FILES, run_backtest
from streams.tools.evaluate import judge, outcomes
from streams.topics import DLQ, SHADOW

CHANGES = ("added", "removed", "changed")


def run_history_shadow(
    settings: Settings,
    events: Path,
    candidate: Path,
    live: Path | None,
    out: Path,
    timeout: float,
    horizon: int = 30,
) -> int:
    if not candidate.is_file():
        raise ConfigError(f"no candidate rules file at {candidate}")
    try:
        candidate_rules = load_rules(candidate)
    except RulesConfigError as exc:
        raise ConfigError(f"candidate rules {candidate}: {exc}") from None
    if live is not None:
        if not live.is_file():
            raise ConfigError(f"no live rules file at {live}")
        settings = settings.model_copy(update={"rules_file": live})
    live_rules = rules_at_start(settings)
    run_backtest(settings, events, out, timeout, {"FUNDFLOW_SHADOW_RULES_FILE": str(candidate.resolve())})
    records = _read(out / OUTPUT_FILES[SHADOW])
    live_findings = [f for topic, name in OUTPUT_FILES.items() if topic not in (DLQ, SHADOW) for f in _read(out / name)]
    shadow_findings = [r["finding"] for r in records if r.get("type") == "finding"]
    diffs = differences(records, live_findings, shadow_findings)
    (out / "diff.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in diffs))
    lines = [orjson.loads(line) for line in events.read_bytes().splitlines() if line.strip()]
    versions, files = (live_rules, candidate_rules), (settings.rules_file, candidate)
    report = render_report(live_findings, shadow_findings, diffs, lines, versions, horizon, files)
    (out / "report.md").write_text(report, encoding="utf-8")
    changed = Counter(d["change"] for d in diffs)
    print(
        f"shadow: live {len(live_findings)} findings, candidate {len(shadow_findings)}: "
        + ", ".join(f"{changed[c]} {c}" for c in CHANGES)
        + f" -> {out / 'diff.jsonl'}, {out / 'report.md'}"
    )
    return 0


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def differences(
    records: list[dict[str, Any]], live: list[dict[str, Any]], shadow: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The diff records of a shadow run as ``diff.jsonl`` lines, each once, sorted. A run's
    records compare the findings of each event; over a whole history a finding the candidate
    makes at another event than the live rules (a due date's check point judged on a later
    event) is the same finding: a removed and an added of one id are netted, into ``changed``
    when the two differ, into nothing when they do not."""
    live_by_id = {f["id"]: f for f in live}
    shadow_by_id = {f["id"]: f for f in shadow}
    found: dict[tuple[str, str, str, str, str], dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "diff":
            key = (r["customer_id"], r["rule"], r["change"], r.get("live_id") or "", r.get("shadow_id") or "")
            found[key] = {k: r.get(k) for k in ("customer_id", "rule", "change", "live_id", "shadow_id")}
    removed = {d["live_id"]: key for key, d in found.items() if d["change"] == "removed"}
    for key, d in list(found.items()):
        fid = d["shadow_id"]
        if d["change"] != "added" or fid not in removed:
            continue
        del found[key], found[removed[fid]]
        if live_by_id.get(fid) != shadow_by_id.get(fid):
            found[d["customer_id"], d["rule"], "changed", fid, fid] = {**d, "change": "changed", "live_id": fid}
    return [found[key] for key in sorted(found)]


def render_report(
    live: list[dict[str, Any]],
    shadow: list[dict[str, Any]],
    diffs: list[dict[str, Any]],
    events: list[dict[str, Any]],
    rules: tuple[RulesConfig, RulesConfig],
    horizon: int,
    files: tuple[Path, Path],
) -> str:
    """The per-rule table, and ``evaluate-rules``' verdict on each version's alerts beside it."""
    live_by_rule = Counter(str(f.get("rule")) for f in live)
    shadow_by_rule = Counter(str(f.get("rule")) for f in shadow)
    changes = {change: Counter(d["rule"] for d in diffs if d["change"] == change) for change in CHANGES}
    history = outcomes(events, horizon)
    verdicts = [
        judge(history, [f for f in found if f.get("type") == "alert"], version.collection.min_amount)["rules"]
        for found, version in zip((live, shadow), rules, strict=True)
    ]
    out = [
        "# Shadow on history",
        "",
        f"Live rules `{files[0]}`, candidate `{files[1]}`, over {len(events)} events. "
        f"Counts are findings (retractions included); the live count = the candidate's - added + removed. "
        f"Volume and lift: `evaluate-rules` on each version's alerts ({horizon}-day horizon).",
        "",
        "| rule | live | candidate | added | removed | changed | volume live | volume candidate "
        "| lift live | lift candidate |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rule in sorted(set(live_by_rule) | set(shadow_by_rule) | {d["rule"] for d in diffs}):
        mine, theirs = (verdict.get(rule, {}) for verdict in verdicts)
        out.append(
            f"| {rule} | {live_by_rule[rule]} | {shadow_by_rule[rule]} | {changes['added'][rule]} "
            f"| {changes['removed'][rule]} | {changes['changed'][rule]} | {_volume(mine)} | {_volume(theirs)} "
            f"| {_lift(mine)} | {_lift(theirs)} |"
        )
    total = Counter(d["change"] for d in diffs)
    customers = len({d["customer_id"] for d in diffs})
    out += [
        "",
        f"{total['added']} added, {total['removed']} removed, {total['changed']} changed, "
        f"for {customers} customers (`diff.jsonl`).",
        "",
    ]
    return "\n".join(out)


def _volume(entry: dict[str, Any]) -> str:
    if not entry:
        return "—"
    return f"{entry['fired']} ({entry['customers']} customers)"


def _lift(entry: dict[str, Any]) -> str:
    lift = entry.get("lift")
    return "—" if lift is None else f"{Decimal(str(lift)):.2f}×"

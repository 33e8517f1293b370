"""The shadow report: what a candidate rule version would change, joined to what analysts concluded.

The workers store every record of a shadow run of version N by id in ``{p}:{rules}:shadow:{N}``
(docs/events.md, ``fundflow.shadow.v1``): the shadow's findings, the differences between
the live and the shadow findings of each event (added, removed, changed), and the pushes
the shadow's caps, quiet hours or risk veto would have suppressed. The report counts them
per rule (live = shadow - added + removed) and per customer, and joins every removed live
finding to the case that holds it (``{p}:{cases}:by_finding``) and that case's outcome, so
"version 7 drops 40 findings, 31 of which analysts dismissed as false positives" is one line.

Each record names its run (``"run": "<version>@<from_us>"``: a version shadowed twice
judges the same events twice, so two runs are never added up): a report is of one run,
by default the latest (the one judging from the latest instant), and lists the others.
The API (``GET /rules/shadow/report``), the console and ``fundflow shadow report`` show it.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, cast

from cases.model import CONFIRMING, Case
from cases.store import CaseStore
from rules.versions import Code, RuleRefusal
from streams.storage.rulebook import Rulebook

CUSTOMERS_SHOWN = 200  # the customers most changed; the total says how many there are
REMOVED_SHOWN = 500  # removed findings listed with their case; the counts cover all of them
JOIN_CHUNK = 1000

FALSE_POSITIVE = "false_positive"


def _verdict(case: Case | None) -> str:
    """What analysts concluded about a case: no_case, open, false_positive, confirmed, or other (closed otherwise)."""
    if case is None:
        return "no_case"
    if case.status in ("open", "in_progress"):
        return "open"
    if case.outcome == FALSE_POSITIVE:
        return FALSE_POSITIVE
    if case.outcome in CONFIRMING:
        return "confirmed"
    return "other"


def compile_report(version: int, records: Iterable[Mapping[str, Any]], case_of: Mapping[str, Case]) -> dict[str, Any]:
    """The report of version ``version``'s shadow records; ``case_of``: removed live finding id -> its case."""
    shadow: Counter[str] = Counter()
    changes: dict[str, Counter[str]] = {}
    per_customer: dict[str, Counter[str]] = {}
    suppressed: Counter[tuple[str, str]] = Counter()
    removed: list[Mapping[str, Any]] = []
    total = 0
    for record in records:
        total += 1
        kind = record.get("type")
        if kind == "finding":
            finding = record.get("finding") or {}
            shadow[str(finding.get("rule", "?"))] += 1
        elif kind == "diff":
            rule, change = str(record.get("rule", "?")), str(record.get("change"))
            changes.setdefault(rule, Counter())[change] += 1
            per_customer.setdefault(str(record.get("customer_id", "?")), Counter())[change] += 1
            if change == "removed":
                removed.append(record)
        elif kind == "suppressed":
            suppressed[(str(record.get("rule", "?")), str(record.get("why", "?")))] += 1
    verdicts: dict[str, Counter[str]] = {}
    for record in removed:
        verdict = _verdict(case_of.get(str(record.get("live_id"))))
        verdicts.setdefault(str(record.get("rule", "?")), Counter())[verdict] += 1
    listed: list[dict[str, Any]] = []
    for record in heapq.nsmallest(REMOVED_SHOWN, removed, key=lambda r: (str(r.get("ts", "")), str(r.get("live_id")))):
        case = case_of.get(str(record.get("live_id")))
        listed.append({
            "live_id": record.get("live_id"), "rule": record.get("rule"), "customer_id": record.get("customer_id"),
            "ts": record.get("ts"), "case_id": case.id if case else None, "status": case.status if case else None,
            "outcome": case.outcome if case else None, "verdict": _verdict(case),
        })  # fmt: skip
    rules: list[dict[str, Any]] = []
    for rule in sorted(set(shadow) | set(changes)):
        counted = changes.get(rule, Counter())
        judged = verdicts.get(rule, Counter())
        rules.append({
            "rule": rule, "live": shadow[rule] - counted["added"] + counted["removed"], "shadow": shadow[rule],
            "added": counted["added"], "removed": counted["removed"], "changed": counted["changed"],
            "removed_false_positive": judged[FALSE_POSITIVE], "removed_confirmed": judged["confirmed"],
        })  # fmt: skip
    customers = sorted(per_customer.items(), key=lambda item: (-sum(item[1].values()), item[0]))
    all_verdicts: Counter[str] = Counter()
    for judged in verdicts.values():
        all_verdicts.update(judged)
    gone = sum(counted["removed"] for counted in changes.values())
    added = sum(counted["added"] for counted in changes.values())
    cases = {
        "removed": gone,
        "with_case": gone - all_verdicts["no_case"],
        "false_positive": all_verdicts[FALSE_POSITIVE],
        "confirmed": all_verdicts["confirmed"],
        "other": all_verdicts["other"],
        "open": all_verdicts["open"],
        "no_case": all_verdicts["no_case"],
    }
    return {
        "version": version,
        "records": total,
        "summary": summary(version, gone, added, cases),
        "rules": rules,
        "customers": [
            {"customer_id": c, "added": n["added"], "removed": n["removed"], "changed": n["changed"]}
            for c, n in customers[:CUSTOMERS_SHOWN]
        ],
        "customers_total": len(customers),
        "suppressed": [{"rule": r, "why": w, "count": n} for (r, w), n in sorted(suppressed.items())],
        "removed_cases": cases,
        "removed_findings": listed,
    }


def summary(version: int, removed: int, added: int, cases: Mapping[str, int]) -> str:
    """The report in one line: what the version drops and adds, and what analysts said of what it drops."""
    line = f"version {version} drops {removed} finding{'s' if removed != 1 else ''} and adds {added}"
    if removed:
        line += (f"; of the {removed} dropped, {cases['with_case']} are in cases: {cases['false_positive']} dismissed "
                 f"as false positives, {cases['confirmed']} confirmed, {cases['other']} closed otherwise, "
                 f"{cases['open']} still open")  # fmt: skip
    return line


async def cases_of(store: CaseStore, finding_ids: list[str]) -> dict[str, Case]:
    """The case holding each finding (``{p}:{cases}:by_finding``), for those that have one."""
    found: dict[str, Case] = {}
    for start in range(0, len(finding_ids), JOIN_CHUNK):
        chunk = finding_ids[start : start + JOIN_CHUNK]
        raw = cast(list[bytes | None], await store.redis.hmget(store.key("by_finding"), chunk))
        numbers = {fid: int(n) for fid, n in zip(chunk, raw, strict=True) if n}
        by_number = {case.id: case for case in await store.many(sorted(set(numbers.values())))}
        found.update({fid: by_number[n] for fid, n in numbers.items() if n in by_number})
    return found


async def report_version(rulebook: Rulebook, asked: int | None) -> int:
    """The version a report is about: the one asked for, else the one in shadow now, else the last shadowed."""
    if asked is not None:
        if await rulebook.version(asked) is None:
            raise RuleRefusal(Code.NOT_FOUND, f"no version {asked}")
        return asked
    run = await rulebook.shadow()
    if run is not None:
        return run.version
    for entry in await rulebook.audit(1000):
        if entry.get("action") == "shadow_start" and entry.get("version") is not None:
            return int(entry["version"])
    raise RuleRefusal(Code.NOT_FOUND, "no version has run in shadow yet: `fundflow shadow start N` starts one")


def _from_us(run: str) -> int:
    tail = run.rpartition("@")[2]
    return int(tail) if tail.lstrip("-").isdigit() else -1


def runs_of(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Each run's records counted, latest run first."""
    counted = Counter(str(record.get("run", "")) for record in records)
    return dict(sorted(counted.items(), key=lambda item: (-_from_us(item[0]), item[0])))


async def shadow_report(
    rulebook: Rulebook, store: CaseStore, asked: int | None = None, run: str | None = None
) -> dict[str, Any]:
    """The report of version ``asked`` (default: ``report_version``), of its run ``run`` (default: the one
    running now, else the latest)."""
    version = await report_version(rulebook, asked)
    every = await rulebook.shadow_records(version)
    runs = runs_of(every)
    now = await rulebook.shadow()
    current = now.run if now is not None and now.version == version else None
    if current is not None and current not in runs:
        runs = {current: 0, **runs}  # (started: no record yet)
    if run is not None and run not in runs:
        known = ", ".join(runs) or "none"
        raise RuleRefusal(Code.NOT_FOUND, f"version {version} has no shadow run {run!r} (runs: {known})")
    chosen = run if run is not None else current if current is not None else next(iter(runs), "")
    records = [record for record in every if str(record.get("run", "")) == chosen]
    removed = sorted({str(r["live_id"]) for r in records if r.get("type") == "diff" and r.get("change") == "removed"
                      and r.get("live_id")})  # fmt: skip
    report = compile_report(version, records, await cases_of(store, removed))
    report["running"] = current is not None and chosen == current
    report["run"] = chosen or None
    report["runs"] = [{"run": name or None, "records": count} for name, count in runs.items()]
    return report

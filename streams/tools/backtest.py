"""``fundflow backtest EVENTS.jsonl --out DIR``: the real pipeline over a file.

Broker, worker process and Redis (embedded unless ``FUNDFLOW_KAFKA_BOOTSTRAP``
/ ``FUNDFLOW_REDIS_URL`` are set; then a fresh consumer group and Redis key
prefix keep the run apart from live state). Every line is produced as is,
the run waits until the worker's consumer group has committed every input
record, then writes:

- ``state.jsonl``: every customer as of the largest ``ts`` in the file;
- ``alerts.jsonl``, ``recommendations.jsonl``, ``marketing.jsonl``: what the
  pipeline published, one object per id (a repeat after a retry is dropped);
- ``dlq.jsonl``: every dead letter;
- ``summary.json``: counts per topic, rule and dead-letter reason, events/s
  and end-to-end latency percentiles (produce -> state committed), and the
  risk vetoes by rule and reason (``risk_vetoes``).

The workers count their refusals in Prometheus only, per process; the risk
vetoes are counted here by judging the file once more with the pure rules, in
the file's order: findings are a function of each customer's history and the
rules (docs/findings.md), so the count is the workers' own, whatever the
delivery, and the same in every run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from rules.config import RulesConfig
from rules.engine import judge
from rules.state import CustomerState, Outcome, apply_event, to_us
from streams.clients import connect, start_producer
from streams.deadletter import RawRecord
from streams.decode import TimeBounds, decode
from streams.errors import ConfigError, InvalidEvent
from streams.local.orchestra import LocalRun, read_topic
from streams.rulestep import reader_store, rules_at_start
from streams.settings import Settings, state_config
from streams.storage.snapshot import iso, load_all, rows, write_jsonl
from streams.tools.measure import percentiles
from streams.tools.progress import Progress
from streams.tools.replay import read_lines, replay, route
from streams.topics import ALERTS, DLQ, HISTORY, MARKETING, RECOMMENDATIONS, SHADOW

OUTPUT_FILES = {
    ALERTS: "alerts.jsonl",
    RECOMMENDATIONS: "recommendations.jsonl",
    MARKETING: "marketing.jsonl",
    DLQ: "dlq.jsonl",
    HISTORY: "history.jsonl",  # findings before FUNDFLOW_LIVE_FROM (docs/going-live.md)
    SHADOW: "shadow.jsonl",  # a shadow run's records (``fundflow shadow EVENTS``; empty without one)
}


def max_event_time(lines: list[bytes]) -> int | None:
    """The largest ``ts`` (µs) among lines that carry a readable RFC 3339 ts with offset."""
    best: int | None = None
    for line in lines:
        _, _, obj = route(line)
        if obj is None or not isinstance(obj.get("ts"), str):
            continue
        try:
            moment = dt.datetime.fromisoformat(obj["ts"])
        except ValueError:
            continue
        if moment.tzinfo is None:
            continue
        ts = to_us(moment)
        best = ts if best is None or ts > best else best
    return best


def run_backtest(
    settings: Settings, events: Path, out: Path, timeout: float, worker_env: dict[str, str] | None = None
) -> int:
    """The backtest; ``worker_env``: more of the worker's settings (``fundflow shadow EVENTS``'s shadow)."""
    if not events.is_file():
        raise ConfigError(f"no such file: {events}")
    lines = list(read_lines(events))
    if not lines:
        raise ConfigError(f"{events} has no events")
    as_of_us = max_event_time(lines)
    if settings.kafka_bootstrap or settings.redis_url:
        run = uuid.uuid4().hex[:8]
        settings = settings.model_copy(update={"app_id": f"fundflow-backtest-{run}", "key_prefix": f"bt{run}"})
    out.mkdir(parents=True, exist_ok=True)
    with LocalRun(settings, out / "logs") as local:
        local.start_worker(**(worker_env or {}))
        summary = asyncio.run(_drive(local, lines, as_of_us, out, timeout))
    summary["risk_vetoes"] = risk_vetoes(lines, settings, rules_at_start(settings))
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
    print(
        f"backtest: {summary['events']['in_file']} events, {summary['customers']} customers, "
        f"{summary['events_per_second']:.0f} events/s, dead letters {summary['events']['dead_letters']}, "
        f"alerts {summary['topics'].get(ALERTS, 0)} -> {out}"
    )
    return 0


async def _drive(
    local: LocalRun, lines: list[bytes], as_of_us: int | None, out: Path, timeout: float
) -> dict[str, Any]:
    settings = local.settings
    producer = await start_producer(settings, local.bootstrap)
    progress = Progress(len(lines), "produce")
    started = time.monotonic()
    try:
        stats = await replay(lines, producer, progress=progress)
    finally:
        progress.close()
        await producer.stop()
    await local.wait_caught_up(len(lines), timeout)
    elapsed = time.monotonic() - started

    client = connect(local.redis_url, local.settings.redis_cluster)
    try:
        store = reader_store(client, settings)
        states = await load_all(store)
        latencies = [int(x) for x in await client.lrange(store.keys.latency, 0, -1)]
    finally:
        await client.aclose()
    customers = write_jsonl(out / "state.jsonl", rows(states, as_of_us, settings))

    topic_counts: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for topic, filename in OUTPUT_FILES.items():
        values = await read_topic(settings, local.bootstrap, topic)
        objects = [orjson.loads(v) for v in values]
        if topic != DLQ:
            unique: dict[str, Any] = {}
            for obj in objects:
                unique.setdefault(obj.get("id"), obj)
            objects = list(unique.values())
            for obj in objects:
                if topic != SHADOW:  # (a shadow's records are no live finding)
                    rule = str(obj.get("rule"))
                    by_rule[rule] = by_rule.get(rule, 0) + 1
        else:
            for obj in objects:
                reason = str(obj.get("reason"))
                by_reason[reason] = by_reason.get(reason, 0) + 1
        topic_counts[topic] = write_jsonl(out / filename, objects)

    return {
        "as_of": _iso(as_of_us, settings),
        "events": {
            "in_file": len(lines),
            "produced": stats.by_topic,
            "dead_letters": topic_counts.get(DLQ, 0),
        },
        "customers": customers,
        "topics": topic_counts,
        "alerts_by_rule": dict(sorted(by_rule.items())),
        "dead_letters_by_reason": dict(sorted(by_reason.items())),
        "seconds": round(elapsed, 3),
        "events_per_second": len(lines) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {
            "what": "record produced -> its state committed in Redis, while the whole file is replayed "
            "at full speed (queueing included); see `make bench` for latency at a sustainable rate",
            **percentiles(latencies),
            "samples": len(latencies),
        },
    }


def risk_vetoes(lines: list[bytes], settings: Settings, rules: RulesConfig) -> dict[str, Any]:
    """The risk vetoes (``risk_veto:<rule>`` refusals) of the rules over ``lines``, judged as
    the workers judge them (the same decoding; a line they dead-letter is left out)."""
    config = state_config(settings)
    bounds = TimeBounds(settings.event_time_earliest, settings.event_time_max_skew_seconds)
    now_ms = int(time.time() * 1000)
    states: dict[str, CustomerState] = {}
    counts: dict[str, dict[str, int]] = {}
    for offset, line in enumerate(lines):
        topic, key, _ = route(line)
        try:
            event = decode(
                RawRecord(topic, 0, offset, key, line), settings.max_event_bytes, bounds, now_ms, settings.currency
            )
        except InvalidEvent:
            continue
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        before = state.balance
        if apply_event(state, event, config) is not Outcome.APPLIED:
            continue
        for rule, why in judge(state, event, before, rules, config).suppressed:
            if why.startswith("risk_veto:"):
                by_why = counts.setdefault(rule, {})
                by_why[why] = by_why.get(why, 0) + 1
    pushes = sum(n for rule, by_why in counts.items() if rule.startswith("push_") for n in by_why.values())
    return {
        "what": "pushes and sweep recommendations the risk veto held back, by rule and reason "
        '(fundflow_alerts_suppressed_total{why=~"risk_veto:.*"}), from the pure rules over the file',
        "pushes_vetoed": pushes,
        "sweeps_not_made": sum(counts.get("post_repayment_sweep", {}).values()),
        "by_rule": {rule: dict(sorted(by_why.items())) for rule, by_why in sorted(counts.items())},
    }


def _iso(as_of_us: int | None, settings: Settings) -> str | None:
    return iso(as_of_us, settings) if as_of_us is not None else None

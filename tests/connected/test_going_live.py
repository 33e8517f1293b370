"""Going live (docs/going-live.md, docs/events.md "History"): a slice of the real Berka data
replayed through the embedded broker, Redis and a real ``fundflow worker`` with
``FUNDFLOW_LIVE_FROM`` at the start of the slice's last month, a ``fundflow alerts webhook``
relay delivering to a real local receiver. Only that month's findings are delivered: the
receiver and the live topics (alerts, recommendations, marketing) hold only findings with
``ts`` >= LIVE_FROM; ``fundflow.history.v1`` holds the earlier ones, each marked
``history: true``. And going live changes where findings go, never which exist: history +
live equal, id for id and field for field, what a ``fundflow backtest`` of the same slice
without LIVE_FROM publishes (run side by side, on its own broker and Redis)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.local.orchestra import read_topic
from streams.tools.berka import convert_berka
from streams.topics import ALERTS, DLQ, HISTORY, MARKETING, RECOMMENDATIONS
from tests.support import ROOT
from tests.support.processes import Process
from tests.support.scenario import Scenario
from tests.support.threaded_receiver import ThreadedReceiver
from tests.support.webhook import SECRET

pytestmark = [pytest.mark.connected, pytest.mark.slow]

CUSTOMERS = 80  # the first customers the data know, with all their history until END: ~4,500 records
END = "1994-01-01"  # the slice ends before this day; its last month is December 1993
LIVE_FROM = "1993-12-01T00:00:00+08:00"  # the start of that month, in the bank's zone
LIVE_TOPICS = (ALERTS, RECOMMENDATIONS, MARKETING)
TOPIC_OF_TYPE = {"alert": ALERTS, "recommendation": RECOMMENDATIONS, "push": MARKETING}


def berka_slice(out: Path) -> Path:
    """The records of the first ``CUSTOMERS`` customers (in order of first appearance) before ``END``."""
    converted = out / "berka.jsonl"
    convert_berka(None, converted, ZoneInfo("Asia/Shanghai"))  # the copy shipped with FundFlow
    lines = converted.read_bytes().splitlines()
    objects = [orjson.loads(line) for line in lines]
    first_seen = list(dict.fromkeys(o["customer_id"] for o in objects))
    keep = set(first_seen[:CUSTOMERS])
    end = dt.datetime.fromisoformat(f"{END}T00:00:00+08:00")
    kept = [
        line
        for line, o in zip(lines, objects, strict=True)
        if o["customer_id"] in keep and dt.datetime.fromisoformat(o["ts"]) < end
    ]
    path = out / "slice.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in kept))
    return path


def start_reference_backtest(events: Path, work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``fundflow backtest`` of the same slice without FUNDFLOW_LIVE_FROM, on its own stack."""
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env.update(FUNDFLOW_VAR_DIR=str(work / "var"), FUNDFLOW_PARTITIONS="2")
    with (work / "backtest.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "backtest", str(events), "--out", str(work / "out")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return process, work


def finish(process: subprocess.Popen[bytes], work: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The reference's findings by id (with the topic each went to) and its dead letters'
    reasons, once it has exited 0."""
    try:
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert code == 0, (work / "backtest.log").read_text(errors="replace")[-3000:]
    out = work / "out"
    assert (out / "history.jsonl").read_bytes() == b"", "no LIVE_FROM: nothing is history"
    found: dict[str, dict[str, Any]] = {}
    for topic, name in ((ALERTS, "alerts.jsonl"), (RECOMMENDATIONS, "recommendations.jsonl"),
                        (MARKETING, "marketing.jsonl")):  # fmt: skip
        for line in (out / name).read_bytes().splitlines():
            finding = orjson.loads(line)
            found[finding["id"]] = {**finding, "_topic": topic}
    reasons = [orjson.loads(line)["reason"] for line in (out / "dlq.jsonl").read_bytes().splitlines()]
    return found, reasons


def ts(finding: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(str(finding["ts"]))


def test_going_live_delivers_only_findings_from_live_from_and_keeps_the_rest_as_history(
    tmp_path: Path, processes: list[Process]
) -> None:
    events = berka_slice(tmp_path)
    lines = events.read_bytes().splitlines()
    live_from = dt.datetime.fromisoformat(LIVE_FROM)
    reference, reference_work = start_reference_backtest(events, tmp_path / "reference")
    try:
        with Scenario(tmp_path / "live") as scenario, ThreadedReceiver() as receiver:
            run = scenario.run
            run.start_worker(FUNDFLOW_LIVE_FROM=LIVE_FROM)
            relay = Process(
                ["alerts", "webhook", "--url", receiver.url],
                run.env(FUNDFLOW_WEBHOOK_SECRET=SECRET.decode()),
                run.log_dir / "relay.log",
            )
            processes.append(relay)
            asyncio.run(scenario.produce(lines))
            asyncio.run(run.wait_caught_up(len(lines), timeout=90))  # the lag reached zero

            async def topics() -> dict[str, list[dict[str, Any]]]:
                return {t: [orjson.loads(v) for v in await read_topic(scenario.settings, run.bootstrap, t)]
                        for t in (*LIVE_TOPICS, HISTORY, DLQ)}  # fmt: skip

            published = asyncio.run(topics())
            live = {f["id"]: {**f, "_topic": t} for t in LIVE_TOPICS for f in published[t]}
            history = {f["id"]: f for f in published[HISTORY]}

            # the relay delivers every live finding, and nothing else, however long we wait
            relay.wait_until(lambda: {f["id"] for f in receiver.received()} >= set(live), "every live finding")
            time.sleep(1.5)  # anything late (a history finding, a repeat) would show up now
            delivered = receiver.received()
            assert sorted(f["id"] for f in delivered) == sorted(live)
            assert receiver.stats()["refused"] == 0 and receiver.stats()["duplicates"] == 0
            assert all(ts(f) >= live_from and "history" not in f for f in delivered)
    finally:
        ours, dead = finish(reference, reference_work)

    # the live topics: that month only; the marketing topic holds its pushes, and they are live
    assert live, "the slice's last month has findings"
    for finding in live.values():
        assert ts(finding) >= live_from and "history" not in finding, finding
        assert finding["_topic"] == TOPIC_OF_TYPE[finding["type"]]
    pushes = published[MARKETING]
    assert pushes and all(f["type"] == "push" and ts(f) >= live_from for f in pushes)
    # the history topic: every earlier finding, marked; of every kind the data give
    assert history, "the months before hold findings"
    assert all(f["history"] is True and ts(f) < live_from for f in history.values())
    assert {f["type"] for f in history.values()} == {"alert", "recommendation", "push"}
    assert not set(history) & set(live)

    # going live changed where findings went, never which exist, nor what they say
    assert sorted([*history, *live]) == sorted(ours)
    for finding_id, theirs in ours.items():
        mine = live.get(finding_id) or {**history[finding_id], "_topic": TOPIC_OF_TYPE[theirs["type"]]}
        assert {k: v for k, v in mine.items() if k != "history"} == theirs, finding_id
    assert sorted(d["reason"] for d in published[DLQ]) == sorted(dead)  # the same input refused alike

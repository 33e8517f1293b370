"""``make bench-smoke``: every stage of the benchmark runs on a few thousand
records and reports a number, so the benchmark cannot rot. Nothing here
asserts a speed (speed is what ``make bench`` prints, side by side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.connected]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env["FUNDFLOW_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "bench",
            "--smoke",
            "--events",
            "2000",
            "--rounds",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("(a) bare aiokafka", "(b) Faust agent doing nothing", "(c) FundFlow full pipeline, 1 worker",
                 "2 workers", "c/b", "c/a", "latency", "bare consumer p50", "Redis per customer",
                 "per-event cost", "case list (2,000 cases"):  # fmt: skip
        assert line in result.stdout, line
    report = json.loads(out.read_text())
    rates = report["events_per_second"]
    assert len(rates) == 6 and all(rate > 0 for rate in rates.values())
    by_round = report["events_per_second_by_round"]  # (b), (b'), (c) interleaved, each round measured
    assert len(by_round) == 3 and all(len(each) == 2 and min(each) > 0 for each in by_round.values())
    assert [len(each) for each in report["ratios_by_round"].values()] == [2, 2]
    for share in ("light", "50%", "80%"):
        latency = report["latency"][share]
        assert latency["committed_ms"]["n"] > 0
        # the broker's share, measured beside it: every record of the stage in a bare consumer's hand
        assert latency["bare_consumer_ms"]["n"] == latency["events"]
    assert report["redis_memory_per_customer"]["customers"] > 0
    history = report["per_event_cost_vs_history"]
    assert history["history_events"] == sorted(history["history_events"]) and len(history["us_per_event"]) == 3
    assert all(cost > 0 for cost in history["us_per_event"] + history["us_decode_on_cache_miss"])
    cases = report["case_list"]  # the case list among many cases, through the store and GET /cases
    assert cases["cases"] == 2000 and len(cases["queries"]) == 7
    shadow = report["shadow"]  # (c) without and with a shadow version, side by side
    assert shadow["without_shadow"] > 0 and shadow["with_shadow"] > 0 and len(shadow["ratios_by_round"]) == 1
    assert "with a shadow version" in result.stdout
    assert all(q["matching"] > 0 and q["http_ms"]["p50"] > 0 for q in cases["queries"].values())
    consent = report["consent_import"]  # a consent list imported twice, and its bytes in Redis
    assert (consent["records"], consent["changed"], consent["rerun_changed"]) == (5000, 5000, 0)
    assert consent["bytes_per_record"] > 0 and consent["bucket_encoding"] == "listpack"
    assert "consent import: 5,000 records" in result.stdout

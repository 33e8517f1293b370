"""``make bench-scale`` at a tiny customer count: every stage runs and reports a figure, so
the scale benchmark cannot rot. Nothing here asserts a speed, a size or a pause (those are
what ``make bench-scale`` prints; docs/scale.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.connected]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_scale_smoke_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env["FUNDFLOW_VAR_DIR"] = str(tmp_path / "var")
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "bench-scale", "--smoke", "--customers", "1000", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("scale: customers=1000 bytes/customer="), last
    for field in ("shard-balance=", "tier-agreement=", "max-pause-ms="):
        assert field in last, last
    report = json.loads(out.read_text())
    assert report["customers"] == 1000 and report["templates"] > 0
    assert len(report["shards"]) == 3 and all(s["keys"] > 0 and s["commands"] > 0 for s in report["shards"])
    assert report["memory"]["bytes_per_customer"] > 0 and report["memory"]["single_bytes_per_customer"] > 0
    counted = report["memory"]["as_make_bench_counts"]  # a customer's keys, one by one, as make bench counts
    assert counted["sampled"] == 1000 and counted["customer_keys"] > 0 and counted["tier_index"] > 0
    for run in ("cluster", "single"):  # both stores took the live traffic
        assert report["events"][run]["events_per_second"] > 0
    assert report["latency"]["50%"]["committed_ms"]["n"] > 0
    assert report["pauses"]["loop_longest_ms_whole_run"] > 0  # the workers' pause monitor reported
    assert report["tiers"]["customers"] == 1000 and report["tiers"]["agreement"] is not None
    assert report["board"]["reads"] >= 1
    assert report["takeover"]["seconds"] is not None  # the survivor committed every partition's event

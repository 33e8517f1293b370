"""The embedded broker's fetch-cost probe (docs/demo.md) runs and reports every checkpoint,
and the demo's producer batches by the linger its pace was chosen for."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams.clients import producer_options
from streams.settings import Settings
from streams.tools.demo import DEMO_LINGER_MS, replay_settings, worker_settings
from streams.tools.replay import SYNTHETIC_SKEW_SECONDS

pytestmark = [pytest.mark.connected]

ROOT = Path(__file__).resolve().parents[2]


def test_fetchcost_reports_a_fetch_time_per_checkpoint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "fetch-cost", "--batches", "100,300", "--samples", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^\s*(\d+) batches\s+fetch of the last record\s+([\d.]+) ms", result.stdout, re.MULTILINE)
    assert [int(n) for n, _ in rows] == [100, 300], result.stdout


def test_the_producer_linger_is_a_setting_and_the_demo_uses_a_long_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert producer_options(Settings())["linger_ms"] == 5
    assert producer_options(replay_settings(Settings()))["linger_ms"] == DEMO_LINGER_MS >= 500
    monkeypatch.setenv("FUNDFLOW_PRODUCER_LINGER_MS", "20")
    assert producer_options(replay_settings(Settings()))["linger_ms"] == 20


def test_the_demo_worker_accepts_event_time_its_loops_move_past_today() -> None:
    """Each loop moves event time ~15 months on: an hour in, it is past today, and a worker
    with the default one-day skew would dead-letter every event as implausible_timestamp."""
    assert worker_settings(Settings()).event_time_max_skew_seconds == SYNTHETIC_SKEW_SECONDS
    assert worker_settings(Settings(event_time_max_skew_seconds=3600)).event_time_max_skew_seconds == 3600

"""The half-minute soak: the same code as `make soak`, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.connected]


def test_a_short_soak_keeps_up_commits_and_stays_flat(tmp_path: Path) -> None:
    """One copy of the data's customers (the warm-up is then the data once, ~49,000 events)."""
    result = subprocess.run(
        [
            sys.executable, "-m", "streams.cli", "soak", "--minutes", "0.5", "--interval", "10",
            "--customers", "1", "--var", str(tmp_path / "soak"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    # event time bounded, lag, commits, worker RSS, Redis beside the 看板, the 看板 by its days,
    # and Redis against the memory model once its coefficients are measured
    assert result.stdout.count("PASS") >= 6 and "FAIL" not in result.stdout, result.stdout
    assert "warm-up done" in result.stdout and "committed" in result.stdout

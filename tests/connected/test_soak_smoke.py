"""The 1-minute soak: the same code as `make soak`, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.connected]


def test_one_minute_soak_keeps_up_commits_and_stays_flat(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "streams.cli", "soak", "--minutes", "1", "--interval", "15",
            "--rate", "800", "--var", str(tmp_path / "soak"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.count("PASS") == 4
    assert "committed" in result.stdout

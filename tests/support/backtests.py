"""``fundflow backtest`` runs side by side, for the connected tests that compare two of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def backtests(*runs: tuple[Path, Path], timeout: float = 240) -> list[Path]:
    """``fundflow backtest EVENTS --out WORK/out`` for each (EVENTS, WORK), run side by side:
    each starts its own embedded broker and Redis under its own var dir, so they are independent.
    Returns each run's output folder; a run that fails fails the test with its log's tail."""
    return pipeline_runs(*((["backtest", str(events)], work, {}) for events, work in runs), timeout=timeout)


def pipeline_runs(*runs: tuple[list[str], Path, dict[str, str]], timeout: float = 240) -> list[Path]:
    """``fundflow ARGS... --out WORK/out`` for each (ARGS, WORK, more FUNDFLOW_ settings) (a
    backtest, a history shadow), side by side, as ``backtests`` runs them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    started = []
    for args, work, extra in runs:
        work.mkdir(parents=True, exist_ok=True)
        log = (work / "backtest.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", *args, "--out", str(work / "out")],
            cwd=ROOT,
            env={**env, "FUNDFLOW_VAR_DIR": str(work / "var"), "FUNDFLOW_PARTITIONS": "2", **extra},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        started.append((process, log, work))
    try:
        for process, _, work in started:
            code = process.wait(timeout=timeout)
            assert code == 0, (work / "backtest.log").read_bytes().decode(errors="replace")[-3000:]
    finally:
        for process, log, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    return [work / "out" for _, work, _ in runs]

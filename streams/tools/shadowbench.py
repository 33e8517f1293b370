"""``make bench``'s shadow stage: what a rule version running in shadow costs the worker.

The full pipeline (one worker, all rules on) over the same records, without a shadow and with
one, side by side in each round (a fresh consumer group and fresh state each): the shadow
judges every applied event a second time, with its own rule memory, and commits and
publishes its records with the findings (docs/events.md, "Shadow runs"). The target is
with / without >= 0.75 (issue 29: shadowing costs at most a quarter of the throughput);
what it was measured at: docs/performance.md, "A rule version in shadow (issue 29)".

The shadow is given as ``FUNDFLOW_SHADOW_RULES_FILE`` (judged from the beginning of time):
the bench replays Berka history, whose event times are long before a shadow run started
through the versions would begin (``started_us`` + the grace), and it is the same step either
way (``streams.rulestep``). The candidate differs from the live rules in several thresholds,
so the shadow finds more than the live rules, and its records are written (not only judged).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from streams.local.orchestra import LocalRun

TARGET = 0.75
# Lower floors and a shorter streak than the defaults: a candidate a bank would shadow.
CANDIDATE = """\
collection:
  min_amount: 2000
outflow:
  streak_days: 3
  drawdown_fraction: 0.5
  large_external_amount: 50000
marketing:
  per_day: 2
  per_week: 4
"""

Rate = Callable[[LocalRun, str, int, float], Coroutine[Any, Any, float]]  # events/s of the workers under a key prefix


def shadow_stage(run: LocalRun, expected: int, timeout: float, rounds: int, rate: Rate) -> dict[str, Any]:
    """events/s of one worker over the ``expected`` records already on the input topics,
    without a shadow and with one, in ``rounds`` rounds (which of the two runs first
    alternates: the second run of a pair was measured faster either way); the ratio is the
    median of the rounds' own ratios."""
    candidate = Path(run.log_dir) / "shadow-candidate.yaml"
    candidate.write_text(CANDIDATE)
    without: list[float] = []
    beside: list[float] = []
    for r in range(rounds):
        order = [(False, without), (True, beside)]
        for shadowed, rates in order if r % 2 == 0 else order[::-1]:  # (which goes first alternates)
            prefix = f"benchsh{r}{'s' if shadowed else 'n'}"
            env = {"FUNDFLOW_APP_ID": f"bench-{prefix}", "FUNDFLOW_KEY_PREFIX": prefix}
            if shadowed:
                env["FUNDFLOW_SHADOW_RULES_FILE"] = str(candidate)
            print(f"bench: (c) 1 worker {'with' if shadowed else 'without'} a shadow (round {r + 1})", file=sys.stderr)
            worker = run.start_worker(**env)
            try:
                rates.append(asyncio.run(rate(run, prefix, expected, timeout)))
            finally:
                run.stop_worker(worker)
    ratios = [s / n for s, n in zip(beside, without, strict=True)]
    return {
        "without_shadow": round(statistics.median(without)),
        "with_shadow": round(statistics.median(beside)),
        "ratio": round(statistics.median(ratios), 3),
        "ratios_by_round": [round(x, 3) for x in ratios],
        "target": TARGET,
    }


def render(result: dict[str, Any]) -> list[str]:
    by_round = result["ratios_by_round"]
    rounds = f"   rounds: {', '.join(f'{x:.2f}' for x in by_round)}" if len(by_round) > 1 else ""
    return [
        f"shadow: 1 worker without a shadow {result['without_shadow']:,}/s, with a shadow version "
        f"{result['with_shadow']:,}/s: with / without {result['ratio']:.2f}   target >= {result['target']}{rounds}"
    ]

"""Latency summaries for the tools (backtest, bench, soak): one definition of a percentile."""

from __future__ import annotations

from collections.abc import Iterable


def percentiles(samples: Iterable[int | float]) -> dict[str, float | int | None]:
    """``n`` and the p50/p95/p99/max of ``samples``: the sample at rank ``floor(q * n)`` of the
    sorted samples (capped at the last), so every value reported is one that was measured."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}

    def pick(q: float) -> int | float:
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]

    return {"n": len(ordered), "p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}

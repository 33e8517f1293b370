"""The one retry policy of FundFlow: exponential backoff with jitter.

Used wherever a call meets a passing outage (the worker's batch on a Redis or Kafka
hiccup, the relay's dedupe store, the webhook sender's POSTs). Jitter matters: many
workers that lost Redis at the same instant must not all come back at the same instant.
"""

from __future__ import annotations

import random

_RNG = random.Random()


def backoff_seconds(attempt: int, initial: float, maximum: float, rng: random.Random = _RNG) -> float:
    """The wait before retry number ``attempt`` (1 = the first retry): drawn uniformly from
    ``[c/2, c]`` where ``c = min(maximum, initial * 2 ** (attempt - 1))`` ("equal jitter":
    never less than half the exponential step, never more than ``maximum``)."""
    ceiling = min(maximum, initial * 2 ** max(attempt - 1, 0))
    return rng.uniform(ceiling / 2, ceiling)

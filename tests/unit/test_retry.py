"""``streams.retry``: the one backoff policy of the worker, the relay and the webhook sender."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from alerts.webhook import RetryPolicy
from streams.retry import backoff_seconds


@given(
    attempt=st.integers(min_value=1, max_value=200),
    initial=st.floats(min_value=0.001, max_value=10),
    maximum=st.floats(min_value=0.001, max_value=60),
    seed=st.integers(),
)
def test_the_wait_is_jittered_within_half_and_all_of_the_capped_exponential_step(
    attempt: int, initial: float, maximum: float, seed: int
) -> None:
    ceiling = min(maximum, initial * 2.0 ** (attempt - 1))
    wait = backoff_seconds(attempt, initial, maximum, random.Random(seed))
    assert ceiling / 2 <= wait <= ceiling


def test_the_steps_double_until_the_cap_and_vary() -> None:
    rng = random.Random(7)
    ceilings = [max(backoff_seconds(n, 0.5, 4.0, rng) for _ in range(200)) for n in range(1, 7)]
    assert [round(c) for c in ceilings] == [0, 1, 2, 4, 4, 4]  # 0.5, 1, 2, 4, then capped
    assert len({backoff_seconds(3, 0.5, 4.0, rng) for _ in range(20)}) > 1  # jittered


def test_the_webhook_sender_uses_the_same_policy() -> None:
    policy = RetryPolicy(backoff_initial_seconds=0.5, backoff_max_seconds=30.0)
    assert policy.backoff(3, random.Random(1)) == backoff_seconds(3, 0.5, 30.0, random.Random(1))

"""``streams.retry``: the one backoff policy, and the one wait between tries, of the worker,
the relay, the webhook sender, the API's live feed and its case intake.

Time-independent: the waits are long and the tests end on the stop (never on the clock),
or the policy's steps are tiny."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.webhook import WebhookPolicy
from streams import retry as retry_module
from streams import stopping
from streams.errors import Abandoned
from streams.retry import OUTAGES, RetryPolicy, backoff_seconds, outage_policy, retry, stop_requested, wait
from streams.settings import Settings

LONG = 3600.0  # a wait no test sits out: each ends on its stop


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


def test_the_policy_is_the_formula_and_counts_attempts() -> None:
    policy = RetryPolicy(0.5, 30.0, max_attempts=3)
    assert policy.backoff(4, random.Random(3)) == backoff_seconds(4, 0.5, 30.0, random.Random(3))
    assert [policy.gives_up(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert not any(RetryPolicy(0.5, 30.0).gives_up(n) for n in (1, 10, 10_000))  # until stopped


@pytest.mark.parametrize(("initial", "maximum", "attempts"), [(0, 1, None), (2, 1, None), (-1, 1, None), (1, 1, 0)])
def test_a_policy_that_cannot_work_is_refused(initial: float, maximum: float, attempts: int | None) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(initial, maximum, attempts)


def test_every_outage_is_waited_out_with_the_same_settings() -> None:
    assert outage_policy(Settings(retry_initial_seconds=0.2, retry_max_seconds=9)) == RetryPolicy(0.2, 9.0)
    assert outage_policy(Settings.model_construct()) == OUTAGES  # the default of code handed no settings
    assert OUTAGES.max_attempts is None  # an outage is waited out, never given up on


def test_the_webhook_sender_uses_the_same_policy() -> None:
    policy = WebhookPolicy(max_attempts=4, backoff_initial_seconds=0.5, backoff_max_seconds=30.0)
    assert policy.retry == RetryPolicy(0.5, 30.0, max_attempts=4)
    assert policy.backoff(3, random.Random(1)) == backoff_seconds(3, 0.5, 30.0, random.Random(1))


@pytest.fixture
def fine_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of a millisecond: a callable stop is seen without waiting a real slice."""
    monkeypatch.setattr(retry_module, "SLICE_SECONDS", 0.001)


async def test_a_wait_that_is_not_stopped_runs_out() -> None:
    assert await wait(0.0) is False
    assert await wait(0.001, asyncio.Event()) is False
    assert await wait(0.001, lambda: False) is False


async def test_an_event_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()
    waiting = asyncio.create_task(wait(LONG, stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=5) is True
    assert await asyncio.wait_for(wait(LONG, stop), timeout=5) is True  # already set: no wait at all


async def test_a_callable_stop_is_asked_every_slice(fine_slices: None) -> None:
    asked = 0

    def stop() -> bool:
        nonlocal asked
        asked += 1
        return asked >= 5

    assert await asyncio.wait_for(wait(LONG, stop), timeout=5) is True
    assert asked == 5


async def test_a_stop_signal_ends_every_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT / SIGTERM (``streams.stopping.begin``) ends a wait whatever its own stop says."""
    monkeypatch.setattr(stopping, "_since", 1.0)
    assert stop_requested() and stop_requested(asyncio.Event()) and stop_requested(lambda: False)
    assert await asyncio.wait_for(wait(LONG), timeout=5) is True
    assert await asyncio.wait_for(wait(LONG, asyncio.Event()), timeout=5) is True


class Flaky:
    """Fails with ``error`` ``times`` times, then answers."""

    def __init__(self, times: int, error: Exception) -> None:
        self.times = times
        self.error = error
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "done"


TINY = RetryPolicy(0.001, 0.002)


async def test_retry_waits_out_transient_failures_and_reports_each() -> None:
    flaky = Flaky(3, ConnectionError("down"))
    failures: list[tuple[int, float]] = []
    result = await retry(flaky, TINY, transient=(OSError,), on_failure=lambda n, wait, _: failures.append((n, wait)))
    assert result == "done" and flaky.calls == 4
    assert [n for n, _ in failures] == [1, 2, 3]
    assert all(0.0005 <= delay <= 0.002 for _, delay in failures)


async def test_retry_gives_up_after_the_policys_attempts_with_the_last_failure() -> None:
    flaky = Flaky(10, ConnectionError("down"))
    with pytest.raises(ConnectionError, match="down"):
        await retry(flaky, RetryPolicy(0.001, 0.002, max_attempts=3), transient=(OSError,))
    assert flaky.calls == 3


async def test_retry_never_retries_what_is_not_transient() -> None:
    flaky = Flaky(1, ValueError("a bug"))
    with pytest.raises(ValueError):
        await retry(flaky, TINY, transient=(OSError,))
    assert flaky.calls == 1


async def test_retry_is_abandoned_when_a_stop_is_asked_during_a_wait() -> None:
    stop = asyncio.Event()
    flaky = Flaky(1_000_000, ConnectionError("down"))
    task = asyncio.create_task(retry(flaky, RetryPolicy(LONG, LONG), transient=(OSError,), stop=stop))
    while flaky.calls == 0:
        await asyncio.sleep(0)
    stop.set()
    with pytest.raises(Abandoned) as abandoned:
        await asyncio.wait_for(task, timeout=5)
    assert isinstance(abandoned.value.__cause__, ConnectionError) and flaky.calls == 1

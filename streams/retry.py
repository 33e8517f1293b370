"""The one retry policy of FundFlow, and the one way to wait between tries.

Every loop that meets a passing outage retries the same way: the worker's batch on a
Redis or Kafka hiccup (``streams.pipeline``), the relay's dedupe store and its POSTs
(``alerts.relay``, ``alerts.webhook``), the API's live feed (``streams.api.feed``) and its
case intake (``streams.api.cases``).

* ``RetryPolicy``: exponential backoff with equal jitter, capped, and optionally a number
  of attempts after which the caller gives up. Jitter matters: many workers that lost
  Redis at the same instant must not all come back at the same instant.
* ``outage_policy(settings)``: the policy of every loop that waits out a Redis or Kafka
  outage (``FUNDFLOW_RETRY_INITIAL_SECONDS``, ``FUNDFLOW_RETRY_MAX_SECONDS``; never gives
  up: the work in hand is kept until the server is back or the process is asked to stop).
  The same outage gets the same behaviour in every process. The webhook sender has a
  policy of its own (a receiver that refuses is not an outage of ours: its findings are
  dead-lettered after ``FUNDFLOW_WEBHOOK_MAX_ATTEMPTS``).
* ``wait(seconds, stop)``: the sleep between tries, in slices of at most
  ``SLICE_SECONDS``, that ends early (and says so) once a stop is asked: ``stop`` (an
  ``asyncio.Event`` or a callable) or a SIGINT / SIGTERM (``streams.stopping``). A
  process retrying a Redis that is down must still stop within its grace period.
* ``retry(operation, policy, ...)``: calls ``operation`` until it returns, waiting
  between failures; ``Abandoned`` when a stop is asked meanwhile (the caller gives its
  work back unacked, uncommitted), the last failure once the policy gives up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from streams import stopping
from streams.errors import Abandoned
from streams.settings import Settings

T = TypeVar("T")

_RNG = random.Random()

# How long a wait goes without looking at a callable stop: a stop is seen within this
# (an Event is seen at once), far inside the grace period a stop signal allows.
SLICE_SECONDS = 0.25

Stop = asyncio.Event | Callable[[], bool] | None  # what asks a wait to end early (None: only a signal)


def backoff_seconds(attempt: int, initial: float, maximum: float, rng: random.Random = _RNG) -> float:
    """The wait before retry number ``attempt`` (1 = the first retry): drawn uniformly from
    ``[c/2, c]`` where ``c = min(maximum, initial * 2 ** (attempt - 1))`` ("equal jitter":
    never less than half the exponential step, never more than ``maximum``)."""
    ceiling = min(maximum, initial * 2 ** max(attempt - 1, 0))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a loop retries: ``backoff(n)`` before retry ``n``, doubling from ``initial`` up to
    ``maximum``; after ``max_attempts`` attempts in all it gives up (``None``: never, only a
    stop ends it)."""

    initial: float
    maximum: float
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"a retry policy needs 0 < initial <= maximum, not {self.initial} and {self.maximum}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("a retry policy makes at least one attempt")

    def backoff(self, attempt: int, rng: random.Random = _RNG) -> float:
        """The wait before retry number ``attempt`` (1 = the first retry; ``backoff_seconds``)."""
        return backoff_seconds(attempt, self.initial, self.maximum, rng)

    def gives_up(self, attempts: int) -> bool:
        """Whether ``attempts`` failed attempts are all the policy allows."""
        return self.max_attempts is not None and attempts >= self.max_attempts


def outage_policy(settings: Settings) -> RetryPolicy:
    """The policy of every loop that waits out a Redis or Kafka outage."""
    return RetryPolicy(settings.retry_initial_seconds, settings.retry_max_seconds)


# ``outage_policy`` of the default settings: for code that is handed no settings.
OUTAGES = RetryPolicy(
    Settings.model_fields["retry_initial_seconds"].default, Settings.model_fields["retry_max_seconds"].default
)


def stop_requested(stop: Stop = None) -> bool:
    """Whether ``stop`` is set (an Event) or true (a callable), or a stop signal arrived."""
    if stopping.requested():
        return True
    if stop is None:
        return False
    return stop.is_set() if isinstance(stop, asyncio.Event) else stop()


async def wait(seconds: float, stop: Stop = None) -> bool:
    """Sleep ``seconds``; ``True``, and early, when a stop is asked (``stop_requested``),
    before or during the wait; ``False`` when the whole wait passed."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while not stop_requested(stop):
        left = until - loop.time()
        if left <= 0:
            return False
        if isinstance(stop, asyncio.Event):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(left, SLICE_SECONDS))
        else:
            await asyncio.sleep(min(left, SLICE_SECONDS))
    return True


async def retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    transient: tuple[type[Exception], ...],
    stop: Stop = None,
    on_failure: Callable[[int, float, Exception], None] | None = None,
    rng: random.Random = _RNG,
) -> T:
    """``await operation()`` until it returns. A ``transient`` failure is told to
    ``on_failure(attempt, delay, error)`` (attempt 1 = the first failure), then waited out
    (``wait``); anything else propagates at once. Raises the last failure when the policy
    gives up, ``Abandoned`` (from it) when a stop is asked meanwhile."""
    attempt = 0
    while True:
        try:
            return await operation()
        except transient as exc:
            attempt += 1
            if policy.gives_up(attempt):
                raise
            delay = policy.backoff(attempt, rng)
            if on_failure is not None:
                on_failure(attempt, delay, exc)
            if await wait(delay, stop):
                raise Abandoned(f"stopping while retrying: {type(exc).__name__}: {exc}") from exc

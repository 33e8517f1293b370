"""The live feed of ``GET /alerts/stream``: ONE Redis reader per API process, fanned out.

Every open stream used to run its own blocking ``XREAD``, holding a pooled Redis
connection for as long as the client stayed: 100 console tabs took redis-py's
whole pool, and every data endpoint and ``/readyz`` failed with them. Now one task
(``FeedHub``) reads the ``{p}:feed`` stream with one connection and copies each
entry to the queue of every subscriber; a subscriber that resumes from an older id
reads what it missed with short, paged ``XRANGE`` calls, at most
``HISTORY_READERS`` at once (no connection is held while a client waits, and 100
clients resuming together take 4 connections, not 100).

Limits (``Settings``): at most ``api_max_streams`` open streams per process and
``api_max_streams_per_token`` per bearer token; beyond them ``subscribe`` raises
``TooManyStreams`` (the server answers 503 / 429 for the stream alone). A
subscriber whose queue fills (a client that does not read) is ended with
``overflowed`` set; it resumes with ``Last-Event-ID`` like after any disconnect.

What can go wrong: Redis down -> the reader logs, waits out the outage as the worker
does (``streams.retry.outage_policy``) and goes on from the last id it fanned out;
nothing is lost for the subscribers, they get keep-alive comments meanwhile. A wait
ends as soon as the last subscriber leaves or the process is asked to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import RedisError

from streams.retry import OUTAGES, RetryPolicy, wait

log = logging.getLogger(__name__)

Entry = tuple[bytes, bytes]  # (feed id, the finding's JSON)
BLOCK_MS = 2000
CLOSE_SECONDS = 3.0  # longest close() waits for the reader to end
READ_COUNT = 200
QUEUE_ENTRIES = 1000
HISTORY_READERS = 4  # streams catching up at once (each XRANGE takes a pooled connection briefly)
LAST_ID = f"{(1 << 64) - 1}-{(1 << 64) - 1}"


class TooManyStreams(Exception):
    """No room for another stream: ``per_token`` says which limit was reached."""

    def __init__(self, per_token: bool, limit: int) -> None:
        super().__init__(f"too many open streams ({'for this token' if per_token else 'on this server'}, max {limit})")
        self.per_token = per_token


@dataclass(eq=False, slots=True)
class Subscription:
    token: str
    start: str  # the hub's position when this subscription began: live entries come after it
    queue: asyncio.Queue[Entry] = field(default_factory=lambda: asyncio.Queue(QUEUE_ENTRIES))
    overflowed: bool = False


class FeedHub:
    """One reader of ``feed`` (a Redis stream key) for every live stream of this process."""

    def __init__(
        self, redis: Any, feed: str, *, max_streams: int, max_per_token: int, policy: RetryPolicy = OUTAGES
    ) -> None:
        self.redis = redis
        self.policy = policy  # Redis down: ``streams.retry.outage_policy(settings)``
        self.feed = feed
        self.max_streams = max_streams
        self.max_per_token = max_per_token
        self.subscribers: set[Subscription] = set()
        self.per_token: dict[str, int] = {}
        self.last = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self._history = asyncio.Semaphore(HISTORY_READERS)

    async def subscribe(self, token: str) -> Subscription:
        """A new subscription from the newest entry on (or ``TooManyStreams``). Starting the
        reader pins its position to the feed's newest id (may raise ``RedisError``)."""
        if len(self.subscribers) >= self.max_streams:
            raise TooManyStreams(False, self.max_streams)
        if self.per_token.get(token, 0) >= self.max_per_token:
            raise TooManyStreams(True, self.max_per_token)
        async with self._starting:
            if self._task is None or self._task.done():
                self.last = await self.newest()
                self._task = asyncio.create_task(self._read(), name="fundflow-feed-reader")
        if len(self.subscribers) >= self.max_streams:  # checked again: others may have joined meanwhile
            raise TooManyStreams(False, self.max_streams)
        if self.per_token.get(token, 0) >= self.max_per_token:
            raise TooManyStreams(True, self.max_per_token)
        subscription = Subscription(token, self.last)
        self.subscribers.add(subscription)
        self.per_token[token] = self.per_token.get(token, 0) + 1
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self.subscribers:
            self.subscribers.discard(subscription)
            left = self.per_token[subscription.token] - 1
            if left:
                self.per_token[subscription.token] = left
            else:
                del self.per_token[subscription.token]

    async def newest(self) -> str:
        newest = cast(list[Any], await self.redis.xrevrange(self.feed, count=1))
        return cast(str, newest[0][0].decode()) if newest else "0-0"

    async def history(self, after: str, until: str) -> list[Entry]:
        """Up to ``READ_COUNT`` entries after ``after`` and at most ``until`` (for catching up)."""
        if after == LAST_ID:  # nothing comes after it (and Redis refuses "(" + it)
            return []
        async with self._history:
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await self.redis.xrange(self.feed, min=f"({after}", max=until, count=READ_COUNT),
            )
        return [(entry_id, fields.get(b"v", b"")) for entry_id, fields in entries]

    async def _read(self) -> None:
        failures = 0
        while self.subscribers:
            try:
                replies = cast(
                    list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                    await self.redis.xread({self.feed: self.last}, count=READ_COUNT, block=BLOCK_MS),
                )
            except Exception as exc:  # the one reader must outlive any failure, or every stream goes quiet
                failures += 1
                delay = self.policy.backoff(failures)
                if isinstance(exc, (RedisError, OSError)):
                    log.warning("live feed: Redis read failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                else:
                    log.exception("live feed: read failed; retrying in %.1fs", delay)
                if await wait(delay, self._idle):
                    return
                continue
            failures = 0
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    self.last = entry_id.decode()
                    self._fan_out((entry_id, fields.get(b"v", b"")))

    def _idle(self) -> bool:
        return not self.subscribers

    def _fan_out(self, entry: Entry) -> None:
        for subscription in list(self.subscribers):
            try:
                subscription.queue.put_nowait(entry)
            except asyncio.QueueFull:  # a client that does not read: end it, it resumes by id
                subscription.overflowed = True
                self.unsubscribe(subscription)

    async def close(self) -> None:
        self.subscribers.clear()
        self.per_token.clear()
        task = self._task
        if task is not None:
            task.cancel()
            # bounded: a blocking XREAD that does not answer its cancellation (a Redis gone
            # quiet) must never hang the API's shutdown (or a test's teardown)
            await asyncio.wait({task}, timeout=CLOSE_SECONDS)
            if task.done() and not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()

"""The example webhook receiver (``alerts.receiver_example``) served from a thread of its own,
for synchronous tests whose own code calls ``asyncio.run`` (``LocalRun``, ``Scenario``)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from alerts.receiver_example import RECEIVED, STATS, make_app
from tests.support.webhook import SECRET, Receiver


class ThreadedReceiver:
    """``with ThreadedReceiver() as receiver``: ``receiver.url`` takes signed deliveries
    until the block ends; ``received()`` and ``stats()`` are copies taken under the GIL."""

    def __init__(self, secret: bytes = SECRET) -> None:
        self.receiver = Receiver(make_app(secret))
        self.url = self.receiver.url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhook-receiver", daemon=True)

    def __enter__(self) -> ThreadedReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.receiver.stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def received(self) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.receiver.app[RECEIVED]
        return list(got)

    def stats(self) -> dict[str, int]:
        counts: dict[str, int] = self.receiver.app[STATS]
        return dict(counts)

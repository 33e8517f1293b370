"""State, findings, feed and tiers the real pipeline writes, for the API tests; the API's tokens."""

from __future__ import annotations

import orjson

from streams.clients import connect
from streams.deadletter import RawRecord
from streams.pipeline import BatchProcessor
from streams.rulestep import build_step
from streams.settings import Settings, rates, state_config, thresholds
from streams.storage.keys import Keys
from streams.storage.snapshot import load_all
from streams.storage.store import StateStore
from streams.tiers import TierBook, rebuild
from streams.topics import TRANSACTIONS
from tests.support import eventgen
from tests.support.drain import drain_events
from tests.support.fakes import Sink

PREFIX = "api"


TOKENS = ("token-one-0123456789", "token-two-0123456789")


AUTH = {"Authorization": f"Bearer {TOKENS[1]}"}


def records(events: list[dict[str, object]], first_offset: int = 0) -> list[RawRecord]:
    return [
        RawRecord(TRANSACTIONS, 0, first_offset + i, str(e["customer_id"]).encode(), orjson.dumps(e), 0)
        for i, e in enumerate(events)
    ]


async def seed(redis_url: str, settings: Settings) -> BatchProcessor:
    """State, findings, feed and tiers written by the real pipeline code (rules on)."""
    store = StateStore(connect(redis_url), Keys(settings.key_prefix))
    processor = BatchProcessor(store, build_step(settings), Sink())
    events = eventgen.transactions(customers=8, per_customer=30) + drain_events()[:-2]
    await processor.process(records(events))
    book = TierBook(store.redis, store.keys, state_config(settings), thresholds(settings), rates(settings))
    await rebuild(store.redis, store.keys, await load_all(store), book)
    return processor

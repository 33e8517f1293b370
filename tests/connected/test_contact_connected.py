"""Consent and routes where pushes leave FundFlow, with the relay as ``fundflow alerts webhook``
runs it (``run_relay``: the consumer group on the embedded broker, the contact table read
from ``FUNDFLOW_CONTACT_FILE``, the gate over the session's Redis) and a real receiver: an
opted-out push is held and recorded, the others go out on the channel their route names."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from alerts.receiver_example import RECEIVED, make_app
from alerts.relay import run_relay
from contact.model import Record
from contact.store import ContactStore
from rules.engine import Finding
from streams.clients import connect, ensure_topics
from streams.local.servers import Stack
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.topics import MARKETING
from tests.support.webhook import SECRET, Receiver

pytestmark = [pytest.mark.connected, pytest.mark.slow]


def push(customer: str, category: str, n: int) -> dict[str, object]:
    made = Finding("push", f"push_{category}", category, "info", customer, None, 1_700_000_000_000_000, f"T{n}",
                   {"amount": "1.00"}, "m", {"channel": "app", "template": "t", "campaign": f"c{n}"})  # fmt: skip
    return made.as_dict(Settings().zone)


async def test_the_relay_holds_an_opted_out_push_and_routes_the_others(stack: Stack, tmp_path: Path) -> None:
    prefix = f"contact-{uuid.uuid4().hex[:8]}"
    table = tmp_path / "contact.yaml"
    table.write_text("version: 1\nroutes:\n  none: {collection: sms, sweep: push}\n", encoding="utf-8")
    settings = Settings(key_prefix=prefix, contact_file=table, webhook_secret=SecretStr(SECRET.decode()))
    await ensure_topics(stack.kafka_bootstrap, {MARKETING: 1}, settings)
    redis = connect(stack.redis_url, False)
    store = ContactStore(redis, Keys(prefix))
    await store.record(Record("K1", "opt_out", "push", 1_700_000_000), {"by": "li.wei", "reason": "call centre"})
    pushes = [push("K1", "sweep", 1), push("K2", "collection", 2), push("K3", "sweep", 3)]
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for p in pushes:
            await producer.send_and_wait(MARKETING, orjson.dumps(p), key=str(p["customer_id"]).encode())
    finally:
        await producer.stop()
    receiver = Receiver(make_app(SECRET))
    await receiver.start()
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(settings, stack.kafka_bootstrap, stack.redis_url, [receiver.url],
                                          topics=(MARKETING,), group=f"{prefix}-relay", stop=stop))  # fmt: skip
    try:
        async with asyncio.timeout(60):
            while len(receiver.app[RECEIVED]) < 2 or not await store.held():
                assert not relay.done(), relay
                await asyncio.sleep(0.2)
        got = {p["customer_id"]: p for p in receiver.app[RECEIVED]}
        assert set(got) == {"K2", "K3"}
        assert (got["K2"]["channel"], got["K2"]["route"]) == ("sms", "sms")
        assert (got["K3"]["channel"], got["K3"]["route"], got["K3"]["tier"]) == ("app", "push", None)
        [held] = await store.held()
        assert (held["id"], held["why"]) == (pushes[0]["id"], "opt_out:push")
    finally:
        stop.set()
        await asyncio.wait_for(relay, 30)
        await receiver.stop()
        await redis.aclose()

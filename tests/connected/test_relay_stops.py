"""``fundflow alerts webhook`` stops within the bound of SIGTERM while it waits out a failure
(``streams.retry``), as every long-running command does (``tests/connected/test_signals.py``):
Redis gone while a batch needs its dedupe check, or a receiver that keeps answering 503.
Either way the batch is left uncommitted (nothing dead-lettered on the way out), so the
finding is delivered after the restart."""

from __future__ import annotations

import asyncio
import http.server
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from alerts.relay import run_relay
from streams.clients import ensure_topics
from streams.local.orchestra import committed_offsets
from streams.local.servers import Stack, free_port
from streams.settings import Settings
from streams.topics import ALERTS
from tests.support.processes import Process, kill

pytestmark = [pytest.mark.slow, pytest.mark.connected]

GROUP = "relay-stops"


class Refusing:
    """An HTTP receiver that answers every POST with 503 (retryable) and notes that it was asked."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        asked = self.asked

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                asked.set()
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay_stack(tmp_path: Path) -> Iterator[Stack]:
    """A broker and a Redis of this test alone (the test kills Redis), the alerts topic made."""
    settings = Settings(kafka_bootstrap=None, redis_url=None, var_dir=tmp_path / "stack")
    with Stack(settings) as stack:
        asyncio.run(ensure_topics(stack.kafka_bootstrap, {ALERTS: 1}, settings))
        yield stack


@pytest.fixture
def receiver() -> Iterator[Refusing]:
    refusing = Refusing()
    yield refusing
    refusing.close()


async def produce_finding(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        finding = {"id": "F-stop-1", "rule": "large_external_outflow", "customer_id": "C1", "ts": "t"}
        await producer.send_and_wait(ALERTS, orjson.dumps(finding), key=b"C1")
    finally:
        await producer.stop()


def start_relay(stack: Stack, url: str, tmp_path: Path, **env: str) -> Process:
    environment = {**stack.env(), "FUNDFLOW_WEBHOOK_SECRET": "s3cret", **env}
    args = ["alerts", "webhook", "--url", url, "--topic", "alerts", "--group", GROUP]
    relay = Process(args, environment, tmp_path / "relay.log")
    relay.wait_for("relaying")
    return relay


async def committed(stack: Stack) -> int:
    partition = TopicPartition(ALERTS, 0)
    return (await committed_offsets(Settings(), stack.kafka_bootstrap, GROUP, [partition]))[partition]


def test_relay_stops_on_sigterm_while_redis_is_gone(relay_stack: Stack, receiver: Refusing, tmp_path: Path) -> None:
    relay = start_relay(relay_stack, receiver.url, tmp_path)
    try:
        kill(relay_stack.redis)
        asyncio.run(produce_finding(relay_stack.kafka_bootstrap))
        relay.wait_for("Redis failed")  # the batch waits for its dedupe check
        time.sleep(2)  # well inside its retries
        assert relay.popen.poll() is None, relay.text()
        relay.assert_stops(signal.SIGTERM)
    finally:
        relay.close()
    assert not receiver.asked.is_set()  # never delivered without the dedupe check
    assert asyncio.run(committed(relay_stack)) == 0  # the batch comes back after the restart


def test_relay_stops_on_sigterm_while_a_receiver_is_retried(
    relay_stack: Stack, receiver: Refusing, tmp_path: Path
) -> None:
    # a first wait far longer than the bound: only the stop can end it in time
    relay = start_relay(
        relay_stack,
        receiver.url,
        tmp_path,
        FUNDFLOW_WEBHOOK_BACKOFF_INITIAL_SECONDS="60",
        FUNDFLOW_WEBHOOK_BACKOFF_MAX_SECONDS="60",
    )
    try:
        asyncio.run(produce_finding(relay_stack.kafka_bootstrap))
        assert receiver.asked.wait(timeout=60), relay.text()[-3000:]
        assert relay.popen.poll() is None, relay.text()
        relay.assert_stops(signal.SIGTERM)
    finally:
        relay.close()
    assert asyncio.run(committed(relay_stack)) == 0  # not dead-lettered and committed on the way out


@pytest.mark.parametrize("outage", ["redis", "receiver"])
async def test_run_relay_ends_on_its_stop_with_the_batch_uncommitted(
    relay_stack: Stack, receiver: Refusing, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    """In-process (no signal, no cancellation): setting ``stop`` ends a retry wait and the
    relay's loop; the batch is given up (``Abandoned``), neither dead-lettered nor committed."""
    caplog.set_level(logging.WARNING, logger="alerts")
    settings = Settings(
        webhook_secret=SecretStr("s3cret"),
        retry_initial_seconds=60.0,  # a Redis outage's waits, and a receiver's, far longer than the test
        retry_max_seconds=60.0,
        webhook_backoff_initial_seconds=60.0,
        webhook_backoff_max_seconds=60.0,
    )
    if outage == "redis":
        kill(relay_stack.redis)
    stop = asyncio.Event()
    relay = asyncio.create_task(
        run_relay(
            settings,
            relay_stack.kafka_bootstrap,
            relay_stack.redis_url,
            [receiver.url],
            topics=(ALERTS,),
            group=GROUP,
            stop=stop,
        )
    )
    try:
        await produce_finding(relay_stack.kafka_bootstrap)
        deadline = time.monotonic() + 60
        while not ("Redis failed" in caplog.text if outage == "redis" else receiver.asked.is_set()):
            assert not relay.done() and time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        assert not relay.done()
        stop.set()
        await asyncio.wait_for(relay, timeout=5)
    finally:
        relay.cancel()
    assert "stopping with 1 findings undelivered" in caplog.text
    assert await committed(relay_stack) == 0

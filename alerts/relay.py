"""``fundflow alerts webhook``: from the finding topics to HTTP receivers.

A Kafka consumer group (one or more relay processes share the partitions)
reads the alert, recommendation and marketing topics in batches, POSTs each
finding to every configured receiver (``alerts.webhook``), and commits the
batch's offsets only when every finding in it was delivered or dead-lettered.

Guarantees:
- at-least-once per receiver: a crash before the commit re-reads the batch;
- no duplicates from us: a delivered (receiver, id) pair is remembered in Redis
  (``{p}:webhook:{receiver}:{id}``, for ``webhook_dedupe_days``), so a replay
  of the topic, a redelivery or a rebalance does not POST the same finding to
  the same receiver twice. Receivers should still dedupe on the finding's ``id``
  (the gap between a 2xx and our note of it is never zero);
- nothing silently lost: a finding a receiver will not take, after the retry
  policy, becomes a DeadLetter on ``fundflow.dlq.v1`` with reason
  ``webhook_undeliverable``, the receiver (without credentials) and the last
  error, and is counted in ``fundflow_webhook_deliveries_total``;
- no credential in a log line or dead letter: receivers are named by
  ``safe_url`` and error texts are redacted (``alerts.webhook.redact``);
- start-up refuses an empty secret or a receiver URL without a host
  (``relay_secret``);
- consent and routes at delivery (``contact.gate``): every push (``fundflow.marketing.v1``)
  is judged before it is POSTed, by the customer's live tier, consent and complaints as
  Redis holds them now. A push held (opted out, a complaint, routed to a relationship
  manager) is POSTed to no receiver, recorded once with why (``{p}:{contact}:held``, the
  API's ``GET /contact/held``) and counted in ``fundflow_pushes_held_total``; a push that
  goes carries the route's ``channel``, its ``route`` and the live ``tier`` (docs/contact.md).

What can go wrong: Redis down -> the batch waits and retries with FundFlow's outage
policy, as the worker does (``streams.retry.outage_policy``; deliveries are not made
without the dedupe check). A receiver down -> its findings wait out the webhook policy
(``alerts.webhook.WebhookPolicy``), then go to the DLQ; the stream moves on. Asked to
stop (``stop``, SIGINT / SIGTERM) while either waits, the relay stops within a fraction
of a second: the batch is left uncommitted and is delivered after the restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.exceptions import RedisError

from alerts.webhook import Delivery, WebhookPolicy, WebhookSender
from contact.gate import Decision, Gate, is_push, rule_label
from contact.routes import ContactConfigError, load_contact
from contact.store import ContactStore
from streams import telemetry
from streams.clients import connect, kafka_client_kwargs
from streams.deadletter import RawRecord, dead_letter, raw_records
from streams.errors import Abandoned, ConfigError
from streams.retry import Stop, outage_policy, retry, stop_requested
from streams.settings import Settings, safe_url
from streams.storage.keys import Keys
from streams.topics import ALERTS, DLQ, MARKETING, RECOMMENDATIONS

log = logging.getLogger(__name__)

T = TypeVar("T")

FINDING_TOPICS = (ALERTS, RECOMMENDATIONS, MARKETING)
UNDELIVERABLE = "webhook_undeliverable"
BAD_FINDING = "webhook_bad_record"


DELIVERY_OUTCOMES = ("delivered", "retried", "refused", "dead_letter", "duplicate", "bad_record")


@dataclass(slots=True)
class RelayReport:
    records: int = 0
    delivered: int = 0
    duplicates: int = 0
    held: int = 0  # pushes held at delivery (contact.gate)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)  # (key, DeadLetter JSON)


def receiver_tag(url: str) -> str:
    """A short stable name of a receiver for Redis keys (the URL itself may hold secrets)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


class Relay:
    """Delivers batches of finding records; Kafka plumbing is the caller's (see ``run_relay``).
    ``handle`` raises ``Abandoned`` when ``stop`` is asked while it waits for Redis."""

    def __init__(
        self,
        senders: Sequence[WebhookSender],
        redis: aioredis.Redis,
        keys: Keys,
        settings: Settings,
        *,
        stop: Stop = None,
        gate: Gate | None = None,
    ) -> None:
        if not senders:
            raise ValueError("no webhook receivers configured")
        self.senders = list(senders)
        self.redis = redis
        self.keys = keys
        self.ttl = settings.webhook_dedupe_days * 86_400
        self.limit = asyncio.Semaphore(settings.webhook_concurrency)
        self.policy = outage_policy(settings)  # Redis down: as the worker waits it out
        self.stop = stop
        self.gate = gate
        # Every outcome exists from the start at 0: Prometheus sees no increase in a series
        # whose first sample is already 1, so the first undeliverable finding would go unseen.
        for outcome in DELIVERY_OUTCOMES:
            telemetry.WEBHOOK_DELIVERIES.labels(outcome)

    def _key(self, sender: WebhookSender, finding_id: str) -> str:
        return f"{self.keys.prefix}:webhook:{receiver_tag(sender.url)}:{finding_id}"

    async def handle(self, records: Sequence[RawRecord]) -> RelayReport:
        report = RelayReport(records=len(records))
        jobs: list[tuple[RawRecord, str, WebhookSender]] = []
        pushes: list[tuple[RawRecord, str, dict[str, object]]] = []
        for record in records:
            finding_id = _finding_id(record.value)
            if finding_id is None:
                error = "not a finding: a JSON object with a string id"
                report.dead_letters.append((record.key, dead_letter(record, BAD_FINDING, error, _now_ms())))
                telemetry.WEBHOOK_DELIVERIES.labels("bad_record").inc()
                telemetry.DEAD_LETTERS.labels(BAD_FINDING).inc()
                continue
            if self.gate is not None and record.topic == MARKETING:
                payload = orjson.loads(record.value or b"")
                if is_push(payload):
                    pushes.append((record, finding_id, payload))
                    continue
            jobs.extend((record, finding_id, sender) for sender in self.senders)
        if pushes:
            jobs += await self._judge(pushes, report)
        if jobs:
            seen = await self._retrying(self._seen, [self._key(s, fid) for _, fid, s in jobs])
            pending = []
            for job, done in zip(jobs, seen, strict=True):
                if done:
                    report.duplicates += 1
                    telemetry.WEBHOOK_DELIVERIES.labels("duplicate").inc()
                else:
                    pending.append(job)
            outcomes = await _all(self._deliver(*job) for job in pending)
            delivered = []
            for (record, finding_id, sender), outcome in zip(pending, outcomes, strict=True):
                if outcome.delivered:
                    report.delivered += 1
                    delivered.append(self._key(sender, finding_id))
                else:
                    error = f"{outcome.url}: {outcome.error}"
                    log.warning("webhook %s for finding %s dead-lettered: %s", outcome.url, finding_id, outcome.error)
                    report.dead_letters.append((record.key, dead_letter(record, UNDELIVERABLE, error, _now_ms())))
                    telemetry.DEAD_LETTERS.labels(UNDELIVERABLE).inc()
            if delivered:
                await self._retrying(self._remember, delivered)
        return report

    async def _judge(
        self, pushes: list[tuple[RawRecord, str, dict[str, object]]], report: RelayReport
    ) -> list[tuple[RawRecord, str, WebhookSender]]:
        """The deliveries of the pushes the gate lets go (their body as the gateway gets it); the
        others recorded as held and counted, once per push."""
        gate = self.gate
        assert gate is not None
        decisions: list[Decision] = await self._retrying(lambda _: gate.judge([p for *_, p in pushes]), [], "contact")
        jobs: list[tuple[RawRecord, str, WebhookSender]] = []
        held: list[tuple[dict[str, object], Decision]] = []
        for (record, finding_id, payload), decision in zip(pushes, decisions, strict=True):
            if decision.held is None:
                sent = replace(record, value=orjson.dumps(decision.delivered_body(payload)))
                jobs.extend((sent, finding_id, sender) for sender in self.senders)
            else:
                held.append((payload, decision))
        if held:  # a push every receiver already took (delivered before consent changed) stays delivered
            marks = [self._key(sender, str(payload["id"])) for payload, _ in held for sender in self.senders]
            seen = await self._retrying(self._seen, marks)
            width = len(self.senders)
            taken = [all(seen[i * width : (i + 1) * width]) for i in range(len(held))]
            for done in taken:
                if done:
                    report.duplicates += width
                    telemetry.WEBHOOK_DELIVERIES.labels("duplicate").inc(width)
            held = [h for h, t in zip(held, taken, strict=True) if not t]
        if held:
            first = await self._retrying(lambda _: gate.hold(held), [], "contact")
            for (payload, decision), new in zip(held, first, strict=True):
                report.held += 1
                if new:
                    telemetry.PUSHES_HELD.labels(rule_label(payload), decision.held).inc()
        return jobs

    async def _deliver(self, record: RawRecord, finding_id: str, sender: WebhookSender) -> Delivery:
        assert record.value is not None
        async with self.limit:
            started = time.perf_counter()
            outcome = await sender.deliver(finding_id, record.topic, record.value)
            telemetry.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        if outcome.attempts > 1:
            telemetry.WEBHOOK_DELIVERIES.labels("retried").inc(outcome.attempts - 1)
        if outcome.delivered:
            telemetry.WEBHOOK_DELIVERIES.labels("delivered").inc()
        else:
            refused = outcome.status is not None and outcome.status < 500 and outcome.status not in (408, 429)
            telemetry.WEBHOOK_DELIVERIES.labels("refused" if refused else "dead_letter").inc()
        return outcome

    async def _seen(self, keys: list[str]) -> list[bool]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.exists(key)
            return [bool(n) for n in await pipe.execute()]

    async def _remember(self, keys: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, b"1", ex=self.ttl)
            await pipe.execute()

    async def _retrying(
        self, operation: Callable[[list[str]], Awaitable[T]], keys: list[str], what: str = "webhook_dedupe"
    ) -> T:
        def failed(attempt: int, delay: float, exc: Exception) -> None:
            telemetry.REDIS_ERRORS.labels(what).inc()
            log.warning("Redis failed (%s); retrying in %.2fs", exc, delay)

        return await retry(
            lambda: operation(keys), self.policy, transient=(RedisError, OSError), stop=self.stop, on_failure=failed
        )


async def _all(calls: Iterable[Awaitable[T]]) -> list[T]:
    """``asyncio.gather``, except that one failing (``Abandoned``: stopping) cancels the rest."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _finding_id(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        payload = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    finding_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(finding_id, str) or not 0 < len(finding_id) <= 200:
        return None
    return finding_id if finding_id.isascii() and finding_id.isprintable() else None  # it goes into a header


def relay_secret(settings: Settings, urls: Sequence[str]) -> bytes:
    """The relay's start-up checks; the HMAC key. A ``ConfigError`` (one line, never a
    credential) for a missing or empty secret, or a receiver URL that is not http(s)
    with a host: such a URL would fail on every POST, and the error text would carry
    the URL's password and query into logs and dead letters."""
    if not urls:
        raise ConfigError("no receivers: give --url URL or set FUNDFLOW_WEBHOOK_URLS")
    for url in urls:
        problem = _receiver_problem(url)
        if problem:
            scheme = urlsplit(url).scheme if "://" in url else ""
            shown = safe_url(url) if problem == "has no host" else f"{scheme}://…"
            raise ConfigError(f"receiver URL {problem}: {shown!r}")
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not secret:
        raise ConfigError("FUNDFLOW_WEBHOOK_SECRET not set or empty: receivers could not verify who is calling")
    return secret.encode()


def _receiver_problem(url: str) -> str:
    """Why ``url`` cannot be a receiver ("" when it can)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # out of range: ValueError
    except ValueError:
        return "is malformed"
    if parts.scheme not in ("http", "https"):
        return "must be http:// or https://"
    if not parts.hostname:
        return "has no host"
    return "" if port != 0 else "is malformed"


def _now_ms() -> int:
    return int(time.time() * 1000)


def webhook_policy(settings: Settings) -> WebhookPolicy:
    return WebhookPolicy(
        timeout_seconds=settings.webhook_timeout_seconds,
        max_attempts=settings.webhook_max_attempts,
        backoff_initial_seconds=settings.webhook_backoff_initial_seconds,
        backoff_max_seconds=settings.webhook_backoff_max_seconds,
    )


async def run_relay(
    settings: Settings,
    bootstrap: str,
    redis_url: str,
    urls: Sequence[str],
    *,
    topics: Sequence[str] = FINDING_TOPICS,
    group: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Relay until ``stop`` is set or a stop signal arrives (``streams.retry.stop_requested``)."""

    stop = stop or asyncio.Event()
    secret = relay_secret(settings, urls)
    try:
        table = load_contact(settings.contact_file)
    except ContactConfigError as exc:
        raise ConfigError(str(exc)) from None
    redis = connect(redis_url, settings.redis_cluster)
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group or f"{settings.app_id}-webhook",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=int(settings.broker_session_timeout * 1000),
        heartbeat_interval_ms=int(settings.broker_heartbeat_interval * 1000),
        rebalance_timeout_ms=int(settings.broker_rebalance_timeout * 1000),
        **kafka_client_kwargs(settings),
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **kafka_client_kwargs(settings))
    async with aiohttp.ClientSession() as session:
        policy = webhook_policy(settings)
        senders = [WebhookSender(session, url, secret, policy, stop=stop) for url in urls]
        keys = Keys(settings.key_prefix)
        contact = ContactStore(redis, keys, settings.contact_buckets, settings.redis_cluster)
        gate = Gate(contact, table)
        relay = Relay(senders, redis, keys, settings, stop=stop, gate=gate)
        await producer.start()
        await consumer.start()
        try:
            while not stop_requested(stop):
                records = raw_records(await consumer.getmany(timeout_ms=500, max_records=200))
                if not records:
                    continue
                try:
                    report = await relay.handle(records)
                except Abandoned as exc:  # nothing committed: the batch comes back after the restart
                    log.warning("stopping with %d findings undelivered: %s", len(records), exc)
                    break
                if report.dead_letters:
                    sent = [await producer.send(DLQ, letter, key=key) for key, letter in report.dead_letters]
                    await asyncio.gather(*sent)
                await consumer.commit()
        finally:
            await consumer.stop()
            await producer.stop()
            await redis.aclose()

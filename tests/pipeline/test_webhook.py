"""Webhook delivery: signature, retries, dead letters and dedupe, against a real
local HTTP receiver (``alerts.receiver_example``) and a real Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from alerts.receiver_example import RECEIVED, STATS, make_app
from alerts.relay import BAD_FINDING, UNDELIVERABLE, Relay, receiver_tag, relay_secret
from alerts.webhook import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOPIC_HEADER,
    RetryPolicy,
    WebhookSender,
    redact,
    sign,
    verify_signature,
)
from streams.cli.main import main as fundflow
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.errors import ConfigError
from streams.local.servers import free_port
from streams.settings import Settings, safe_url
from streams.storage.keys import Keys
from streams.topics import ALERTS
from tests.support.webhook import SECRET, Receiver

NOW = 1_700_000_000


def signed(secret: bytes, timestamp: int, body: bytes, finding_id: str = "F1", topic: str = ALERTS) -> dict[str, str]:
    return {
        TIMESTAMP_HEADER: str(timestamp),
        ID_HEADER: finding_id,
        TOPIC_HEADER: topic,
        SIGNATURE_HEADER: sign(secret, timestamp, finding_id, topic, body),
    }


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=2048))
def test_a_signed_body_verifies(secret: bytes, body: bytes) -> None:
    headers = signed(secret, NOW, body)
    assert verify_signature(secret, headers, body, now=NOW + 10)


@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_changed_byte_or_other_secret_is_refused(body: bytes, data: st.DataObject) -> None:
    headers = signed(SECRET, NOW, body)
    i = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:i] + bytes([body[i] ^ flip]) + body[i + 1 :]
    assert not verify_signature(SECRET, headers, tampered, now=NOW)
    assert not verify_signature(SECRET + b"x", headers, body, now=NOW)


def test_stale_or_missing_signature_is_refused() -> None:
    body = b'{"id": "a"}'
    headers = signed(SECRET, NOW, body)
    assert verify_signature(SECRET, headers, body, now=NOW + 299)
    assert not verify_signature(SECRET, headers, body, now=NOW + 301)  # a replay, later
    assert not verify_signature(SECRET, headers, body, now=NOW - 301)
    assert not verify_signature(SECRET, {}, body, now=NOW)
    assert not verify_signature(SECRET, {TIMESTAMP_HEADER: "x", SIGNATURE_HEADER: "sha256=0"}, body, now=NOW)
    # the timestamp is inside the MAC: moving it breaks the signature
    moved = {**headers, TIMESTAMP_HEADER: str(NOW + 100)}
    assert not verify_signature(SECRET, moved, body, now=NOW + 100)


def test_the_signature_covers_the_id_and_the_topic() -> None:
    """Issue 20 row 14: the receiver acts on the id and topic headers, so they are signed."""
    body = b'{"id": "F1"}'
    headers = signed(SECRET, NOW, body)
    assert verify_signature(SECRET, headers, body, now=NOW)
    for name, other in (
        (ID_HEADER, "F2"),
        (TOPIC_HEADER, "fundflow.marketing.v1"),
        (ID_HEADER, ""),
        (TOPIC_HEADER, ""),
    ):
        assert not verify_signature(SECRET, {**headers, name: other}, body, now=NOW), name
    without = {k: v for k, v in headers.items() if k != ID_HEADER}
    assert not verify_signature(SECRET, without, body, now=NOW)
    # the exact signed string, as docs/security.md gives it
    mac = hmac.new(SECRET, f"{NOW}\nF1\n{ALERTS}\n".encode() + body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={mac}"
    with pytest.raises(ValueError, match="printable"):  # a line break would make the string ambiguous
        sign(SECRET, NOW, "F1\nalerts", ALERTS, body)


def test_safe_url_drops_credentials_and_query() -> None:
    assert (
        safe_url("https://user:pw@hooks.bank.cn:8443/rm/alerts?token=abc#x") == "https://hooks.bank.cn:8443/rm/alerts"
    )
    assert safe_url("http://u:pw@[fd00::1]:8080/hook?k=v") == "http://[fd00::1]:8080/hook"
    assert safe_url("http://user:pw@/hook?token=t") == "http:///hook"


def flaky_app(fail_first: int) -> web.Application:
    app = make_app(SECRET)
    calls = {"n": 0}

    @web.middleware
    async def flaky(request: web.Request, handler: Any) -> web.StreamResponse:
        calls["n"] += 1
        if calls["n"] <= fail_first:
            return web.json_response({"error": "busy"}, status=503)
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(flaky)
    return app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def finding(i: int) -> bytes:
    return orjson.dumps({"id": f"F{i:04d}", "rule": "large_external_outflow", "customer_id": f"C{i}", "ts": "t"})


async def test_delivered_signed_and_received(session: aiohttp.ClientSession) -> None:
    receiver = Receiver(make_app(SECRET))
    await receiver.start()
    try:
        sender = WebhookSender(session, receiver.url, SECRET, RetryPolicy())
        outcome = await sender.deliver("F0001", ALERTS, finding(1))
        assert outcome.delivered and outcome.attempts == 1 and outcome.status == 200
        assert receiver.app[RECEIVED] == [orjson.loads(finding(1))]
    finally:
        await receiver.stop()


async def test_a_busy_receiver_is_retried_with_growing_backoff(session: aiohttp.ClientSession) -> None:
    receiver = Receiver(flaky_app(fail_first=3))
    await receiver.start()
    try:
        sleeps = Sleeps()
        policy = RetryPolicy(max_attempts=6, backoff_initial_seconds=0.5, backoff_max_seconds=30)
        sender = WebhookSender(session, receiver.url, SECRET, policy, sleep=sleeps)
        outcome = await sender.deliver("F0002", ALERTS, finding(2))
        assert outcome.delivered and outcome.attempts == 4
        assert len(sleeps.waits) == 3
        for attempt, wait in enumerate(sleeps.waits, start=1):
            ceiling = 0.5 * 2 ** (attempt - 1)
            assert ceiling / 2 <= wait <= ceiling
        assert receiver.app[STATS]["accepted"] == 1
    finally:
        await receiver.stop()


async def test_a_receiver_that_stays_down_fails_after_the_policy(session: aiohttp.ClientSession) -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=4, backoff_initial_seconds=1, backoff_max_seconds=2)
    sender = WebhookSender(session, f"http://127.0.0.1:{free_port()}/hook", SECRET, policy, sleep=sleeps)
    outcome = await sender.deliver("F0003", ALERTS, finding(3))
    assert not outcome.delivered and outcome.attempts == 4 and outcome.status is None
    assert "after 4 attempts" in outcome.error
    assert len(sleeps.waits) == 3 and max(sleeps.waits) <= 2  # capped


async def test_a_timeout_counts_as_a_failed_attempt(session: aiohttp.ClientSession) -> None:
    app = web.Application()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    app.router.add_post("/hook", slow)
    receiver = Receiver(app)
    await receiver.start()
    try:
        policy = RetryPolicy(timeout_seconds=0.2, max_attempts=2)
        outcome = await WebhookSender(session, receiver.url, SECRET, policy, sleep=Sleeps()).deliver(
            "F0004", ALERTS, finding(4)
        )
        assert not outcome.delivered and outcome.attempts == 2
        assert "no answer within 0.2s" in outcome.error
    finally:
        await receiver.stop()


async def test_a_wrong_secret_is_refused_once_not_retried(session: aiohttp.ClientSession) -> None:
    receiver = Receiver(make_app(SECRET))
    await receiver.start()
    try:
        sleeps = Sleeps()
        sender = WebhookSender(session, receiver.url, b"wrong", RetryPolicy(), sleep=sleeps)
        outcome = await sender.deliver("F0005", ALERTS, finding(5))
        assert not outcome.delivered and outcome.attempts == 1 and outcome.status == 401
        assert sleeps.waits == []
        assert receiver.app[STATS]["refused"] == 1 and receiver.app[RECEIVED] == []
    finally:
        await receiver.stop()


def records(ids: range) -> list[RawRecord]:
    return [RawRecord(ALERTS, 0, i, f"C{i}".encode(), finding(i), 0) for i in ids]


async def test_relay_delivers_once_per_receiver_across_redeliveries(
    session: aiohttp.ClientSession, redis_url: str
) -> None:
    first, second = Receiver(make_app(SECRET)), Receiver(make_app(SECRET))
    await first.start()
    await second.start()
    redis = connect(redis_url)
    try:
        settings = Settings(key_prefix="wh")
        senders = [WebhookSender(session, r.url, SECRET, RetryPolicy()) for r in (first, second)]
        relay = Relay(senders, redis, Keys("wh"), settings)
        report = await relay.handle(records(range(10)))
        assert (report.delivered, report.duplicates, report.dead_letters) == (20, 0, [])
        # the same batch again (a crash before the commit, a replay of the topic): nothing POSTed twice
        again = await relay.handle(records(range(5, 15)))
        assert (again.delivered, again.duplicates) == (10, 10)
        for receiver in (first, second):
            assert sorted(f["id"] for f in receiver.app[RECEIVED]) == [f"F{i:04d}" for i in range(15)]
            assert receiver.app[STATS]["duplicates"] == 0
        ttl = await redis.ttl(f"wh:webhook:{receiver_tag(first.url)}:F0001")
        assert 13 * 86_400 < ttl <= 14 * 86_400
    finally:
        await redis.aclose()
        await first.stop()
        await second.stop()


async def test_relay_dead_letters_what_cannot_be_delivered(session: aiohttp.ClientSession, redis_url: str) -> None:
    up = Receiver(make_app(SECRET))
    await up.start()
    redis = connect(redis_url)
    try:
        down_url = f"http://ops:hunter2@127.0.0.1:{free_port()}/hook?key=abc"
        policy = RetryPolicy(max_attempts=2, backoff_initial_seconds=0.01)
        senders = [WebhookSender(session, up.url, SECRET, policy), WebhookSender(session, down_url, SECRET, policy)]
        relay = Relay(senders, redis, Keys("wh"), Settings(key_prefix="wh"))
        batch = [*records(range(3)), RawRecord(ALERTS, 0, 99, b"k", b"not json", 0)]
        report = await relay.handle(batch)
        assert report.delivered == 3
        letters = [json.loads(letter) for _, letter in report.dead_letters]
        assert sorted(letter["reason"] for letter in letters) == [BAD_FINDING] + [UNDELIVERABLE] * 3
        for letter in letters:
            assert "hunter2" not in letter["error"] and "abc" not in letter["error"]
            if letter["reason"] == UNDELIVERABLE:
                assert letter["error"].startswith(f"http://127.0.0.1:{down_url.split(':')[3].split('/')[0]}/hook: ")
                assert orjson.loads(base64.b64decode(letter["value_b64"]))["id"].startswith("F")
        # the receiver that was down comes back: only its findings are tried again
        again = await relay.handle(records(range(3)))
        assert again.duplicates == 3 and len(again.dead_letters) == 3
    finally:
        await redis.aclose()
        await up.stop()


def recording_app(requests: list[tuple[dict[str, str], bytes]]) -> web.Application:
    """The receiver example, with every request it gets kept (to replay it)."""
    app = make_app(SECRET)

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        requests.append((dict(request.headers), await request.read()))
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.append(record)
    return app


async def test_a_replay_with_another_id_header_is_refused(session: aiohttp.ClientSession) -> None:
    """Issue 20 row 14: a captured request, replayed within the 5 minutes with another
    X-FundFlow-Id (or topic), is not acted on again."""
    requests: list[tuple[dict[str, str], bytes]] = []
    receiver = Receiver(recording_app(requests))
    await receiver.start()
    try:
        outcome = await WebhookSender(session, receiver.url, SECRET, RetryPolicy()).deliver("F0007", ALERTS, finding(7))
        assert outcome.delivered
        (headers, body), replays = requests[0], []
        keep = {k: v for k, v in headers.items() if k.startswith("X-FundFlow") or k == "Content-Type"}
        for changed in ({ID_HEADER: "F0007-again"}, {TOPIC_HEADER: "fundflow.marketing.v1"}, {}):
            async with session.post(receiver.url, data=body, headers={**keep, **changed}) as response:
                replays.append((response.status, await response.json()))
        assert [status for status, _ in replays] == [401, 401, 200]
        assert replays[2][1] == {"ok": True, "duplicate": True}
        assert receiver.app[RECEIVED] == [orjson.loads(finding(7))] and receiver.app[STATS]["accepted"] == 1
        # signed by someone with the key, but the header names another finding than the body
        other = signed(SECRET, int(time.time()), body, finding_id="F9999")
        async with session.post(receiver.url, data=body, headers={**other, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "id" in (await r.json())["error"]
        assert len(receiver.app[RECEIVED]) == 1
    finally:
        await receiver.stop()


@pytest.mark.parametrize("secret", [None, ""])
def test_an_empty_or_missing_secret_is_a_start_up_error(secret: str | None) -> None:
    """Issue 20 row 15."""
    settings = Settings(webhook_secret=SecretStr(secret) if secret is not None else None)
    with pytest.raises(ConfigError, match="FUNDFLOW_WEBHOOK_SECRET not set or empty"):
        relay_secret(settings, ["https://hooks.bank.cn/rm"])
    with pytest.raises(ValueError, match="empty webhook secret"):
        WebhookSender(None, "https://hooks.bank.cn/rm", b"", RetryPolicy())  # type: ignore[arg-type]
    assert relay_secret(Settings(webhook_secret=SecretStr("k")), ["https://hooks.bank.cn/rm"]) == b"k"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://user:hunter2@/hook?token=t0ps3cret", "has no host"),
        ("https://:hunter2@:8443/hook?token=t0ps3cret", "has no host"),
        ("ftp://user:hunter2@files.bank.cn/hook?token=t0ps3cret", "must be http:// or https://"),
        ("http://user:hunter2@hooks.bank.cn:99999/hook?token=t0ps3cret", "is malformed"),
        ("http://user:hunter2@hooks.bank.cn:0/hook?token=t0ps3cret", "is malformed"),
    ],
)
def test_a_receiver_url_without_a_host_is_a_start_up_error_without_its_credentials(
    url: str, why: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 20 row 15: the relay refuses to start, in one line, and never prints the password or token."""
    with pytest.raises(ConfigError, match=why) as refused:
        relay_secret(Settings(webhook_secret=SecretStr("k")), [url])
    assert "hunter2" not in str(refused.value) and "t0ps3cret" not in str(refused.value)
    for name, value in (("FUNDFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:1"), ("FUNDFLOW_REDIS_URL", "redis://127.0.0.1:1"),
                        ("FUNDFLOW_WEBHOOK_SECRET", "k")):  # fmt: skip
        monkeypatch.setenv(name, value)
    assert fundflow(["alerts", "webhook", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fundflow: error: receiver URL") and why in err
    assert "hunter2" not in err and "t0ps3cret" not in err and "user" not in err


async def test_no_credential_reaches_an_error_a_log_or_a_dead_letter(
    session: aiohttp.ClientSession, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 20 row 15: even a URL that got past start-up (or fails in a way we did not
    foresee) is named without its password, user info or query in what is written down."""
    redis = connect(redis_url)
    bad = "http://ops:hunter2@/hook?token=t0ps3cret"  # aiohttp's InvalidUrlClientError quotes it whole
    down = f"http://ops:hunter2@127.0.0.1:{free_port()}/hook?token=t0ps3cret#frag"
    policy = RetryPolicy(max_attempts=1)
    try:
        senders = [WebhookSender(session, url, SECRET, policy) for url in (bad, down)]
        with caplog.at_level(logging.DEBUG):
            report = await Relay(senders, redis, Keys("wh"), Settings(key_prefix="wh")).handle(records(range(2)))
        assert len(report.dead_letters) == 4
        written = [letter.decode() for _, letter in report.dead_letters] + [r.getMessage() for r in caplog.records]
        assert any("InvalidUrl" in text for text in written)
        for text in written:
            for secret in ("hunter2", "t0ps3cret", "ops:", "frag"):
                assert secret not in text, text
    finally:
        await redis.aclose()


async def test_redirects_are_not_followed(session: aiohttp.ClientSession) -> None:
    """A receiver (or whoever answers at its address) cannot send the signed finding on."""
    target = Receiver(make_app(SECRET))
    app = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(target.url)

    app.router.add_post("/hook", moved)
    redirecting = Receiver(app)
    await target.start()
    await redirecting.start()
    try:
        outcome = await WebhookSender(session, redirecting.url, SECRET, RetryPolicy()).deliver("F8", ALERTS, finding(8))
        assert not outcome.delivered and outcome.status == 307 and outcome.attempts == 1
        assert target.app[RECEIVED] == []
    finally:
        await redirecting.stop()
        await target.stop()


async def test_a_receiver_accepts_the_previous_secret_while_the_secret_changes(session: aiohttp.ClientSession) -> None:
    """Rotation (docs/security.md): receivers take old and new, then the relay switches."""
    receiver = Receiver(make_app(b"new-key", previous_secret=SECRET))
    await receiver.start()
    try:
        for key, number in ((SECRET, 11), (b"new-key", 12)):
            outcome = await WebhookSender(session, receiver.url, key, RetryPolicy()).deliver(
                f"F{number:04d}", ALERTS, finding(number)
            )
            assert outcome.delivered, key
        refused = await WebhookSender(session, receiver.url, b"other", RetryPolicy()).deliver(
            "F0013", ALERTS, finding(13)
        )
        assert refused.status == 401
    finally:
        await receiver.stop()
    with pytest.raises(ValueError, match="non-empty secret"):
        make_app(b"")


def test_redact_leaves_no_credential_in_any_spelling() -> None:
    url = "https://ops:hunter2@hooks.bank.cn/hook?token=t0ps3cret#frag"
    text = (f"InvalidURL: {url}; redirected to http://ops:hunter2@other.bank.cn/x; "
            "yarl says https://ops:hunter2@hooks.bank.cn/hook?token=t0ps3cret")  # fmt: skip
    cleaned = redact(text, url)
    for secret in ("hunter2", "t0ps3cret", "ops", "frag"):
        assert secret not in cleaned, cleaned
    assert "https://hooks.bank.cn/hook" in cleaned and "http://other.bank.cn/x" in cleaned

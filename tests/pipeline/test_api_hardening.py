"""Issue 20, rows 8-12: the HTTP API cannot be starved or made to answer 500 by its
input. Real API server, real Redis, real aiohttp clients and raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from streams import telemetry
from streams.api.server import create_api
from streams.local.servers import free_port
from streams.settings import Settings
from streams.storage.keys import Keys
from tests.support.api import AUTH, PREFIX, TOKENS, seed

Client = TestClient[Any, Any]


@contextlib.asynccontextmanager
async def serving(redis_url: str, bootstrap: str = "", **overrides: Any) -> AsyncIterator[Client]:
    settings = Settings(key_prefix=PREFIX, api_tokens=tuple(SecretStr(t) for t in TOKENS), **overrides)
    processor = await seed(redis_url, settings)
    try:
        async with TestClient(TestServer(create_api(settings, redis_url, bootstrap))) as client:
            yield client
    finally:
        await processor.store.redis.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Client]:
    async with serving(redis_url) as running:
        yield running


async def status_and_body(client: Client, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await client.get(path, headers=AUTH if headers is None else headers)
    return response.status, await response.json()


async def raw_request(client: Client, head: bytes, read_seconds: float) -> bytes:
    """Send ``head`` (a request without its blank line) on a fresh TCP connection and read
    what comes back for up to ``read_seconds`` (or until the server closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head + b"Host: 127.0.0.1\r\n\r\n")
    await writer.drain()
    received = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(read_seconds):
            while chunk := await reader.read(65536):
                received += chunk
    writer.close()
    return received


# ---- rows 10 and 11: one place validates query parameters ------------------------------


async def test_tiers_top_zero_lists_nobody_and_the_range_is_enforced(client: Client) -> None:
    status, body = await status_and_body(client, "/tiers?top=0")
    assert status == 200 and body["customers"] > 0 and body["top"] == []
    assert len((await status_and_body(client, "/tiers?top=100"))[1]["top"]) == body["customers"]
    for bad in ("101", "-1", "1e2", " 5", "", "99999999999999999999999"):
        status, body = await status_and_body(client, f"/tiers?top={bad}")
        assert status == 400 and body == {"error": "top must be an integer 0..100 (ASCII digits)"}, bad


@pytest.mark.parametrize("digit", ["²", "①", "١", "５", "٣"])
async def test_numbers_are_ascii_digits_only(client: Client, digit: str) -> None:
    for path, name in (("/alerts?limit=", "limit"), ("/tiers?top=", "top")):
        status, body = await status_and_body(client, path + digit)
        assert status == 400 and body["error"].startswith(f"{name} must be an integer"), (path, digit)


@pytest.mark.parametrize(
    "as_of",
    [
        "9999-12-31T00:00:00%2B00:00",
        "9999-12-31T16:00:00Z",
        "2101-01-01T00:00:00%2B00:00",
        "0001-01-01T00:00:00%2B08:00",
        "1969-12-31T23:59:59%2B00:00",
        "١٩٩٨-01-01T00:00:00%2B08:00",
    ],
)
async def test_as_of_outside_the_supported_years_is_400(client: Client, as_of: str) -> None:
    for path in ("/customers/C0001", "/customers/C0001/history"):
        status, body = await status_and_body(client, f"{path}?as_of={as_of}")
        assert status == 400 and body["error"].startswith("as_of"), (path, as_of, body)
    assert (await status_and_body(client, "/customers/C0001?as_of=2100-12-31T00:00:00%2B08:00"))[0] == 200


async def test_invalid_utf8_after_bearer_is_401(client: Client) -> None:
    for token in (b"\xff\xfe", b"token-one-0123456789\xc3", b"\xed\xa0\x80"):
        answer = await raw_request(client, b"GET /tiers HTTP/1.1\r\nConnection: close\r\nAuthorization: Bearer " + token
                                   + b"\r\n", 5)  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b"missing or wrong bearer token" in answer


async def test_anything_unexpected_is_a_logged_500_with_a_request_id(
    client: Client, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    try:  # a state blob no decoder can read: a bug, or a corrupted Redis
        await redis.set(Keys(PREFIX).state("C0001"), b"1::\x00not a state")
    finally:
        await redis.aclose()
    with caplog.at_level(logging.INFO, logger="streams.api"):
        response = await client.get("/customers/C0001", headers=AUTH)
        body = await response.json()
    assert response.status == 500
    assert set(body) == {"error", "request_id"} and body["error"] == "internal error"
    assert response.headers["X-Request-Id"] == body["request_id"]
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1 and body["request_id"] in failures[0].getMessage() and failures[0].exc_info
    assert "Traceback" not in await response.text()
    # a refused parameter is logged too (without the value), and every answer has an id
    with caplog.at_level(logging.INFO, logger="streams.api"):
        refused = await client.get("/alerts?limit=%C2%B2", headers=AUTH)
    assert refused.status == 400 and refused.headers["X-Request-Id"]
    assert any(refused.headers["X-Request-Id"] in r.getMessage() for r in caplog.records)
    assert all("²" not in r.getMessage() for r in caplog.records)


NASTY = [
    (b"/alerts?limit=%FF", 400), (b"/alerts?limit=%", 400), (b"/alerts?customer=%FF%FE", 200),
    (b"/customers/%FF", 404), (b"/customers/C0001?as_of=%FF", 400), (b"/customers/C0001?as_of=%00", 400),
    (b"/customers/C0001?as_of=2000-01-01T00:00:00%2B99:00", 400), (b"/customers/C0001?as_of=2000-13-01T00:00:00Z", 400),
    (b"/customers/C0001/history?as_of=" + b"9" * 4000, 400), (b"/tiers?top=%EF%BC%95", 400),
    (b"/alerts/stream?since=%FF", 400), (b"/customers/C0001?as_of=2100-12-31T23:59:59.999999-23:59", 400),
]  # fmt: skip


async def test_no_malformed_input_is_a_500_or_quoted_back(client: Client) -> None:
    token = AUTH["Authorization"].encode()
    for path, status in NASTY:
        answer = await raw_request(client, b"GET " + path + b" HTTP/1.1\r\nConnection: close\r\nAuthorization: " + token
                                   + b"\r\n", 5)  # fmt: skip
        assert answer.startswith(b"HTTP/1.1 %d " % status), (path, answer[:300])
        assert b"x-request-id: " in answer.lower()
        if status == 400:
            assert path.rsplit(b"=", 1)[-1] not in answer.split(b"\r\n\r\n", 1)[1], path  # the value is not echoed


# ---- row 12: a feed id Redis would refuse is refused up front ----------------------------


async def test_stream_ids_redis_would_refuse_are_400(client: Client) -> None:
    for bad in ("1-", "-1", "1--1", "99999999999999999999", "18446744073709551616-0", "0-18446744073709551616",
                "١-0", "1-0 ", "$"):  # fmt: skip
        for query, headers in ((f"?since={bad}", AUTH), ("", {**AUTH, "Last-Event-ID": bad})):
            if (not bad.isascii() or bad != bad.strip()) and headers is not AUTH:
                continue  # headers: ASCII only, and HTTP strips the blanks around a value
            response = await client.get(f"/alerts/stream{query}", headers=headers)
            assert response.status == 400, (bad, query)
            assert "feed id" in (await response.json())["error"]
    for good in ("18446744073709551615-18446744073709551615", "1700000000000", "0-0"):
        response = await client.get(f"/alerts/stream?since={good}", headers=AUTH)
        assert response.status == 200, good
        response.close()


# ---- row 9: an error after the headers ends the stream, never a second response --------


async def test_an_error_after_the_stream_headers_ends_the_stream_cleanly(client: Client, redis_url: str) -> None:
    first = await client.get("/alerts/stream", headers=AUTH)  # the feed reader runs
    assert first.status == 200
    redis = aioredis.Redis.from_url(redis_url)
    try:  # every read of the feed now fails (WRONGTYPE), after the next stream's headers
        await redis.delete(Keys(PREFIX).feed)
        await redis.set(Keys(PREFIX).feed, b"not a stream")
    finally:
        await redis.aclose()
    token = AUTH["Authorization"].encode()
    answer = await raw_request(client, b"GET /alerts/stream?since=0-0 HTTP/1.1\r\nAuthorization: " + token + b"\r\n", 5)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert answer.startswith(b"HTTP/1.1 200 ") and b"event: error\ndata: " in answer
    assert b'"error":"Redis unavailable: ResponseError"' in answer
    assert answer.endswith(b"0\r\n\r\n")  # the chunked body was ended properly: the server closed it
    # a stream without `since` on a feed Redis cannot read: one clean answer too
    answer = await raw_request(client, b"GET /alerts/stream HTTP/1.1\r\nAuthorization: " + token + b"\r\n", 2)
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    # the feed is a stream again: the one reader recovers and the stream that stayed open goes on
    redis = aioredis.Redis.from_url(redis_url)
    try:
        await redis.delete(Keys(PREFIX).feed)
        await redis.xadd(Keys(PREFIX).feed, {"v": b'{"id": "after", "rule": "r"}'})
    finally:
        await redis.aclose()
    async with asyncio.timeout(15):
        while b'"id": "after"' not in (block := await first.content.readuntil(b"\n\n")):
            assert block, "the stream ended"
    first.close()


# ---- row 8: 100+ streams share one Redis reader; caps; data endpoints unaffected ---------


async def open_stream(session: aiohttp.ClientSession, url: str, token: str) -> aiohttp.ClientResponse:
    response = await session.get(url, headers={"Authorization": f"Bearer {token}"})
    if response.status == 200:  # wait for the first bytes: the stream is really open
        await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
    return response


async def redis_clients(redis_url: str) -> int:
    redis = aioredis.Redis.from_url(redis_url)
    try:
        return len(await redis.client_list())
    finally:
        await redis.aclose()


async def test_many_streams_share_one_reader_are_capped_and_starve_nothing(redis_url: str) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # a "Kafka" for /readyz
    bootstrap = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    limits = {"api_max_streams": 110, "api_max_streams_per_token": 60, "api_stream_heartbeat_seconds": 0.5}
    before = await redis_clients(redis_url)
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with serving(redis_url, bootstrap, **limits) as client, aiohttp.ClientSession(connector=connector) as s:
            url = str(client.make_url("/alerts/stream"))
            first = await asyncio.gather(*(open_stream(s, url, TOKENS[0]) for _ in range(60)))
            assert [r.status for r in first] == [200] * 60
            refused = {why: telemetry.API_STREAMS_LIMITED.labels(why)._value.get() for why in ("token", "server")}
            over = await open_stream(s, url, TOKENS[0])  # the 61st for one token
            assert over.status == 429 and "for this token" in (await over.json())["error"]
            assert over.headers["Retry-After"]
            second = await asyncio.gather(*(open_stream(s, url + "?since=0-0", TOKENS[1]) for _ in range(50)))
            assert [r.status for r in second] == [200] * 50
            full = await open_stream(s, url, TOKENS[1])  # the 111th in all
            assert full.status == 503 and "on this server" in (await full.json())["error"]
            for why in ("token", "server"):  # operators see the caps being hit
                assert telemetry.API_STREAMS_LIMITED.labels(why)._value.get() == refused[why] + 1
            # 110 streams open: every data endpoint and /readyz still answer, at once
            for path in ("/readyz", "/customers/C0001", "/customers/C0001/history", "/alerts", "/tiers", "/metrics"):
                async with asyncio.timeout(5):
                    response = await s.get(str(client.make_url(path)), headers=AUTH)
                assert response.status == 200, (path, await response.text())
            # ... and the streams hold no Redis connection each: one reader for all of them (plus
            # at most 4 catching up, the data endpoints' and the seeding pipeline's)
            assert await redis_clients(redis_url) - before <= 10
            assert telemetry.API_STREAMS._value.get() >= 110
            # clients that leave are noticed within seconds (heartbeat 0.5 s), and their room is free again
            for response in (*first, *second):
                response.close()
            async with asyncio.timeout(5):
                while telemetry.API_STREAMS._value.get() > 0:
                    await asyncio.sleep(0.1)
            again = await open_stream(s, url, TOKENS[0])
            assert again.status == 200
            again.close()
    finally:
        listener.close()
        await listener.wait_closed()


async def test_live_findings_reach_every_stream_from_the_one_reader(redis_url: str) -> None:
    async with serving(redis_url, api_stream_heartbeat_seconds=0.5) as client:
        streams = [await client.get("/alerts/stream", headers=AUTH) for _ in range(5)]
        redis = aioredis.Redis.from_url(redis_url)
        try:
            for i in range(3):
                await redis.xadd(Keys(PREFIX).feed, {"v": b'{"id": "live-%d", "rule": "r"}' % i})
        finally:
            await redis.aclose()
        for stream in streams:
            seen: list[bytes] = []
            async with asyncio.timeout(10):
                while len(seen) < 3:
                    block = await stream.content.readuntil(b"\n\n")
                    assert block, "the stream ended"
                    seen.extend(line for line in block.split(b"\n") if line.startswith(b"data: "))
            assert seen == [b'data: {"id": "live-%d", "rule": "r"}' % i for i in range(3)]
            stream.close()


def test_the_api_process_logs_each_failure_with_its_request_id(redis_url: str) -> None:
    """``fundflow api`` as operators run it: a 500 and a 400 are in its log with the
    request id the client saw; the token and the refused value are not."""
    seeded = asyncio.run(seed_and_break(redis_url))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env.update(FUNDFLOW_REDIS_URL=redis_url, FUNDFLOW_KEY_PREFIX=PREFIX, FUNDFLOW_API_TOKENS=json.dumps(list(TOKENS)))
    api = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "api", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and api.poll() is None, "the API did not start"
                time.sleep(0.2)
        ids = []
        for path, status in ((f"/customers/{seeded}", 500), ("/alerts?limit=%C2%B2", 400)):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=AUTH)
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(request, timeout=5)
            assert answer.value.code == status
            ids.append(answer.value.headers["X-Request-Id"])
            assert b"Traceback" not in answer.value.read()
    finally:
        api.terminate()
        _, log = api.communicate(timeout=30)
    assert all(request_id in log for request_id in ids), log
    assert "Traceback" in log  # the server keeps the traceback; the client never sees it
    assert TOKENS[1] not in log and "²" not in log


async def seed_and_break(redis_url: str) -> str:
    """Seeded state with one customer's blob unreadable; that customer's id."""
    settings = Settings(key_prefix=PREFIX)
    processor = await seed(redis_url, settings)
    try:
        await processor.store.redis.set(Keys(PREFIX).state("C0002"), b"1::\x00not a state")
    finally:
        await processor.store.redis.aclose()
    return "C0002"


async def test_a_resumed_stream_has_no_gap_and_no_repeat_while_the_feed_grows(redis_url: str) -> None:
    """Catching up (paged XRANGE, 200 a page) hands over to the one live reader without
    losing or repeating an entry, while entries keep arriving."""
    feed = Keys(PREFIX).feed
    async with serving(redis_url, api_stream_heartbeat_seconds=0.5) as client:
        redis = aioredis.Redis.from_url(redis_url)
        try:
            await redis.delete(feed)
            for i in range(450):  # history: more than two pages
                await redis.xadd(feed, {"v": b'{"id": "h%d"}' % i})
            keeper = await client.get("/alerts/stream", headers=AUTH)  # the live reader is running already

            async def produce() -> None:
                for i in range(300):
                    await redis.xadd(feed, {"v": b'{"id": "l%d"}' % i})
                    if i % 20 == 0:
                        await asyncio.sleep(0.01)

            producing = asyncio.create_task(produce())
            stream = await client.get("/alerts/stream?since=0-0", headers=AUTH)
            seen: list[str] = []
            async with asyncio.timeout(20):
                while len(seen) < 750:
                    block = await stream.content.readuntil(b"\n\n")
                    assert block, "the stream ended"
                    seen.extend(line[4:].decode() for line in block.split(b"\n") if line.startswith(b"id: "))
            await producing
            expected = [entry_id.decode() for entry_id, _ in await redis.xrange(feed)]
            assert seen == expected
            stream.close()
            keeper.close()
        finally:
            await redis.aclose()


async def test_a_client_that_does_not_read_is_ended_and_holds_nothing(redis_url: str) -> None:
    """Its queue fills (the one reader never waits for it): the stream ends with
    ``event: error`` and the client resumes by id; a client that reads gets everything."""
    feed = Keys(PREFIX).feed
    slow_before = telemetry.API_STREAMS_LIMITED.labels("slow")._value.get()
    async with serving(redis_url, api_stream_heartbeat_seconds=0.5) as client:
        sleeper = await client.get("/alerts/stream", headers=AUTH)  # never read until the end
        reader = await client.get("/alerts/stream", headers=AUTH)

        async def read_all(wanted: int) -> int:
            count = 0
            while count < wanted:
                block = await reader.content.readuntil(b"\n\n")
                assert block, "the reading client's stream ended"
                count += block.startswith(b"id: ")
            return count

        reading = asyncio.create_task(read_all(2500))
        redis = aioredis.Redis.from_url(redis_url)
        padding = b"x" * 16_000
        try:
            for i in range(2500):  # 40 MB: more than socket buffers hold, 2.5 queues full
                await redis.xadd(feed, {"v": b'{"id": "e%d", "pad": "%s"}' % (i, padding)})
        finally:
            await redis.aclose()
        async with asyncio.timeout(60):
            assert await reading == 2500
            rest = await sleeper.content.read()  # the server ended it: this reads to the end
        assert rest.rstrip().endswith(b'"error":"the client reads too slowly; resume with Last-Event-ID"}')
        assert telemetry.API_STREAMS_LIMITED.labels("slow")._value.get() == slow_before + 1
        reader.close()

"""Cases across real processes: ``fundflow api`` takes findings into cases by itself,
a ``kill -9`` of it in the middle of a change and a retry of the same click leave
exactly one change, and the cases survive a restart of the API and of Redis (AOF)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from streams.clients import connect
from streams.local.servers import EmbeddedRedis, free_port
from streams.pipeline import outbox_entry
from streams.storage.keys import Keys
from streams.storage.store import StateStore
from streams.topics import ALERTS
from tests.support import ROOT
from tests.support.desk import finding

PREFIX = "deskc"
TOKENS = [
    {"token": "t-li-0123456789ab", "role": "analyst", "name": "li.wei"},
    {"token": "t-boss-0123456789", "role": "supervisor", "name": "z"},
]
LI = {"Authorization": "Bearer t-li-0123456789ab"}


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(free_port(), tmp_path / "redis", persistent=True)
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def start_api(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env.update(FUNDFLOW_REDIS_URL=redis_url, FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1", FUNDFLOW_KEY_PREFIX=PREFIX,
               FUNDFLOW_API_TOKENS=json.dumps(TOKENS))  # fmt: skip
    with log.open("ab") as out:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "api", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _healthy(port):
            return process
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"fundflow api did not start: {log.read_text()}")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def publish(redis_url: str, *findings: dict[str, Any]) -> None:
    store = StateStore(connect(redis_url), Keys(PREFIX))
    try:
        await store.confirm_published(
            {f["customer_id"]: [outbox_entry(ALERTS, f["customer_id"], orjson.dumps(f))] for f in findings}
        )
    finally:
        await store.redis.aclose()


async def wait_for_case(session: aiohttp.ClientSession, base: str, customer: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        async with session.get(f"{base}/cases?customer={customer}", headers=LI) as response:
            body = await response.json()
            if body.get("cases"):
                return dict(body["cases"][0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no case for {customer}")


async def test_kill_9_mid_change_then_retry_and_restarts(persistent_redis: EmbeddedRedis, tmp_path: Path) -> None:
    url, port = persistent_redis.url, free_port()
    base, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"
    api = start_api(url, port, log)
    admin = redis.Redis.from_url(url)
    try:
        async with aiohttp.ClientSession() as session:
            await publish(url, finding("K1"))
            case = (await wait_for_case(session, base, "K1"))["id"]  # the API's own intake made it
            path = f"{base}/cases/{case}/comment"
            click = {**LI, "Idempotency-Key": "click-1"}

            # the change reaches Redis, which holds writes; the API is killed while it waits
            admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
            sent = asyncio.ensure_future(session.post(path, json={"text": "called"}, headers=click))
            deadline = time.monotonic() + 10
            while not any(c.get("cmd") == "evalsha" and "b" in c.get("flags", "") for c in admin.client_list()):
                assert time.monotonic() < deadline, "the change never reached Redis"
                await asyncio.sleep(0.02)
            kill(api)
            with pytest.raises(aiohttp.ClientError):
                await sent
            admin.execute_command("CLIENT", "UNPAUSE")

            api = start_api(url, port, log)  # the click is retried against the new process
            async with session.post(path, json={"text": "called"}, headers=click) as response:
                assert response.status == 200, await response.text()
            async with session.post(path, json={"text": "called"}, headers=click) as response:
                assert response.status == 200 and response.headers["Idempotent-Replayed"] == "true"
            async with session.get(f"{base}/cases/{case}", headers=LI) as response:
                before = await response.json()
            assert [c["text"] for c in before["comments"]] == ["called"]

            # every process restarts: Redis from its append-only file, then the API
            kill(api)
            admin.close()
            persistent_redis.stop()
            persistent_redis.start()
            admin = redis.Redis.from_url(url)
            api = start_api(url, port, log)
            async with session.get(f"{base}/cases/{case}", headers=LI) as response:
                assert await response.json() == before
            await publish(url, finding("K1"))  # the intake resumes from its kept cursor: a join, not a new case
            deadline = time.monotonic() + 20
            while (await wait_for_case(session, base, "K1"))["count"] != 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        if api.poll() is None:
            kill(api)
        admin.close()


def test_a_second_api_claiming_a_registered_name_does_not_start(redis_url: str, tmp_path: Path) -> None:
    """Issue 30: an analyst token named like the supervisor (or a reserved name) on the same Redis."""
    first = start_api(redis_url, free_port(), tmp_path / "api.log")  # registers li.wei and z (the bootstrap)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
        env.update(FUNDFLOW_REDIS_URL=redis_url, FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1", FUNDFLOW_KEY_PREFIX=PREFIX)
        for token, why in (
            ({"token": "impostor-0123456789", "role": "analyst", "name": "z"}, "a token claims z as analyst, but z is "
             "registered as supervisor"),
            ({"token": "impostor-0123456789", "role": "supervisor", "name": "z"}, "a token claims z, but it is not "
             "one of z's registered tokens"),
            ({"token": "impostor-0123456789", "role": "analyst", "name": "system"}, "name 'system' is reserved"),
            ({"token": "impostor-0123456789", "role": "analyst", "name": "token-4"}, "name 'token-4' is reserved"),
        ):  # fmt: skip
            result = subprocess.run(
                [sys.executable, "-m", "streams.cli.main", "api", "--port", str(free_port())],
                cwd=ROOT, env={**env, "FUNDFLOW_API_TOKENS": json.dumps([token])}, capture_output=True, timeout=60,
            )  # fmt: skip
            lines = result.stderr.decode().strip().splitlines()
            assert result.returncode == 1 and len(lines) == 1 and why in lines[0], result.stderr.decode()
    finally:
        kill(first)

"""Readiness checks shared by the workers and the API: is Redis answering, does
a Kafka bootstrap server accept connections. Each check returns ``"ok"`` or a
short reason, and sets ``fundflow_dependency_up{dependency}`` for Prometheus.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import RedisError

from streams import telemetry

CHECK_TIMEOUT_SECONDS = 2.0


async def check_redis(redis: Any) -> str:
    try:
        await asyncio.wait_for(redis.ping(), timeout=CHECK_TIMEOUT_SECONDS)
    except (RedisError, OSError, TimeoutError) as exc:
        telemetry.DEPENDENCY_UP.labels("redis").set(0)
        return f"unreachable: {type(exc).__name__}"
    telemetry.DEPENDENCY_UP.labels("redis").set(1)
    return "ok"


async def check_kafka(bootstrap: str) -> str:
    """ok when any bootstrap server accepts a TCP connection in time."""
    if not bootstrap:
        return "not configured"
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connecting = asyncio.open_connection(host or "localhost", int(port))
            _, writer = await asyncio.wait_for(connecting, timeout=CHECK_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, ValueError) as exc:
            errors.append(f"{server.strip()}: {type(exc).__name__}")
            continue
        writer.close()
        telemetry.DEPENDENCY_UP.labels("kafka").set(1)
        return "ok"
    telemetry.DEPENDENCY_UP.labels("kafka").set(0)
    return "unreachable: " + "; ".join(errors)


async def readiness(redis: Any, bootstrap: str) -> tuple[bool, dict[str, str]]:
    redis_check, kafka_check = await asyncio.gather(check_redis(redis), check_kafka(bootstrap))
    checks = {"redis": redis_check, "kafka": kafka_check}
    return all(v == "ok" for v in checks.values()), checks

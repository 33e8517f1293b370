"""``fundflow worker``: check the servers, make sure the topics exist, run Faust.

Start as many as there are partitions to share; each needs its own
``--web-port`` on one host. Stopping: SIGTERM or Ctrl-C; Faust commits what
was acked and leaves the group, the rest is redelivered to the others.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rules.config import RulesConfig
from streams.app import create_app, run_faust_worker
from streams.clients import connect, ensure_topics
from streams.errors import ConfigError
from streams.health import check_redis as redis_status
from streams.rulestep import RulesStep, VersionFollower, VersionUnreadable, build_step, last_good_rules, rules_at_start
from streams.settings import Settings, safe_url
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from streams.storage.store import StateStore
from streams.topics import all_topics

log = logging.getLogger(__name__)


async def check_redis(redis_url: str, cluster: bool = False) -> None:
    """A one-line ``ConfigError`` before anything starts when Redis does not answer."""
    client = connect(redis_url, cluster)
    try:
        status = await redis_status(client)
    finally:
        await client.aclose()
    if status != "ok":
        raise ConfigError(f"Redis at {safe_url(redis_url)} does not answer: {status}")


FALLBACK_HINT = "to run on the last good rules kept in Redis meanwhile: FUNDFLOW_RULES_FALLBACK=last-good"


async def fallback_rules(redis_url: str, settings: Settings, why: str) -> RulesConfig:
    """The rules last in force, as Redis keeps them, for a worker whose file cannot be used;
    a ``ConfigError`` when Redis holds none."""
    client = connect(redis_url, settings.redis_cluster)
    try:
        found = await last_good_rules(StateStore(client, Keys(settings.key_prefix)))
    finally:
        await client.aclose()
    if found is None:
        raise ConfigError(f"{why} (and Redis keeps no last good rules to fall back on)")
    fp, rules = found
    log.error("%s; FUNDFLOW_RULES_FALLBACK=last-good: running on the last good rules %s from Redis", why, fp)
    return rules


async def follow_versions_at_start(redis_url: str, settings: Settings, step: RulesStep) -> None:
    """The rule versions in Redis before the first event is judged (version 1 made from the
    rules file when there are none); a version this worker cannot load is a one-line error,
    unless ``FUNDFLOW_RULES_FALLBACK=last-good``: then it runs on the rules it has and says so."""
    client = connect(redis_url, settings.redis_cluster)
    try:
        follower = VersionFollower(Rulebook(client, Keys(settings.key_prefix)), step.provider)
        try:
            await follower.poll(time.time_ns() // 1000, strict=settings.rules_fallback != "last-good")
        except VersionUnreadable as exc:
            raise ConfigError(f"{exc}; {FALLBACK_HINT}") from None
    finally:
        await client.aclose()


def run_worker(settings: Settings, bootstrap: str, redis_url: str, *, web_port: int | None, loglevel: str) -> int:
    fallback: RulesConfig | None = None
    try:  # a missing or bad rules file is a one-line error before anything starts
        rules_at_start(settings)
    except ConfigError as exc:
        if settings.rules_fallback != "last-good":
            raise ConfigError(f"{exc}; {FALLBACK_HINT}") from None
        fallback = asyncio.run(fallback_rules(redis_url, settings, str(exc)))
    asyncio.run(check_redis(redis_url, settings.redis_cluster))
    try:
        asyncio.run(ensure_topics(bootstrap, all_topics(settings.partitions), settings))
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"Kafka at {bootstrap} does not answer: {exc}") from None
    if web_port is not None:
        settings = settings.model_copy(update={"web_port": web_port})
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    step = build_step(settings, fallback)
    asyncio.run(follow_versions_at_start(redis_url, settings, step))
    app = create_app(settings, bootstrap, redis_url, step)
    run_faust_worker(app, settings, loglevel)
    return 0

"""``fundflow worker``: check the servers, make sure the topics exist, run Faust.

Start as many as there are partitions to share; each needs its own
``--web-port`` on one host. Stopping: SIGTERM or Ctrl-C; Faust commits what
was acked and leaves the group, the rest is redelivered to the others.
"""

from __future__ import annotations

import asyncio
import logging

from rules.config import RulesConfigError, load_rules
from streams.app import create_app, run_faust_worker
from streams.clients import connect, ensure_topics
from streams.errors import ConfigError
from streams.health import check_redis as redis_status
from streams.settings import Settings, safe_url
from streams.topics import all_topics


async def check_redis(redis_url: str, cluster: bool = False) -> None:
    """A one-line ``ConfigError`` before anything starts when Redis does not answer."""
    client = connect(redis_url, cluster)
    try:
        status = await redis_status(client)
    finally:
        await client.aclose()
    if status != "ok":
        raise ConfigError(f"Redis at {safe_url(redis_url)} does not answer: {status}")


def run_worker(settings: Settings, bootstrap: str, redis_url: str, *, web_port: int | None, loglevel: str) -> int:
    if settings.rules_file.exists():  # a bad rules file is a one-line error before anything starts
        try:
            load_rules(settings.rules_file)
        except RulesConfigError as exc:
            raise ConfigError(str(exc)) from None
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
    app = create_app(settings, bootstrap, redis_url)
    run_faust_worker(app, settings, loglevel)
    return 0

"""``fundflow worker``: check the servers, make sure the topics exist, run Faust.

Start as many as there are partitions to share; each needs its own
``--web-port`` on one host. Stopping: SIGTERM or Ctrl-C; Faust commits what
was acked and leaves the group, the rest is redelivered to the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from rules.config import RulesConfigError, load_rules
from streams.errors import ConfigError
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.pipeline import Step


async def check_redis(redis_url: str, cluster: bool = False) -> None:
    from streams.store import connect

    client = connect(redis_url, cluster)
    try:
        await asyncio.wait_for(client.ping(), timeout=5)
    except Exception as exc:
        raise ConfigError(f"Redis at {_redact(redis_url)} does not answer: {exc}") from None
    finally:
        await client.aclose()


def _redact(url: str) -> str:
    """The URL without its password (secrets never reach logs)."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def build_step(settings: Settings, tier_of: Callable[[str], str | None] | None = None) -> Step:
    """The per-event step the worker runs: state plus the business rules when configured.

    ``tier_of`` gives a customer's live tier (``streams.tiers.TierBook``) for the findings.
    """
    from streams.rulestep import RulesProvider, rules_step
    from streams.snapshot import state_config

    path = settings.rules_file if settings.rules_file.exists() else None
    if path is None:
        logging.getLogger(__name__).warning("no rules file at %s: default thresholds", settings.rules_file)
    try:
        provider = RulesProvider(path)
    except RulesConfigError as exc:
        raise ConfigError(str(exc)) from None
    return rules_step(state_config(settings), provider, tier_of)


def run_worker(settings: Settings, bootstrap: str, redis_url: str, *, web_port: int | None, loglevel: str) -> int:
    from streams.app import create_app, run_faust_worker
    from streams.embedded import ensure_topics
    from streams.topics import all_topics

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

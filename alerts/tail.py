"""``fundflow alerts tail``: watch findings arrive, in a terminal.

Reads the finding topics without a consumer group (it never moves anyone's
offsets), from their current end by default or from the beginning, and prints
one line per finding, or its JSON with ``--json`` (for ``jq``). Filters are
exact matches on the finding's fields.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import orjson
from aiokafka import AIOKafkaConsumer

from streams.clients import kafka_client_kwargs
from streams.errors import ConfigError
from streams.settings import Settings

SEVERITY_MARK = {"high": "HIGH", "medium": "MED ", "low": "LOW ", "info": "INFO"}


@dataclass(frozen=True, slots=True)
class TailFilter:
    rule: str | None = None
    customer: str | None = None
    category: str | None = None
    severity: str | None = None

    def __call__(self, finding: dict[str, Any]) -> bool:
        return all(
            wanted is None or finding.get(name) == wanted
            for name, wanted in (
                ("rule", self.rule),
                ("customer_id", self.customer),
                ("category", self.category),
                ("severity", self.severity),
            )
        )


def render(finding: dict[str, Any]) -> str:
    """One readable line: when, how bad, what, who, and the message."""
    severity = SEVERITY_MARK.get(str(finding.get("severity")), "?   ")
    kind = finding.get("type", "alert")
    tier = f"tier {finding['tier']}" if finding.get("tier") else "tier -"
    what = f"{finding.get('category')}/{finding.get('rule')}"
    extra = ""
    if kind == "recommendation" and "amount" in finding:
        extra = f" [sweep {finding['amount']} -> {finding.get('product')}]"
    elif kind == "push":
        extra = f" [{finding.get('channel')}:{finding.get('template')}]"
    return (
        f"{finding.get('ts')}  {severity}  {what:<40}  {finding.get('customer_id')}  {tier:<7}  "
        f"{finding.get('message')}{extra}"
    )


async def tail(
    settings: Settings,
    bootstrap: str,
    topics: Sequence[str],
    keep: Callable[[dict[str, Any]], bool],
    *,
    from_beginning: bool = False,
    as_json: bool = False,
    limit: int | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print matching findings until interrupted, or until ``limit`` were printed."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **kafka_client_kwargs(settings),
    )
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        raise ConfigError(f"Kafka at {bootstrap} does not answer: {exc}") from None
    printed = 0
    try:
        while limit is None or printed < limit:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            for messages in batches.values():
                for message in messages:
                    try:
                        finding = orjson.loads(message.value or b"")
                    except orjson.JSONDecodeError:
                        continue
                    if not isinstance(finding, dict) or not keep(finding):
                        continue
                    line = orjson.dumps(finding).decode() if as_json else render(finding)
                    print(line, file=out, flush=True)
                    printed += 1
                    if limit is not None and printed >= limit:
                        return 0
    except asyncio.CancelledError:
        pass
    finally:
        await consumer.stop()
    return 0

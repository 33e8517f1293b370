"""The dead-letter policy, in one place: what a record that cannot be handled becomes.

Every record FundFlow gives up on (bad input at the worker, a finding no receiver
accepts at the relay) goes to the ``DLQ`` topic as one ``fundflow.dlq.v1`` JSON
object (``docs/events.md``): where it came from (topic, partition, offset), a short
``reason`` code (also a metric label), a human ``error`` that names fields and rules,
never values, and the original bytes (base64) so nothing is lost.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the worker received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


def dead_letter(record: RawRecord, reason: str, error: str, at_ms: int) -> bytes:
    """The DeadLetter JSON of ``events.md`` for ``record``."""
    return orjson.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason,
            "error": error,
            "key_b64": base64.b64encode(record.key).decode() if record.key is not None else None,
            "value_b64": base64.b64encode(record.value).decode() if record.value is not None else None,
            "timestamp_ms": record.timestamp_ms,
            "dead_lettered_at_ms": at_ms,
        }
    )

"""The dead-letter policy, in one place: what a record that cannot be handled becomes.

Every record FundFlow gives up on (bad input at the worker, a finding no receiver
accepts at the relay) goes to the ``DLQ`` topic as one ``fundflow.dlq.v1`` JSON
object (``docs/poison-pill.md``): where it came from (topic, partition, offset), a
short ``reason`` code (also a metric label), a human ``error`` that names fields and
rules, never values, and what is needed to find the original again: its size, its
SHA-256 and its first ``VALUE_PREFIX_BYTES`` (base64). A dead letter is bounded
(``MAX_DEAD_LETTER_BYTES``) whatever the record was, so it always fits the topic:
an oversized record can never make its own dead letter unpublishable.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

VALUE_PREFIX_BYTES = 64 * 1024  # of the original value, kept in the dead letter (87 KB of base64)
KEY_PREFIX_BYTES = 1024  # of the original key
ERROR_CHARS = 1000  # of the human error text
# What one dead letter can take at most: the prefixes in base64, the error, the coordinates.
MAX_DEAD_LETTER_BYTES = 4 * (VALUE_PREFIX_BYTES + KEY_PREFIX_BYTES) // 3 + 6 * ERROR_CHARS + 2048


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the worker received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None


def raw_records(batches: Mapping[Any, Iterable[Any]]) -> list[RawRecord]:
    """The records of an aiokafka ``getmany`` answer (partition -> messages), in its order."""
    return [
        RawRecord(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp)
        for messages in batches.values()
        for m in messages
    ]


def dead_letter_key(record: RawRecord) -> bytes | None:
    """The Kafka key of ``record``'s dead letter: its own key (so the dead letters of one
    customer share a partition), cut to ``KEY_PREFIX_BYTES`` so that a huge key cannot make
    the dead letter too big to publish either."""
    key = record.key
    return key if key is None or len(key) <= KEY_PREFIX_BYTES else key[:KEY_PREFIX_BYTES]


def _b64(data: bytes | None, limit: int) -> str | None:
    return base64.b64encode(data[:limit]).decode() if data is not None else None


def dead_letter(record: RawRecord, reason: str, error: str, at_ms: int) -> bytes:
    """The DeadLetter JSON of ``events.md`` for ``record``: ``key_b64`` / ``value_b64``
    hold at most the first ``KEY_PREFIX_BYTES`` / ``VALUE_PREFIX_BYTES`` of the original
    (``*_truncated`` says whether that is all of it), ``value_bytes`` and ``value_sha256``
    identify the whole original value."""
    key, value = record.key, record.value
    return orjson.dumps(
        {
            "topic": record.topic[:256],
            "partition": record.partition,
            "offset": record.offset,
            "reason": reason[:64],
            "error": error[:ERROR_CHARS],
            "key_b64": _b64(key, KEY_PREFIX_BYTES),
            "key_bytes": len(key) if key is not None else None,
            "key_truncated": key is not None and len(key) > KEY_PREFIX_BYTES,
            "value_b64": _b64(value, VALUE_PREFIX_BYTES),
            "value_bytes": len(value) if value is not None else None,
            "value_sha256": hashlib.sha256(value).hexdigest() if value is not None else None,
            "value_truncated": value is not None and len(value) > VALUE_PREFIX_BYTES,
            "timestamp_ms": record.timestamp_ms,
            "dead_lettered_at_ms": at_ms,
        }
    )

"""Train the zstd dictionary that state blobs are compressed with (a maintainer's tool).

State blobs are small JSON documents of one shape (``streams.storage.codec``): the same
keys, the same kinds of numbers, dates and ids. Compressed one by one, each
frame relearns that shape; a dictionary trained on states gives it up front, so
blobs come out smaller and compress faster than without one (measured on held-out
Berka customers, as ``train`` reports: docs/performance.md, "State blob size and compression").

A dictionary that has written blobs must stay readable for as long as such
blobs exist: ``streams/storage/zdict/`` keeps every shipped one (``state-<id>.zdict``,
the id zstd writes into each frame), and ``streams.storage.codec.WRITE_DICTIONARY``
names the one new blobs are written with. To ship a new one:

    fundflow train-dictionary

adds ``streams/storage/zdict/state-<id>.zdict``; point ``WRITE_DICTIONARY`` at it and
keep the old files. A customer's recent findings are kept the same way, with a dictionary
trained on the findings the rules raise over Berka (``--findings``: ``finding-<id>.zdict``,
``streams.storage.codec.FINDING_DICTIONARY``).
"""

from __future__ import annotations

import statistics
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from rules.state import CustomerState
from streams.deadletter import RawRecord
from streams.decode import decode
from streams.rulestep import build_step
from streams.settings import Settings
from streams.storage.codec import FINDING_LEVEL, ZSTD_LEVEL, encode_state
from streams.tools.berka import berka_lines
from streams.tools.replay import route

DICTIONARY_BYTES = 16 * 1024  # smaller compresses slower, larger too (cache): docs/performance.md
FINDING_DICTIONARY_BYTES = 8 * 1024  # (Berka's ~300 findings: 8 KB came out smallest held out, docs/scale.md)
SAMPLE_EVERY = 7  # a customer's state is sampled after every 7th applied event
BASE_MS = 1_764_000_000_000


def _stepped(lines: Iterable[bytes], settings: Settings) -> Iterator[tuple[CustomerState, list[bytes]]]:
    """Each event of ``lines`` through the rules, as a worker with them on steps it (with its
    partition offsets): the customer's state after it, and the findings it raised."""
    step = build_step(settings)
    states: dict[str, CustomerState] = {}
    for i, line in enumerate(lines):
        topic, key, _ = route(line)
        record = RawRecord(topic, zlib.crc32(key or b"") % 4, i, key, line, BASE_MS + i)
        event = decode(record, settings.max_event_bytes)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        _, findings = step(state, event)
        state.offsets[f"{topic}:{record.partition}"] = [i, BASE_MS + i]
        yield state, findings


def sample_states(lines: Iterable[bytes], settings: Settings) -> Iterator[tuple[str, bytes]]:
    """(customer, JSON state blob) at points of each customer's history, as a worker with
    the rules on writes them (with its partition offsets)."""
    for state, _ in _stepped(lines, settings):
        if state.applied_total % SAMPLE_EVERY == 3:
            yield state.customer_id, bytes(encode_state(state))


def sample_findings(lines: Iterable[bytes], settings: Settings) -> Iterator[tuple[str, bytes]]:
    """(customer, outbox entry) of every finding the rules raise over ``lines``."""
    for state, findings in _stepped(lines, settings):
        for entry in findings:
            yield state.customer_id, entry


def train(
    samples: list[tuple[str, bytes]], size: int = DICTIONARY_BYTES, level: int = ZSTD_LEVEL
) -> tuple[zstandard.ZstdCompressionDict, dict[str, float]]:
    """A dictionary from half the customers, measured on the other half."""
    trained: list[bytes | bytearray | memoryview] = [b for cid, b in samples if zlib.crc32(cid.encode()) % 2 == 0]
    held_out = [blob for cid, blob in samples if zlib.crc32(cid.encode()) % 2 == 1]
    dictionary = zstandard.train_dictionary(size, trained, level=level)
    plain = zstandard.ZstdCompressor(level=level)
    with_dictionary = zstandard.ZstdCompressor(level=level, dict_data=dictionary)
    report = {
        "samples_trained": len(trained),
        "samples_held_out": len(held_out),
        "held_out_json_mean": statistics.mean(map(len, held_out)),
        "held_out_plain_mean": statistics.mean(len(plain.compress(b)) for b in held_out),
        "held_out_dictionary_mean": statistics.mean(len(with_dictionary.compress(b)) for b in held_out),
    }
    return dictionary, report


def run_train_command(berka: Path | None, out: Path | None, findings: bool = False) -> int:
    """``fundflow train-dictionary``: train on the Berka states (``findings``: on the
    findings), write ``state-<id>.zdict`` (``finding-<id>.zdict``) into ``out`` (default:
    the shipped dictionaries' folder)."""
    settings = Settings()
    lines = berka_lines(berka, settings.zone)
    if findings:
        kind = "finding"
        dictionary, report = train(list(sample_findings(lines, settings)), FINDING_DICTIONARY_BYTES, FINDING_LEVEL)
    else:
        kind = "state"
        dictionary, report = train(list(sample_states(lines, settings)))
    out = Path(__file__).parents[1] / "storage" / "zdict" if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{kind}-{dictionary.dict_id()}.zdict"
    path.write_bytes(dictionary.as_bytes())
    print(f"{path}: {report}")
    return 0

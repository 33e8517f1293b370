"""Malformed records of every kind the monitor must dead-letter, never crash on.

``corrupt(good_lines, count, seed)`` returns bad records derived from good ones
(so they look like the real thing), in fixed categories, deterministically.
"""

from __future__ import annotations

import json
import random

CATEGORIES = (
    "not_json",
    "invalid_utf8",
    "deep_json",
    "huge_field",
    "oversize_record",
    "wrong_type_amount",
    "wrong_type_ts",
    "negative_amount",
    "nan_amount",
    "infinite_amount",
    "three_decimals",
    "ts_without_offset",
    "unknown_direction",
    "missing_field",
    "top_level_array",
    "null",
    "conflicting_duplicate",
    # issue 20: what Python's Decimal() or a JSON parser would have let through, and the
    # edges of the calendar the state step cannot convert
    "underscore_amount",
    "fullwidth_amount",
    "spaced_amount",
    "exponent_amount",
    "repeated_key",
    "control_in_id",
    "year_one",
    "year_9999",
    "far_future",
)


def _mutate(obj: dict[str, object], category: str, rng: random.Random, n: int) -> bytes:
    bad = dict(obj)
    bad["txn_id"] = f"bad-{n}-{bad['txn_id']}"
    if category == "huge_field":
        bad["account_id"] = "A" * 5000
    elif category == "oversize_record":
        bad["note"] = "x" * 70_000
    elif category == "wrong_type_amount":
        bad["amount"] = rng.choice([[1, 2], {"v": 1}, True, None])
    elif category == "wrong_type_ts":
        bad["ts"] = rng.choice([1700000000, None, ["2024-01-01"], "yesterday"])
    elif category == "negative_amount":
        bad["amount"] = rng.choice(["-10.00", -3, "0", 0])
    elif category == "nan_amount":
        return json.dumps(bad).replace(json.dumps(bad["amount"]), rng.choice(['"NaN"', "NaN", '"nan"']), 1).encode()
    elif category == "infinite_amount":
        return (
            json.dumps(bad)
            .replace(json.dumps(bad["amount"]), rng.choice(['"Infinity"', "1e400", "-Infinity"]), 1)
            .encode()
        )
    elif category == "three_decimals":
        bad["amount"] = "12.345"
    elif category == "ts_without_offset":
        bad["ts"] = str(bad["ts"])[:19]
    elif category == "unknown_direction":
        bad["direction"] = rng.choice(["sideways", "", "CREDIT ", None])
    elif category == "missing_field":
        del bad[rng.choice(["txn_id", "customer_id", "account_id", "ts", "direction", "amount"])]
    elif category == "underscore_amount":
        bad["amount"] = "1_000"
    elif category == "fullwidth_amount":
        bad["amount"] = "１００"
    elif category == "spaced_amount":
        bad["amount"] = rng.choice([" 100", "100 ", " 100 "])
    elif category == "exponent_amount":
        bad["amount"] = rng.choice(["1e2", "1E2"])
    elif category == "repeated_key":
        text = json.dumps(bad, separators=(",", ":"))
        return (text[:-1] + ',"amount":"900000.00"}').encode()
    elif category == "control_in_id":
        field = rng.choice(["txn_id", "account_id"])
        bad[field] = str(bad[field]) + rng.choice(["\n", "\x00", "\x1b"])
    elif category == "year_one":
        bad["ts"] = "0001-01-01T00:00:00+08:00"
    elif category == "year_9999":
        bad["ts"] = "9999-12-31T16:00:00Z"
    elif category == "far_future":
        bad["ts"] = "2999-01-01T00:00:00+08:00"
    elif category == "conflicting_duplicate":
        bad = dict(obj)  # the same txn_id as an applied event, with different content
        bad["amount"] = f"{float(str(obj['amount'])) + 1:.2f}"
    return json.dumps(bad).encode()


def corrupt(good: list[bytes], count: int, seed: int = 3) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    result: list[tuple[str, bytes]] = []
    conflicted: set[str] = set()
    for n in range(count):
        category = CATEGORIES[n % len(CATEGORIES)]
        source = json.loads(rng.choice(good))
        if category == "not_json":
            raw = rng.choice([b"hello", b"{", b'{"txn_id": }', b"", b"   ", b"\x00\x01"])
        elif category == "invalid_utf8":
            raw = json.dumps(source).encode().replace(b'"', b'"\xff', 1)
        elif category == "deep_json":
            depth = rng.choice([600, 5000])
            raw = b'{"a":' * depth + b"1" + b"}" * depth
        elif category == "top_level_array":
            raw = json.dumps([source]).encode()
        elif category == "null":
            raw = b"null"
        elif category == "conflicting_duplicate":
            if source["txn_id"] in conflicted:
                continue
            conflicted.add(str(source["txn_id"]))
            raw = _mutate(source, category, rng, n)
        else:
            raw = _mutate(source, category, rng, n)
        result.append((category, raw))
    return result

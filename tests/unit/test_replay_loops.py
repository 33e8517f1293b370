"""The demo's endless replay: every loop is a new generation of the data's customers (fresh
ids, the calendar moved on by whole years, each account opened again from the data's own
balances), so loop 10 finds what loop 1 finds and keeps its 归集率 distribution.

The character check runs the pure step (``rules.state.apply_event`` + ``rules.engine.judge``,
what the worker runs per event) over loop 1 and loop 10 of the real Berka data. Loop 10 alone
gives the same findings as loop 10 after loops 1-9: findings are a function of the
customer's history only (docs/findings.md) and no generation shares a customer with another
(the first test holds that).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from decimal import Decimal
from zoneinfo import ZoneInfo

import orjson
import pytest

from rules.config import RulesConfig
from rules.engine import judge
from rules.events import LoanEvent, TransactionEvent
from rules.metrics import evaluate
from rules.state import CustomerState, Outcome, StateConfig, apply_event, to_us
from streams.tools.berka import berka_lines
from streams.tools.replay import calendar_years, endless, generation, replay, shift_years

ZONE = ZoneInfo("Asia/Shanghai")
CONFIG = StateConfig(zone=ZONE)
LOOPS_APART = 9  # loop 10 against loop 1
BANDS = 10  # 归集率 in bands of 10 points, as the 看板 shows it


def some_customers(lines: list[bytes], count: int) -> list[bytes]:
    """The histories of the first ``count`` customers and of the first ``count`` with a loan."""
    keep: set[str] = set()
    borrowers: set[str] = set()
    for line in lines:
        obj = orjson.loads(line)
        if len(keep) < count:
            keep.add(obj["customer_id"])
        if "loan_id" in obj and len(borrowers) < count:
            borrowers.add(obj["customer_id"])
    return [line for line in lines if orjson.loads(line)["customer_id"] in keep | borrowers]


def event_of(line: bytes) -> TransactionEvent | LoanEvent:
    obj = orjson.loads(line)
    return LoanEvent.model_validate(obj) if "loan_id" in obj else TransactionEvent.model_validate(obj)


def test_every_loop_is_a_new_generation_that_opens_its_accounts_from_the_datas_balances() -> None:
    lines = some_customers(berka_lines(None, ZONE), 20)
    assert any(b'"loan_id"' in line for line in lines)
    years = calendar_years(lines)
    assert years == 2  # the shipped data: 1993-01-01 to 1994-03-31
    loops = 3
    replayed = list(itertools.islice(endless(lines), loops * len(lines)))
    assert replayed[: len(lines)] == lines  # the first loop is the data as it is
    customers: list[set[str]] = [set() for _ in range(loops)]
    txn_ids: set[str] = set()
    for n, line in enumerate(replayed):
        loop, original = divmod(n, len(lines))
        moved, source = orjson.loads(line), orjson.loads(lines[original])
        suffix = f"~{loop}" if loop else ""
        for field in ("customer_id", "account_id", "txn_id", "loan_id"):
            if field in source:
                assert moved[field] == source[field] + suffix
        # the same month, day and local time, whole calendar years on; amounts and balances as they are
        assert moved["ts"] == str(int(source["ts"][:4]) + loop * years) + source["ts"][4:]
        if "next_due" in source:
            assert moved["next_due"] == str(int(source["next_due"][:4]) + loop * years) + source["next_due"][4:]
        renamed = ("customer_id", "account_id", "txn_id", "loan_id", "ts", "next_due")
        assert {k: v for k, v in moved.items() if k not in renamed} == {
            k: v for k, v in source.items() if k not in renamed
        }
        customers[loop].add(moved["customer_id"])
        if "txn_id" in moved:
            assert moved["txn_id"] not in txn_ids
            txn_ids.add(moved["txn_id"])
        if loop:  # a loop starts after the previous one ended
            assert moved["ts"] > orjson.loads(replayed[loop * len(lines) - 1])["ts"]
    assert all(not a & b for a, b in itertools.combinations(customers, 2))  # no customer in two loops
    # every generation's accounts open from zero, as the data's do: the balance and the ledger
    # differ by exactly what they differ by in the data (its own rounding), at every event
    states: dict[str, CustomerState] = {}
    drift: list[Decimal | None] = []
    for n, line in enumerate(replayed):
        event = event_of(line)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        assert apply_event(state, event, CONFIG) is Outcome.APPLIED
        gap = None
        if isinstance(event, TransactionEvent) and event.balance_after is not None:
            gap = state.balance - event.balance_after
        if n < len(lines):
            drift.append(gap)
        else:
            assert gap == drift[n % len(lines)]


def test_calendar_years_keep_a_29_february_on_a_leap_year() -> None:
    def line(ts: str, **extra: str) -> bytes:
        return orjson.dumps({"txn_id": "1", "customer_id": "c", "ts": ts, **extra})

    assert calendar_years([line("1995-12-31T09:00:00+08:00"), line("1997-01-02T09:00:00+08:00")]) == 3
    assert calendar_years([line("1996-02-29T09:00:00+08:00")]) == 4
    assert calendar_years([line("1995-06-01T08:00:00+08:00", next_due="1996-02-29")]) == 4
    assert shift_years("1996-02-29", 4) == "2000-02-29"
    assert shift_years("1993-01-01T09:00:00+08:00", 2) == "1995-01-01T09:00:00+08:00"
    assert shift_years("not a date", 2) == "not a date"
    moved = list(generation([b"not json", line("1995-01-01T09:00:00+08:00", reverses="9")], 1, 3))
    assert moved[0] == b"not json"  # the worker dead-letters it as it would the original
    assert orjson.loads(moved[1])["reverses"] == "9~1"  # a reversal names its own generation's txn


def findings_and_bands(lines: list[bytes], rules: RulesConfig) -> tuple[Counter[str], list[int]]:
    """The findings per rule of the pure step over ``lines`` (one loop, in order), and how many
    customers sit in each 归集率 band at the loop's end (customers with no 90-day inflow left out)."""
    states: dict[str, CustomerState] = {}
    by_rule: Counter[str] = Counter()
    last = 0
    for line in lines:
        event = event_of(line)
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        before = state.balance
        assert apply_event(state, event, CONFIG) is Outcome.APPLIED
        by_rule.update(finding.rule for finding in judge(state, event, before, rules, CONFIG).findings)
        last = max(last, to_us(event.ts))
    bands = [0] * BANDS
    for state in states.values():
        rate = evaluate(state, last, CONFIG).collection_rate_90d
        if rate is not None:
            bands[min(int(rate * BANDS), BANDS - 1)] += 1
    return by_rule, bands


def total_variation(a: list[int], b: list[int]) -> float:
    """Half the L1 distance between two histograms as shares: 0 for the same shape, 1 for
    nothing in common; the share of customers that would have to change band."""
    return sum(abs(x / sum(a) - y / sum(b)) for x, y in zip(a, b, strict=True)) / 2


def test_loop_ten_finds_what_loop_one_finds_and_keeps_its_collection_rates() -> None:
    lines = berka_lines(None, ZONE)
    rules = RulesConfig()
    years = calendar_years(lines)
    first_rules, first_bands = findings_and_bands(lines, rules)
    tenth_rules, tenth_bands = findings_and_bands(list(generation(lines, LOOPS_APART, years)), rules)
    first_total, tenth_total = sum(first_rules.values()), sum(tenth_rules.values())
    shares: dict[str, tuple[float, float]] = defaultdict(lambda: (0.0, 0.0))
    for rule in first_rules | tenth_rules:
        shares[rule] = (first_rules[rule] / first_total, tenth_rules[rule] / tenth_total)
    # every rule that fires often enough for a share to mean anything (10 findings) in either loop
    judged = {rule: pair for rule, pair in shares.items() if max(first_rules[rule], tenth_rules[rule]) >= 10}
    assert {"balance_drawdown", "collection_opportunity", "fast_in_fast_out", "net_outflow_streak"} <= set(judged)
    for rule, (first, tenth) in judged.items():
        assert first / 2 <= tenth <= first * 2, (rule, first_rules, tenth_rules)
    # the 归集率 distribution keeps its shape: at most 10% of customers in another band
    assert total_variation(first_bands, tenth_bands) <= 0.10, (first_bands, tenth_bands)
    assert first_bands[-1] < 0.75 * sum(first_bands)  # loop 1 is not already all in the top band


class _Producer:
    """What ``replay`` needs of a Kafka producer: sends that are acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flush(self) -> None:
        return None


def test_with_a_speedup_the_seam_between_generations_passes_at_once() -> None:
    """``--speedup`` paces event time, but the months between one generation's last day and
    the next one's first would be silence: the demo skips a gap longer than a month."""

    def line(txn: str, ts: str) -> bytes:
        return orjson.dumps({"txn_id": txn, "customer_id": "c", "ts": ts, "amount": "1.00", "direction": "credit"})

    lines = [line("1", "1993-01-01T09:00:00+08:00"), line("2", "1993-01-02T09:00:00+08:00")]
    two = list(itertools.islice(endless(lines), 4))  # the second generation a year later (1994-01-01)
    speedup = 86_400 * 365 / 2  # a year in 2 s, a day in ~5 ms

    async def run(skip: float | None) -> float:
        producer = _Producer()
        started = time.monotonic()
        await replay(two, producer, speedup=speedup, skip_gaps_over=skip)
        assert producer.sent == two
        return time.monotonic() - started

    assert asyncio.run(run(31 * 86_400.0)) < 1.0  # two days of event time: ~11 ms
    with pytest.raises(TimeoutError):  # without: 2 s of silence for the year between
        asyncio.run(asyncio.wait_for(run(None), timeout=1.0))

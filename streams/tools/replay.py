"""Produce a JSONL file of events to the input topics, as core banking would.

Lines are sent byte for byte (a malformed line is sent as it is, so the
worker dead-letters it, exactly like bad input from a real producer). A line
with a ``loan_id`` goes to the loans topic, anything else to transactions;
the key is the ``customer_id`` when the line has one.

Pacing: ``rate`` caps events per second; ``speedup`` replays event time
``speedup`` times faster than real time (one Berka day in 86400/X seconds).
``fresh_ids`` (loops for bench and soak) suffixes txn_ids and shifts event
time per loop, so a second loop is new traffic instead of duplicates;
``endless`` (the demo) loops for ever, each loop a new generation of the same
customers (``generation``: fresh customer ids, the calendar moved on by whole
years, every account opened again from the data's own balances), so loop 10
looks like loop 1 (docs/demo.md, "Loops that keep the data's character");
``population`` makes many customers of the data for the soak.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.clients import start_producer
from streams.errors import ConfigError
from streams.settings import Settings
from streams.tools.berka import berka_lines
from streams.tools.progress import Progress
from streams.topics import LOANS, TRANSACTIONS

Line = bytes

# Looped synthetic loads (bench, soak) move event time a Berka span (~6 years) ahead per
# loop, past the wall clock after a few loops: their workers accept event time this far
# ahead of the records (FUNDFLOW_EVENT_TIME_MAX_SKEW_SECONDS; the default is one day).
SYNTHETIC_SKEW_SECONDS = 1000 * 366 * 86_400.0


@dataclass(slots=True)
class ReplayStats:
    sent: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    max_ts: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def read_lines(path: Path) -> Iterator[Line]:
    with path.open("rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def route(line: Line) -> tuple[str, bytes | None, dict[str, Any] | None]:
    """(topic, key, parsed object or None) for one line."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return TRANSACTIONS, None, None
    if not isinstance(obj, dict):
        return TRANSACTIONS, None, None
    topic = LOANS if "loan_id" in obj else TRANSACTIONS
    customer = obj.get("customer_id")
    key = customer.encode() if isinstance(customer, str) and customer else None
    return topic, key, obj


def with_fresh_ids(
    lines: Iterable[Line],
    loop: int,
    shift_days: int,
    fresh_customers: bool = False,
    ledger_shift: dict[str, Decimal] | None = None,
) -> Iterator[Line]:
    """The same events as new traffic: txn_id/loan_id suffixed, ts moved forward; with
    ``fresh_customers`` the customers are new too (``C~loop``): more customers, not
    longer histories (the benchmark's throughput stages). ``ledger_shift`` (an account's
    net flow over ``lines``) moves ``balance_after`` on by ``loop`` times it, so a loop
    continues the ledger where the previous one left it."""
    if loop == 0:
        yield from lines
        return
    shift = dt.timedelta(days=shift_days * loop)
    for line in lines:
        _, _, obj = route(line)
        if obj is None:
            yield line
            continue
        id_fields = (
            ("txn_id", "loan_id", "customer_id", "payer_customer_id") if fresh_customers else ("txn_id", "loan_id")
        )
        for id_field in id_fields:
            if isinstance(obj.get(id_field), str):
                obj[id_field] = f"{obj[id_field]}~{loop}"
        if isinstance(obj.get("ts"), str):
            with contextlib.suppress(ValueError):
                obj["ts"] = (dt.datetime.fromisoformat(obj["ts"]) + shift).isoformat()
        if isinstance(obj.get("next_due"), str):  # a loan's instalment moves with its loop
            with contextlib.suppress(ValueError):
                obj["next_due"] = (dt.date.fromisoformat(obj["next_due"]) + shift).isoformat()
        if ledger_shift and isinstance(obj.get("balance_after"), str):
            with contextlib.suppress(InvalidOperation):
                moved = Decimal(obj["balance_after"]) + loop * ledger_shift.get(str(obj.get("account_id")), Decimal(0))
                obj["balance_after"] = str(moved)
        yield orjson.dumps(obj)


def population(lines: Iterable[Line], copies: int) -> Iterator[Line]:
    """Each line ``copies`` times, copy ``k`` a customer of its own (``population_id``: every id
    in ``GENERATION_ID_FIELDS`` suffixed ``~c<k>``, copy 0 the line as it is), in the data's
    order: many customers with the data's histories at the data's times (the soak)."""
    for line in lines:
        yield line
        if copies < 2:
            continue
        _, _, obj = route(line)
        if obj is None:
            continue  # a bad line once is enough
        for copy in range(1, copies):
            renamed = dict(obj)
            for id_field in GENERATION_ID_FIELDS:
                if isinstance(obj.get(id_field), str):
                    renamed[id_field] = population_id(obj[id_field], copy)
            yield orjson.dumps(renamed)


def population_id(name: str, copy: int) -> str:
    """What the id ``name`` is called in copy ``copy`` of ``population``."""
    return f"{name}~c{copy}" if copy else name


def net_flows(lines: Iterable[Line]) -> dict[str, Decimal]:
    """Each account's credits minus debits over ``lines`` (TransactionEvents only)."""
    net: dict[str, Decimal] = {}
    for line in lines:
        _, _, obj = route(line)
        if obj is None or "loan_id" in obj or not isinstance(obj.get("account_id"), str):
            continue
        try:
            amount = Decimal(str(obj.get("amount")))
        except InvalidOperation:
            continue
        account = obj["account_id"]
        net[account] = net.get(account, Decimal(0)) + (amount if obj.get("direction") == "credit" else -amount)
    return net


def endless(lines: list[Line]) -> Iterator[Line]:
    """``lines`` again and again (the demo): loop ``n`` is ``generation(lines, n)``, new
    customers with the data's own histories, ``calendar_years(lines)`` years after the
    previous loop's; loop 0 is the data as it is."""
    years = calendar_years(lines)
    for loop in itertools.count():
        yield from generation(lines, loop, years)


# The fields that name a customer, an account or a transaction: a generation renames all of
# them alike, so own-account transfers, reversals and loans keep pointing at their own.
GENERATION_ID_FIELDS = (
    "txn_id",
    "loan_id",
    "customer_id",
    "account_id",
    "counterparty_customer_id",
    "payer_customer_id",
    "reverses",
)


def generation(lines: Iterable[Line], loop: int, years: int) -> Iterator[Line]:
    """Loop ``loop`` of ``lines`` as a new generation of customers: every id suffixed
    ``~loop`` (``GENERATION_ID_FIELDS``), ``ts`` and ``next_due`` moved on ``loop * years``
    calendar years (the same month, day and local time, so month ends, pay days and
    instalments fall where they fell), amounts and ``balance_after`` as they are: each
    account opens again from the data's own first balance, so loop ``n`` has loop 0's
    character; the earlier generations simply go quiet, as customers who left.
    A line that is not a JSON object is passed on as it is."""
    if loop == 0:
        yield from lines
        return
    moved = years * loop
    for line in lines:
        _, _, obj = route(line)
        if obj is None:
            yield line
            continue
        for id_field in GENERATION_ID_FIELDS:
            if isinstance(obj.get(id_field), str):
                obj[id_field] = f"{obj[id_field]}~{loop}"
        for time_field in ("ts", "next_due"):
            if isinstance(obj.get(time_field), str):
                obj[time_field] = shift_years(obj[time_field], moved)
        yield orjson.dumps(obj)


def shift_years(text: str, years: int) -> str:
    """An ISO date or date-time (``YYYY-...``) ``years`` calendar years later; as it is when it
    is not one (the worker dead-letters it as it would the original)."""
    if len(text) < 10 or not text[:4].isdigit() or text[4] != "-":
        return text
    year = int(text[:4]) + years
    if text[5:10] == "02-29" and not calendar.isleap(year):
        return text  # calendar_years keeps a 29 February on a leap year: only a bad date gets here
    return f"{year:04d}{text[4:]}"


def calendar_years(lines: Iterable[Line]) -> int:
    """How many calendar years a generation moves event time: the years the data touches, so a
    loop starts after the previous one ended; a multiple of 4 when the data holds a 29 February
    (it stays one)."""
    years: set[int] = set()
    leap_day = False  # in ts or in a loan's next_due
    for line in lines:
        _, _, obj = route(line)
        for time_field in ("ts", "next_due"):
            stamp = obj.get(time_field) if obj is not None else None
            if isinstance(stamp, str) and len(stamp) >= 10 and stamp[:4].isdigit():
                if time_field == "ts":
                    years.add(int(stamp[:4]))
                leap_day = leap_day or stamp[5:10] == "02-29"
    span = max(years) - min(years) + 1 if years else 1
    return -(-span // 4) * 4 if leap_day else span


def loop_shift_days(lines: Iterable[Line], margin_days: int = 130) -> int:
    """How far each loop must move event time so that it follows the previous loop
    without overlap: the data's span plus more than the dedup horizon, so a loop is
    new traffic for every customer (not late events, not duplicates)."""
    times = [t for t in (event_time(route(line)[2]) for line in lines) if t is not None]
    if not times:
        return margin_days
    return int((max(times) - min(times)) // 86_400) + 1 + margin_days


def event_time(obj: dict[str, Any] | None) -> float | None:
    if obj is None or not isinstance(obj.get("ts"), str):
        return None
    try:
        return dt.datetime.fromisoformat(obj["ts"]).timestamp()
    except ValueError:
        return None


async def replay(
    lines: Iterable[Line],
    producer: AIOKafkaProducer,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    skip_gaps_over: float | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayStats:
    """Send ``lines``, paced by ``rate`` and ``speedup``; with ``speedup``, a stretch of event
    time longer than ``skip_gaps_over`` seconds with no event (between two generations of
    ``endless``) passes at once instead of in silence."""
    stats = ReplayStats()
    started = clock()
    first_event_time: float | None = None
    pending: list[asyncio.Future[Any]] = []
    max_ts: float | None = None
    for line in lines:
        topic, key, obj = route(line)
        ts = event_time(obj)
        if speedup and ts is not None:
            first_event_time = ts if first_event_time is None else first_event_time
            if skip_gaps_over is not None and max_ts is not None and ts - max_ts > skip_gaps_over:
                first_event_time += ts - max_ts
            due = started + (ts - first_event_time) / speedup
            wait = due - clock()
            if wait > 0.001:
                await asyncio.sleep(wait)
        if ts is not None:
            max_ts = ts if max_ts is None or ts > max_ts else max_ts
        if rate:
            due = started + stats.sent / rate
            wait = due - clock()
            if wait > 0.001:
                await asyncio.sleep(wait)
        pending.append(await producer.send(topic, line, key=key))
        stats.sent += 1
        stats.by_topic[topic] = stats.by_topic.get(topic, 0) + 1
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
            if progress:
                progress(stats.sent)
    await asyncio.gather(*pending)
    await producer.flush()
    if progress:
        progress(stats.sent)
    stats.seconds = clock() - started
    if max_ts is not None:
        stats.max_ts = dt.datetime.fromtimestamp(max_ts, dt.UTC).isoformat()
    return stats


def source_lines(settings: Settings, file: Path | None, berka: Path | None) -> list[bytes]:
    """The lines of ``file``; with no file, the Berka data in ``berka`` (None: the shipped copy)."""
    if file is None:
        return berka_lines(berka, settings.zone)
    if not file.is_file():
        raise ConfigError(f"no such file: {file}")
    return [line for line in file.read_bytes().splitlines() if line.strip()]


async def run_replay(
    settings: Settings,
    bootstrap: str,
    file: Path | None,
    berka: Path | None,
    rate: float | None,
    speedup: float | None,
    loops: int,
) -> int:
    lines = source_lines(settings, file, berka)
    shift = loop_shift_days(lines) if loops > 1 else 0
    producer = await start_producer(settings, bootstrap)
    progress = Progress(len(lines) * loops, "replay")
    try:

        def all_loops() -> Iterator[bytes]:
            for loop in range(loops):
                yield from with_fresh_ids(lines, loop, shift_days=shift)

        stats = await replay(all_loops(), producer, rate=rate, speedup=speedup, progress=progress)
    finally:
        progress.close()
        await producer.stop()
    print(f"sent {stats.sent} events in {stats.seconds:.1f}s ({stats.rate:.0f}/s): {stats.by_topic}")
    return 0

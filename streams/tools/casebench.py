"""``make bench``'s case-list stage: how fast the analyst's desk lists cases among 100,000.

Issue 19 asks that "the case list answers in well under a second with 100,000 cases".
This stage fills a fresh key prefix of the bench's Redis with that many cases through
the case store's own code (``CaseStore.intake``, the Lua script the API's intake runs,
so the keys and every index are exactly what production writes; ``CaseStore.act`` for
the assignments and resolutions), then times the list with the filters an analyst
uses, twice: the store's query alone (``CaseStore.search``, what ``GET /cases`` runs)
and ``GET /cases`` through a real ``fundflow api`` process (query, render, JSON, HTTP).

What the cases look like: half the customers have an outflow-risk case and a
collection case (two per customer), a tenth of the outflow cases a second finding of
another rule (joined, not opened); openings spread over 30 days; one case in 20
assigned to one of five analysts, half of those resolved. A measurement, not a test:
nothing asserts a speed (``--smoke`` runs it on a few thousand cases so it cannot rot).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson

from cases.model import Action, Actor, Assign, Case, Transition
from cases.store import CaseFilter, CaseStore
from rules.config import Severity
from rules.engine import Finding
from streams.clients import connect
from streams.errors import ConfigError
from streams.local.orchestra import LocalRun
from streams.local.servers import die_with_parent, free_port
from streams.storage.keys import Keys
from streams.tools.measure import percentiles

PREFIX = "benchcases"
TOKEN = "bench-viewer-0123456789"
ANALYSTS = tuple(f"analyst{n}" for n in range(1, 6))
OUTFLOW_RULES = ("large_external_outflow", "fast_in_fast_out", "balance_drawdown", "net_outflow_streak", "churn_drift")
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high")
TIERS = ("I", "II", "III", "IV")
DAY_MS = 86_400_000
SPREAD_DAYS = 30
BATCH = 1000  # findings per intake call
PAGE = 100  # the API's default page


@dataclass(slots=True)
class Clock:
    """The store's clock: set while filling (openings spread over days), else real time."""

    at_ms: int | None = None

    def __call__(self) -> int:
        return self.at_ms if self.at_ms is not None else int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    wanted: CaseFilter
    http: str  # the same filter as GET /cases query parameters


def queries(customer: str) -> list[Query]:
    """The filters an analyst uses (issue 19's list, plus the usual pair status + rule)."""
    return [
        Query("no filter", CaseFilter(), ""),
        Query("status=open", CaseFilter(status="open"), "status=open"),
        Query(f"assignee={ANALYSTS[0]}", CaseFilter(assignee=ANALYSTS[0]), f"assignee={ANALYSTS[0]}"),
        Query("rule=net_outflow_streak", CaseFilter(rule="net_outflow_streak"), "rule=net_outflow_streak"),
        Query("min_age=7d (older than a week)", CaseFilter(min_age_ms=7 * DAY_MS), "min_age=7d"),
        Query(f"customer={customer}", CaseFilter(customer=customer), f"customer={customer}"),
        Query(
            "status=open&rule=net_outflow_streak",
            CaseFilter(status="open", rule="net_outflow_streak"),
            "status=open&rule=net_outflow_streak",
        ),
    ]


def findings(cases: int, zone: ZoneInfo) -> list[dict[str, Any]]:
    """Findings as the rules engine renders them that open ``cases`` cases (and join some)."""
    out: list[dict[str, Any]] = []
    ts_us = 1_700_000_000_000_000
    for n in range(cases // 2):
        customer = f"B{n:07d}"
        severity, tier = SEVERITIES[n % 3], TIERS[n % 4]
        rule = OUTFLOW_RULES[n % len(OUTFLOW_RULES)]
        made = [
            Finding("alert", rule, "outflow_risk", severity, customer, tier, ts_us, f"T{n}o", {}, rule),
            Finding("alert", "collection_opportunity", "collection", "medium", customer, tier, ts_us, f"T{n}c", {}, ""),
        ]
        if n % 10 == 0:  # a second outflow finding of another rule joins the open case
            other = OUTFLOW_RULES[(n + 1) % len(OUTFLOW_RULES)]
            made.append(Finding("alert", other, "outflow_risk", "high", customer, tier, ts_us, f"T{n}j", {}, other))
        out += [f.as_dict(zone) for f in made]
    return out


async def fill(store: CaseStore, clock: Clock, found: list[dict[str, Any]]) -> float:
    """Take ``found`` into cases, their openings spread over the last ``SPREAD_DAYS`` days; seconds taken."""
    batches = [found[i : i + BATCH] for i in range(0, len(found), BATCH)]
    now_ms = clock()
    started = time.perf_counter()
    for done, batch in enumerate(batches):
        clock.at_ms = now_ms - SPREAD_DAYS * DAY_MS + SPREAD_DAYS * DAY_MS * done // max(len(batches), 1)
        await store.intake(batch)
    clock.at_ms = None
    return time.perf_counter() - started


async def work(store: CaseStore, cases: int) -> int:
    """One case in 20 assigned by a supervisor to one of the analysts, half of those resolved."""
    lead = Actor("lead", "supervisor")
    chosen = list(range(1, cases + 1, 20))
    assigning: list[tuple[int, Actor, Action]] = [
        (case_id, lead, Assign(ANALYSTS[k % len(ANALYSTS)])) for k, case_id in enumerate(chosen)
    ]
    await _apply(store, assigning)
    outcomes = ("confirmed_outflow", "false_positive", "retained_after_contact")
    resolving: list[tuple[int, Actor, Action]] = []
    for k, case_id in enumerate(chosen[::2]):
        case = await store.get(case_id)
        outcome = outcomes[k % 3] if case is not None and case.category == "outflow_risk" else "funds_retained"
        resolving.append(
            (case_id, Actor(ANALYSTS[(2 * k) % len(ANALYSTS)], "analyst"), Transition("resolved", outcome))
        )
    await _apply(store, resolving)
    return len(assigning) + len(resolving)


async def _apply(store: CaseStore, actions: list[tuple[int, Actor, Action]], width: int = 32) -> None:
    """``CaseStore.act`` for each, ``width`` at a time (the clicks of many analysts)."""
    assignable = frozenset(ANALYSTS)
    for start in range(0, len(actions), width):
        await asyncio.gather(
            *(store.act(c, who, what, assignable, _id) for c, who, what in actions[start : start + width])
        )


def _id(case: Case) -> int:
    return case.id


async def _timed(samples: int, call: Callable[[], Awaitable[int]]) -> tuple[list[float], int]:
    await call()  # warm: connections, script cache
    times, total = [], 0
    for _ in range(samples):
        started = time.perf_counter()
        total = await call()
        times.append((time.perf_counter() - started) * 1000)
    return times, total


def _pcts(times: list[float]) -> dict[str, float]:
    found = percentiles(times)
    return {name: round(float(found[name] or 0), 1) for name in ("p50", "p95")}


async def measure(redis_url: str, api: str, cases: int, samples: int, zone: ZoneInfo) -> dict[str, Any]:
    client = connect(redis_url)
    clock = Clock()
    store = CaseStore(client, Keys(PREFIX), clock)
    try:
        if await client.exists(store.key("seq")):
            raise ConfigError(f"the case bench needs a fresh prefix: {PREFIX} already has cases")
        made = findings(cases, zone)
        fill_seconds = await fill(store, clock, made)
        started = time.perf_counter()
        actions = await work(store, cases)
        work_seconds = time.perf_counter() - started
        total = (await store.status_counts()).values()
        rows: dict[str, Any] = {}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for query in queries(made[len(made) // 2]["customer_id"]):

                async def by_store(q: Query = query) -> int:
                    return (await store.search(q.wanted, PAGE, 0))[1]

                async def by_http(q: Query = query) -> int:
                    async with http.get(f"{api}/cases?{q.http}") as response:
                        if response.status != 200:
                            raise ConfigError(f"GET /cases?{q.http}: {response.status} {await response.text()}")
                        return int(orjson.loads(await response.read())["total"])

                store_ms, matched = await _timed(samples, by_store)
                http_ms, served = await _timed(samples, by_http)
                if served != matched:
                    raise ConfigError(f"{query.name}: the API lists {served} cases, the store {matched}")
                rows[query.name] = {"matching": matched, "store_ms": _pcts(store_ms), "http_ms": _pcts(http_ms)}
    finally:
        await client.aclose()
    return {
        "cases": sum(total),
        "findings": len(made),
        "fill_seconds": round(fill_seconds, 1),
        "fill_findings_per_second": round(len(made) / fill_seconds),
        "actions": actions,
        "actions_seconds": round(work_seconds, 1),
        "page": PAGE,
        "samples": samples,
        "queries": rows,
    }


def start_api(run: LocalRun) -> tuple[subprocess.Popen[bytes], str]:
    """``fundflow api`` over the bench's Redis, reading the cases' prefix, with a viewer token."""
    port = free_port()
    tokens = orjson.dumps([{"token": TOKEN, "role": "viewer", "name": "bench"}]).decode()
    env = run.env(FUNDFLOW_KEY_PREFIX=PREFIX, FUNDFLOW_API_TOKENS=tokens)
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    run.workers.append(process)
    return process, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ConfigError(f"fundflow api exited with {process.returncode} before answering")
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise ConfigError(f"fundflow api did not answer on {url} within {timeout:.0f} s")


def case_list_speed(run: LocalRun, cases: int, samples: int) -> dict[str, Any]:
    """The stage: ``cases`` cases in a fresh prefix, the list timed per filter."""
    process, url = start_api(run)
    try:
        asyncio.run(wait_ready(url, process))
        return asyncio.run(measure(run.redis_url, url, cases, samples, run.settings.zone))
    finally:
        run.stop_worker(process)  # SIGTERM, then SIGKILL if it hangs (and it is in run.workers: closed with it)


def render(result: dict[str, Any]) -> list[str]:
    if not result:
        return []
    out = [
        f"case list ({result['cases']:,} cases from {result['findings']:,} findings, taken in "
        f"{result['fill_seconds']} s = {result['fill_findings_per_second']:,}/s through CaseStore.intake; "
        f"{result['actions']:,} assignments/resolutions in {result['actions_seconds']} s), "
        f"a page of {result['page']}, {result['samples']} samples per filter, ms:",
        f"  {'filter':<40} {'matching':>9} {'store p50':>10} {'p95':>7} {'GET /cases p50':>15} {'p95':>7}",
    ]
    for name, row in result["queries"].items():
        s, h = row["store_ms"], row["http_ms"]
        out.append(f"  {name:<40} {row['matching']:>9,} {s['p50']:>10} {s['p95']:>7} {h['p50']:>15} {h['p95']:>7}")
    out.append("   target: well under a second (issue 19)")
    return out

"""``fundflow demo`` (``make demo``): the whole product on one machine, live.

Starts the embedded broker and Redis (or uses the configured ones), a worker
process and the web console, and replays the real Berka transactions at
``--rate`` events/s (default ``DEMO_RATE``, a pace a person can follow) until
stopped: after the last record it starts again with a new generation of the
data's customers (``replay.endless``: fresh ids, the calendar moved on by whole
years, every account opened again from the data's own balances), so the bank
keeps the data's character for as long as it runs (docs/demo.md, "Loops that
keep the data's character"). It redraws once a second: throughput, consumer
lag, the loop's progress and a few customers' balance / 日均余额 / 归集率 as
they move (the current generation's). Ctrl-C (or SIGTERM) stops
the replay, the worker, the console and the servers, and leaves no process
behind (``streams.stopping``).

The pace also keeps the embedded broker healthy: Tansu's fetch cost grows with
the batches stored in a partition (see ``streams.tools.fetchcost`` and
docs/demo.md), and the producer's linger (``streams.clients``) keeps a few
hundred events/s to a few batches per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from rules import fmt
from streams.clients import connect, start_producer
from streams.errors import ConfigError
from streams.local.orchestra import LocalRun
from streams.local.servers import die_with_parent, free_port
from streams.rulestep import reader_store
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.storage.snapshot import customer_row
from streams.tools.berka import SHIPPED_BERKA, berka_lines
from streams.tools.replay import SYNTHETIC_SKEW_SECONDS, endless, replay, route

WATCHED = 4
# Generations a demo worker keeps in its state cache: the current one and the last few (a
# quiet generation gets no more events, so the cache lets it go instead of growing per loop).
GENERATIONS_CACHED = 3
# With --speedup, the months between a generation's last day and the next one's first (the
# calendar moves by whole years) pass at once: a month with no event at all is such a seam.
SEAM_SECONDS = 31 * 86_400.0
DEMO_RATE = 300.0  # events/s: readable on screen, and hours inside the embedded broker's fetch curve
# The replay's producer linger: at most one stored batch per partition per second, whatever
# the rate (up to ~3,000 events/s, where 256 KiB batches fill first). Tansu's fetch at the end
# of a partition slows with every stored batch and then stalls (docs/demo.md, "The embedded
# broker's fetch cost grows with the batches it stores"): at one a second the demo stays
# healthy for hours; the default 5 ms linger reached the stall within minutes (docs/demo.md,
# "What the demo does about it").
DEMO_LINGER_MS = 1000


def replay_settings(settings: Settings) -> Settings:
    """The demo's producer lingers ``DEMO_LINGER_MS`` unless FUNDFLOW_PRODUCER_LINGER_MS says otherwise."""
    if "producer_linger_ms" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"producer_linger_ms": DEMO_LINGER_MS})


def busiest_customers(lines: list[bytes], count: int) -> list[str]:
    tally: Counter[str] = Counter()
    for line in lines:
        _, key, _ = route(line)
        if key is not None:
            tally[key.decode()] += 1
    return [customer for customer, _ in tally.most_common(count)]


def worker_settings(settings: Settings, customers_per_loop: int = 0) -> Settings:
    """The demo's loops move event time on by whole years each time (two for the shipped
    data), so within minutes it runs past today: its worker accepts event time that far ahead
    of the records' Kafka timestamps, unless FUNDFLOW_EVENT_TIME_MAX_SKEW_SECONDS says
    otherwise. Its state cache holds ``GENERATIONS_CACHED`` loops' customers, unless
    FUNDFLOW_CACHE_CUSTOMERS says otherwise."""
    update: dict[str, object] = {}
    if "event_time_max_skew_seconds" not in settings.model_fields_set:
        update["event_time_max_skew_seconds"] = SYNTHETIC_SKEW_SECONDS
    if customers_per_loop and "cache_customers" not in settings.model_fields_set:
        update["cache_customers"] = GENERATIONS_CACHED * customers_per_loop
    return settings.model_copy(update=update) if update else settings


def in_loop(customer: str, loop: int) -> str:
    """The id ``customer`` of the data has in loop ``loop`` (0-based; ``replay.generation``)."""
    return f"{customer}~{loop}" if loop else customer


def run_demo(settings: Settings, berka_dir: Path | None, rate: float, speedup: float | None = None) -> int:
    print(f"converting the Berka data set in {berka_dir or SHIPPED_BERKA} ...", flush=True)
    lines = berka_lines(berka_dir, settings.zone)
    watched = busiest_customers(lines, WATCHED)
    settings = worker_settings(settings, len({key for _, key, _ in map(route, lines) if key is not None}))
    log_dir = settings.var_dir / "demo"
    print("starting the embedded broker and Redis ...", flush=True)
    with LocalRun(settings, log_dir) as run:
        print(f"  FUNDFLOW_KAFKA_BOOTSTRAP={run.bootstrap}")
        print(f"  FUNDFLOW_REDIS_URL={run.redis_url}")
        print(
            f"  logs: {log_dir}/   (in another shell, with those two variables: fundflow customer show {watched[0]})",
            flush=True,
        )
        run.start_worker()
        console = _start_console(run, log_dir)
        watching = write_prometheus_config(log_dir, run.web_ports[0], console)
        print(f"  web console: {console}   (live alerts, customer pages, tiers; no token in demo mode)", flush=True)
        print(
            f"  Prometheus with the shipped alerts: prometheus --config.file={watching} "
            f"--storage.tsdb.path={log_dir / 'prometheus'} --web.listen-address=127.0.0.1:9090",
            flush=True,
        )
        print(f"  看板: {console}console/board.html   case desk: {console}console/desk.html", flush=True)
        headline = f"FundFlow demo: open {console} in a browser; Ctrl-C stops everything"  # tops every screen
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: streams.stopping printed the line
            asyncio.run(_live(run, lines, rate, speedup, watched, headline))
    print("worker, console, broker and Redis: everything stopped.", flush=True)
    return 0


ALERT_RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def write_prometheus_config(log_dir: Path, worker_port: int, console: str) -> Path:
    """A Prometheus configuration for this demo (docs/operations.md): the shipped alert rules,
    the worker and the API under the job names the rules expect, labelled ``demo="true"``
    (the latency alert leaves those out: the demo lingers on purpose, docs/demo.md)."""
    api = console.removeprefix("http://").rstrip("/")
    path = log_dir / "prometheus.yml"
    text = f"""# written by fundflow demo for this run: its ports change every run
global:
  scrape_interval: 15s
  evaluation_interval: 15s
rule_files:
  - {ALERT_RULES}
scrape_configs:
  - job_name: fundflow-worker
    static_configs:
      - targets: ["127.0.0.1:{worker_port}"]
        labels: {{demo: "true"}}
  - job_name: fundflow-api
    static_configs:
      - targets: ["{api}"]
        labels: {{demo: "true"}}
"""
    path.write_text(text)
    return path


def _start_console(run: LocalRun, log_dir: Path) -> str:
    """``fundflow api --demo`` beside the worker; stopped with it (it is in ``run.workers``)."""

    port = 8080
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            port = free_port()
    with (log_dir / "api.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "api", "--demo", "--port", str(port)],
            env=run.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    run.workers.append(process)
    return f"http://127.0.0.1:{port}/"


async def _live(
    run: LocalRun, lines: list[bytes], rate: float, speedup: float | None, watched: list[str], headline: str
) -> None:
    settings = run.settings
    producer = await start_producer(replay_settings(settings), run.bootstrap)
    sent = [0]

    def counted() -> Iterator[bytes]:  # handed to the producer so far (replay's progress comes per 2,000)
        for line in endless(lines):
            sent[0] += 1
            yield line

    replay_task = asyncio.create_task(
        replay(counted(), producer, rate=rate, speedup=speedup, skip_gaps_over=SEAM_SECONDS)
    )
    client = connect(run.redis_url, settings.redis_cluster)
    store = reader_store(client, settings)
    view = _View(len(lines), headline, settings.currency)
    started = time.monotonic()
    last_applied, last_time = 0, started
    try:
        while True:
            await asyncio.sleep(1.0)
            run.check_workers()
            applied = int(await client.hget(store.keys.stats, "applied") or 0)
            now = time.monotonic()
            speed = (applied - last_applied) / (now - last_time)
            last_applied, last_time = applied, now
            lag = sum((await run.lag()).values())
            customers = []
            loop = applied // len(lines) if lines else 0
            for customer in watched:
                state = await store.read(in_loop(customer, loop))
                if state is None and loop:  # the new generation's first event is not in yet
                    state = await store.read(in_loop(customer, loop - 1))
                if state is not None and state.last_us is not None:
                    customers.append(customer_row(state, state.last_us, settings))
            alerts = await _latest_alert(client, store.keys)
            view.draw(applied, sent[0], speed, lag, customers, now - started, alerts)
            if replay_task.done():  # endless: it only ends by failing
                raise replay_task.exception() or ConfigError("the replay stopped")
    finally:
        replay_task.cancel()
        with contextlib.suppress(BaseException):
            await replay_task
        await producer.stop()
        await client.aclose()


async def _latest_alert(redis: Any, keys: Keys) -> str:
    count = int(await redis.xlen(keys.feed))
    if not count:
        return "alerts: none yet"
    newest = await redis.xrevrange(keys.feed, count=1)
    finding = orjson.loads(newest[0][1][b"v"])
    return (
        f"alerts: {count} so far; latest {finding.get('severity')} {finding.get('rule')} "
        f"for {finding.get('customer_id')} at {finding.get('ts')}"
    )


class _View:
    def __init__(self, total: int, headline: str, currency: str = "CNY") -> None:
        self.total = total  # records per loop
        self.headline = headline
        self.currency = currency
        self.tty = sys.stdout.isatty()
        self.drawn = 0
        self.ticks = 0

    def draw(
        self,
        applied: int,
        sent: int,
        speed: float,
        lag: int,
        customers: list[dict[str, object]],
        elapsed: float,
        alerts: str = "",
    ) -> None:
        self.ticks += 1
        loop, position = divmod(applied, self.total) if self.total else (0, 0)
        share = position / self.total if self.total else 0.0
        bar = "#" * int(share * 40)
        out = [
            self.headline,
            f"{elapsed:6.0f}s   sent {sent}   processed {applied}   {speed:7.0f} events/s   lag {lag}",
            f"loop {loop + 1} [{bar:<40}] {share:6.1%} of the {self.total} Berka events"
            + ("" if loop == 0 else f"  (a new generation: ids ~{loop}, the calendar moved on)"),
            f"{'customer':>10} {'余额 balance':>14} {'日均余额 MTD':>14} {'归集率 90d':>10} {'流入 30d':>12} "
            f"{'流出 30d':>12} segments",
        ]
        for row in customers:
            rate = row.get("collection_rate_90d")
            shown = fmt.percent(Decimal(str(rate)), 1) if rate is not None else "—"
            money = {name: fmt.amount(Decimal(str(row[name])), self.currency)
                     for name in ("balance", "daily_avg_balance_mtd", "inflow_30d", "outflow_30d")}  # fmt: skip
            out.append(
                f"{row['customer_id']:>10} {money['balance']:>14} {money['daily_avg_balance_mtd']:>14} "
                f"{shown:>10} {money['inflow_30d']:>12} {money['outflow_30d']:>12} "
                f"{','.join(row['segments']) or '—'}"  # type: ignore[arg-type]
            )
        if alerts:
            out.append(alerts)
        if self.tty:
            if self.drawn:
                sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
            sys.stdout.write("\n".join(out) + "\n")
            self.drawn = len(out)
        elif self.ticks % 5 == 1:
            sys.stdout.write("\n".join(out) + "\n\n")
        sys.stdout.flush()


def _json(obj: object) -> str:
    return orjson.dumps(obj).decode()

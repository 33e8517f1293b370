"""Bodies of the smaller CLI commands: replay, customer show, snapshot."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson

from streams.errors import ConfigError
from streams.settings import Settings


def kafka_producer(settings: Settings, bootstrap: str):  # type: ignore[no-untyped-def]
    from aiokafka import AIOKafkaProducer

    from streams.embedded import kafka_client_kwargs

    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=5,
        max_batch_size=256 * 1024,
        acks="all",
        **kafka_client_kwargs(settings),
    )


async def start_producer(settings: Settings, bootstrap: str):  # type: ignore[no-untyped-def]
    """A started producer, or ConfigError naming the broker that does not answer."""
    producer = kafka_producer(settings, bootstrap)
    try:
        await producer.start()
    except Exception as exc:
        await producer.stop()
        raise ConfigError(f"Kafka at {bootstrap} does not answer: {exc}") from None
    return producer


class Progress:
    """A one-line progress bar on stderr (a terminal) or periodic lines (a log)."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last_line = -1

    def __call__(self, done: int) -> None:
        if self.total:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = f"{self.label} [{bar:<30}] {done}/{self.total} ({share:.0%})"
        else:
            text = f"{self.label} {done}"
        if self.tty:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        elif done // 10000 != self._last_line:
            self._last_line = done // 10000
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def berka_lines(berka_dir: Path, settings: Settings) -> list[bytes]:
    import tempfile

    from streams.berka import convert_berka

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "berka.jsonl"
        convert_berka(berka_dir, out, settings.zone)
        return out.read_bytes().splitlines()


def source_lines(settings: Settings, file: Path | None, berka: Path | None) -> list[bytes]:
    if berka is not None:
        return berka_lines(berka, settings)
    assert file is not None
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
    from streams.replay import loop_shift_days, replay, with_fresh_ids

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


async def show_customer(settings: Settings, redis_url: str, customer_id: str, as_json: bool, as_of: str | None) -> int:
    from rules.contribution import tier_of
    from streams.keys import Keys
    from streams.snapshot import customer_row, parse_as_of
    from streams.store import StateStore, connect
    from streams.tiers import read_cuts

    client = connect(redis_url, settings.redis_cluster)
    try:
        store = StateStore(client, Keys(settings.key_prefix))
        state = await store.read(customer_id)
        if state is None:
            raise ConfigError(f"no customer {customer_id!r} in Redis")
        as_of_us = parse_as_of(as_of) if as_of else state.last_us or 0
        row = customer_row(state, as_of_us, settings)
        recent = await store.recent_findings(customer_id, 10)
        cuts, info = await read_cuts(client, store.keys)
        if cuts is not None:  # live tier: this customer's contribution against the live cut points
            row["tier"] = tier_of(Decimal(row["contribution"]), cuts)
            row["tier_cuts_refreshed_at"] = info.get("refreshed_at")
    finally:
        await client.aclose()
    if as_json:
        print(orjson.dumps(row, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(format_customer(row, recent))
    return 0


LABELS = [
    ("balance", "余额 balance"),
    ("ledger_balance", "核心账务余额 ledger balance"),
    ("ledger_drift", "对账差异 ledger drift"),
    ("daily_avg_balance_mtd", "日均余额 daily avg (MTD)"),
    ("avg_balance_30d", "30日均余额 avg balance 30d"),
    ("balance_volatility_30d", "波动率 volatility 30d"),
    ("inflow_24h", "流入 inflow 24h"),
    ("inflow_7d", "流入 inflow 7d"),
    ("inflow_30d", "流入 inflow 30d"),
    ("inflow_90d", "流入 inflow 90d"),
    ("outflow_24h", "流出 outflow 24h"),
    ("outflow_7d", "流出 outflow 7d"),
    ("outflow_30d", "流出 outflow 30d"),
    ("external_outflow_30d", "他行流出 external outflow 30d"),
    ("external_outflow_share_30d", "他行流出占比 external share 30d"),
    ("txn_count_30d", "交易笔数 txns 30d"),
    ("avg_txn_per_day_30d", "日均笔数 txns/day 30d"),
    ("loan_repaid_30d", "还款 loan repaid 30d"),
    ("external_banks_90d", "他行数 external banks 90d"),
    ("net_outflow_streak_days", "连续净流出天数 net outflow streak"),
    ("retention_days_avg_90d", "资金平均停留天数 retention days 90d"),
    ("collection_rate_90d", "资金归集率 collection rate 90d"),
]


CONTRIBUTION_LABELS = [
    ("deposit_contribution", "存款贡献 deposit"),
    ("loan_contribution", "贷款贡献 loan"),
    ("fee_contribution", "中间业务贡献 fee"),
    ("risk_cost", "风险成本 risk cost"),
    ("income_tax", "所得税 income tax"),
    ("capital_cost", "经济资本成本 capital cost"),
    ("loan_outstanding", "贷款余额 loan outstanding"),
]


def format_customer(row: dict[str, object], recent: list[bytes]) -> str:
    lines = [f"customer {row['customer_id']}   as of {row['as_of']}", ""]
    for field, label in LABELS:
        value = row.get(field)
        lines.append(f"  {label:<38} {'—' if value is None else value}")
    lines.append(f"  {'客户分群 segments':<38} {', '.join(row['segments']) or '—'}")  # type: ignore[arg-type]
    lines.append("")
    lines.append(f"  {'综合贡献度 contribution (yearly)':<38} {row['contribution']}")
    parts = row.get("contribution_parts") or {}
    for part, label in CONTRIBUTION_LABELS:
        if part in parts:  # type: ignore[operator]
            lines.append(f"    {label:<36} {parts[part]}")  # type: ignore[index]
    if "tier" in row:
        lines.append(f"  {'客户分层 tier (live)':<38} {row['tier']}")
    loans = row.get("loans") or []
    for loan in loans:  # type: ignore[attr-defined]
        lines.append(
            f"  loan {loan['loan_id']}: outstanding {loan['outstanding']}, instalment {loan['installment']} "
            f"due {loan['next_due']} ({loan['status']})"
        )
    if recent:
        lines.append("")
        lines.append("  recent alerts:")
        for entry in recent:
            try:
                finding = orjson.loads(entry.split(b"\n", 2)[2])
                lines.append(
                    f"    {finding.get('ts')} {finding.get('severity')} {finding.get('rule')}: {finding.get('message')}"
                )
            except (IndexError, orjson.JSONDecodeError):
                continue
    return "\n".join(lines)


async def run_snapshot(settings: Settings, redis_url: str, out: Path, as_of: str | None) -> int:
    from streams.keys import Keys
    from streams.snapshot import load_all, parse_as_of, rows, write_jsonl
    from streams.store import StateStore, connect

    client = connect(redis_url, settings.redis_cluster)
    try:
        states = await load_all(StateStore(client, Keys(settings.key_prefix)))
    finally:
        await client.aclose()
    count = write_jsonl(out, rows(states, parse_as_of(as_of) if as_of else None, settings))
    print(f"wrote {count} customers to {out}")
    return 0


async def show_tiers(settings: Settings, redis_url: str, refresh: bool, top: int, as_json: bool) -> int:
    from streams.keys import Keys
    from streams.snapshot import load_all, rates, state_config, thresholds
    from streams.store import StateStore, connect
    from streams.tiers import TierBook, distribution, rebuild

    client = connect(redis_url, settings.redis_cluster)
    keys = Keys(settings.key_prefix)
    try:
        if refresh:
            states = await load_all(StateStore(client, keys))
            book = TierBook(client, keys, state_config(settings), thresholds(settings), rates(settings))
            await rebuild(client, keys, states, book)
        result = await distribution(client, keys, top)
    finally:
        await client.aclose()
    if as_json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    cuts = result["cuts"]
    print(f"客户分层 tiers over {result['customers']} customers (refreshed {result['refreshed_at'] or 'never'})")
    if cuts:
        print(f"  cut points  Q1 {cuts['q1']}  Q2 {cuts['q2']}  Q3 {cuts['q3']}  (yearly contribution)")
    for tier, count in result["counts"].items():
        share = count / result["customers"] if result["customers"] else 0.0
        print(f"  {tier:>3}  {count:>7}  {share:6.1%}  {'#' * round(share * 40)}")
    if result["top"]:
        print(f"  top {len(result['top'])} by 综合贡献度 contribution:")
        for row in result["top"]:
            print(f"    {row['customer_id']:<16} {row['contribution']:>14}  {row['tier']}")
    return 0

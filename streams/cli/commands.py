"""Bodies of the read-side CLI commands: ``customer show``, ``snapshot``, ``tiers``, ``board``,
and the analysts' precision that ``evaluate-rules`` and ``tune`` show.

They read Redis only (never a worker): what can go wrong is a Redis that does not
answer (a one-line error from ``streams.cli.main``) or a customer with no state.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import orjson

from cases.model import RulePrecision
from cases.store import CaseStore
from rules import fmt
from rules.contribution import tier_of
from streams.api.models import shown
from streams.board import check, read_board
from streams.clients import connect
from streams.errors import ConfigError
from streams.rulestep import reader_store
from streams.settings import Settings, rates, safe_url, state_config, thresholds
from streams.storage.keys import Keys
from streams.storage.snapshot import customer_row, load_all, parse_as_of, rows, write_jsonl
from streams.storage.store import RECENT_ALERTS_KEPT
from streams.tiers import TierBook, distribution, read_cuts, rebuild


async def show_customer(settings: Settings, redis_url: str, customer_id: str, as_json: bool, as_of: str | None) -> int:
    client = connect(redis_url, settings.redis_cluster)
    try:
        store = reader_store(client, settings)
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
    print(format_customer(row, recent, shown(row, settings.currency)))
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


def format_customer(row: dict[str, object], recent: list[bytes], display: dict[str, str] | None = None) -> str:
    """The customer for people: ``display`` (``streams.api.models.shown``) where it has a field."""
    said = display or {}
    lines = [f"customer {row['customer_id']}   as of {row['as_of']}", ""]
    for field, label in LABELS:
        value = said.get(field, row.get(field))
        lines.append(f"  {label:<38} {'—' if value is None else value}")
    lines.append(f"  {'客户分群 segments':<38} {', '.join(row['segments']) or '—'}")  # type: ignore[arg-type]
    lines.append("")
    lines.append(f"  {'综合贡献度 contribution (yearly)':<38} {said.get('contribution', row['contribution'])}")
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
    client = connect(redis_url, settings.redis_cluster)
    try:
        states = await load_all(reader_store(client, settings))
    finally:
        await client.aclose()
    count = write_jsonl(out, rows(states, parse_as_of(as_of) if as_of else None, settings))
    print(f"wrote {count} customers to {out}")
    return 0


async def fold_changelogs(settings: Settings, redis_url: str) -> int:
    """``fundflow fold``: every customer's changelog folded into its full state."""
    client = connect(redis_url, settings.redis_cluster)
    try:
        folded, left = await reader_store(client, settings).fold_all()
    finally:
        await client.aclose()
    print(
        f"folded {folded} changelogs into full states" + (f"; {left} changed meanwhile (run it again)" if left else "")
    )
    return 0 if not left else 1


async def show_tiers(settings: Settings, redis_url: str, refresh: bool, top: int, as_json: bool) -> int:
    client = connect(redis_url, settings.redis_cluster)
    keys = Keys(settings.key_prefix)
    try:
        if refresh:
            states = await load_all(reader_store(client, settings, keys))
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
        q1, q2, q3 = (fmt.amount(Decimal(cuts[q]), settings.currency) for q in ("q1", "q2", "q3"))
        print(f"  cut points  Q1 {q1}  Q2 {q2}  Q3 {q3}  (yearly contribution)")
    for tier, count in result["counts"].items():
        share = count / result["customers"] if result["customers"] else 0.0
        print(f"  {tier:>3}  {count:>7}  {share:6.1%}  {'#' * round(share * 40)}")
    if result["top"]:
        print(f"  top {len(result['top'])} by 综合贡献度 contribution:")
        for row in result["top"]:
            contribution = fmt.amount(Decimal(row["contribution"]), settings.currency)
            print(f"    {row['customer_id']:<16} {contribution:>18}  {row['tier']}")
    return 0


async def show_board(settings: Settings, redis_url: str, day: str | None, verify: bool) -> int:
    """``fundflow board``: the 看板's numbers as JSON; ``--check``: 0 when they equal a
    recomputation from the stored states, else 1 with one line per difference."""
    client = connect(redis_url, settings.redis_cluster)
    try:
        keys = Keys(settings.key_prefix)
        if not verify:
            board = await read_board(client, keys, settings.zone, day, cluster=settings.redis_cluster)
            print(orjson.dumps(board, option=orjson.OPT_INDENT_2).decode())
            return 0
        store = reader_store(client, settings, keys)
        differences = await check(store, settings.zone, RECENT_ALERTS_KEPT, settings.redis_cluster)
    finally:
        await client.aclose()
    for line in differences:
        print(line)
    print(f"board: {len(differences)} differences from the recomputation" if differences else "board: agrees")
    return 1 if differences else 0


async def read_precision(settings: Settings, redis_url: str) -> list[RulePrecision]:
    """Per rule, what the analysts concluded: ``CaseStore.precision``, the computation
    behind ``GET /rules/precision``, over the cases in Redis."""
    client = connect(redis_url, settings.redis_cluster)
    try:
        return await CaseStore(client, Keys(settings.key_prefix)).precision()
    finally:
        await client.aclose()


def analysts_precision(settings: Settings, read: bool) -> tuple[list[RulePrecision] | None, str]:
    """The analysts' precision for ``evaluate-rules`` and ``tune`` when cases can be read
    (``FUNDFLOW_REDIS_URL`` set and ``read``), else None; and where it came from (or why not).

    Read from Redis, the cases' system of record, rather than from a file saved from the
    API: always current, no API token needed (these commands already read Redis), and the
    same code as the API, so both show the same numbers."""
    if not read:
        return None, "not read (--no-cases)"
    if not settings.redis_url:
        return None, "not read: FUNDFLOW_REDIS_URL not set (the cases live in Redis)"
    rows = asyncio.run(read_precision(settings, settings.redis_url))
    return rows, f"{safe_url(settings.redis_url)} (prefix {settings.key_prefix})"

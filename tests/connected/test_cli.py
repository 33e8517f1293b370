"""The command line answers every user mistake with one line and a non-zero exit."""

from __future__ import annotations

import lzma
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rules import fmt
from streams.tools.berka import SHIPPED_BERKA
from tests.support.processes import assert_one_line_error, fundflow


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "Missing command"),
        (("nonsense",), "No such command 'nonsense'"),
        (("replay",), "give one of FILE or --berka DIR"),
        (("replay", "x.jsonl", "--rate", "-3"), "must be > 0"),
        (("replay", "x.jsonl", "--rate", "fast"), "not a number"),
        (("replay", "x.jsonl", "--berka", "dir"), "FILE and --berka are exclusive"),
        (("backtest",), "Missing argument 'EVENTS'"),
        (("customer", "show"), "Missing argument 'CUSTOMER_ID'"),
        (("worker", "--web-port", "http"), "'http' is not a valid integer"),
        (("alerts",), "Missing command"),
        (("alerts", "tail", "--severity", "urgent"), "'urgent' is not one of"),
        (("alerts", "tail", "--max", "0"), "must be > 0"),
        (("backtest", "e.jsonl", "--out", "o", "--timeout", "soon"), "not a number"),
        (("tiers", "--frobnicate"), "No such option: --frobnicate"),
        (("board", "--day", "2024-13-01"), "is not a day written YYYY-MM-DD"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(args: tuple[str, ...], fragment: str) -> None:
    assert_one_line_error(fundflow(*args), 2, fragment)


def test_help_works() -> None:
    result = fundflow("--help")
    assert result.returncode == 0
    for command in ("worker", "replay", "convert-berka", "backtest", "customer", "snapshot", "stack", "demo"):
        assert command in result.stdout


def test_unreachable_redis_is_one_line() -> None:
    result = fundflow("customer", "show", "C1", FUNDFLOW_REDIS_URL="redis://127.0.0.1:1/0")
    assert_one_line_error(result, 1, "127.0.0.1:1")


def test_redis_password_never_printed() -> None:
    result = fundflow("customer", "show", "C1", FUNDFLOW_REDIS_URL="redis://:s3cret-pw@127.0.0.1:1/0")
    assert result.returncode == 1
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_missing_replay_file_is_one_line() -> None:
    result = fundflow("replay", "missing.jsonl", FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert_one_line_error(result, 1, "missing.jsonl")


def test_unreachable_kafka_is_one_line(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"txn_id": "t1"}\n')
    result = fundflow("replay", str(events), FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert_one_line_error(result, 1, "Kafka at 127.0.0.1:1 does not answer")


def test_bad_rules_file_is_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("outflow:\n  streak_days: many\n")
    result = fundflow(
        "worker",
        FUNDFLOW_RULES_FILE=str(rules),
        FUNDFLOW_REDIS_URL="redis://127.0.0.1:1/0",
        FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1",
    )
    assert_one_line_error(result, 1, "outflow.streak_days")


KAFKA_REDIS = {"FUNDFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1", "FUNDFLOW_REDIS_URL": "redis://127.0.0.1:1/0"}


def test_webhook_relay_refuses_to_start_without_receivers_or_secret() -> None:
    assert_one_line_error(fundflow("alerts", "webhook", **KAFKA_REDIS), 1, "no receivers")
    result = fundflow("alerts", "webhook", "--url", "http://127.0.0.1:1/hook", **KAFKA_REDIS)
    assert_one_line_error(result, 1, "FUNDFLOW_WEBHOOK_SECRET not set")
    result = fundflow("alerts", "webhook", "--url", "ftp://u:pw@x/hook", FUNDFLOW_WEBHOOK_SECRET="k", **KAFKA_REDIS)
    assert_one_line_error(result, 1, "http:// or https://")
    assert "pw" not in result.stderr


def test_api_refuses_to_start_without_tokens() -> None:
    result = fundflow("api", FUNDFLOW_REDIS_URL="redis://127.0.0.1:1/0")
    assert_one_line_error(result, 1, "no FUNDFLOW_API_TOKENS configured")
    assert_one_line_error(fundflow("api", "--port", "99999", **KAFKA_REDIS), 1, "not a TCP port")


def test_alerts_tail_against_no_broker_is_one_line() -> None:
    assert_one_line_error(fundflow("alerts", "tail", **KAFKA_REDIS), 1, "Kafka at 127.0.0.1:1 does not answer")


def test_bad_setting_is_one_line() -> None:
    result = fundflow("customer", "show", "C1", FUNDFLOW_BANK_TZ="Mars/Olympus")
    assert_one_line_error(result, 1, "FUNDFLOW_BANK_TZ")


def test_missing_backtest_file_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(fundflow("backtest", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)), 1, "no such file")


def test_dictionary_trainer_without_the_data_is_one_line(tmp_path: Path) -> None:
    result = fundflow("train-dictionary", "--berka", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert_one_line_error(result, 1, "no such directory")
    assert not list(tmp_path.iterdir())


def test_bad_as_of_is_one_line() -> None:
    result = fundflow(
        "snapshot", "--out", "x.jsonl", "--as-of", "yesterday", FUNDFLOW_REDIS_URL="redis://127.0.0.1:1/0"
    )
    assert result.returncode in (1, 2)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


async def _store_customers(redis_url: str, prefix: str) -> None:
    """Customers written the way a worker writes them (the pure step + the store's commit)."""
    import orjson

    from rules.events import TransactionEvent
    from rules.state import CustomerState, StateConfig, apply_transaction
    from streams.clients import connect
    from streams.storage.keys import Keys
    from streams.storage.store import Commit, StateStore
    from tests.support import eventgen

    client = connect(redis_url)
    store = StateStore(client, Keys(prefix))
    states: dict[str, CustomerState] = {}
    config = StateConfig(zone=ZoneInfo("Asia/Shanghai"))
    for line in eventgen.lines(eventgen.transactions(customers=8, per_customer=30)):
        event = TransactionEvent.model_validate(orjson.loads(line))
        apply_transaction(states.setdefault(event.customer_id, CustomerState(event.customer_id)), event, config)
    try:
        assert not await store.commit([Commit(cid, 0, state) for cid, state in states.items()])
    finally:
        await client.aclose()


async def test_customer_show_and_tiers_read_live_state(redis_url: str, tmp_path: Path) -> None:
    import json

    await _store_customers(redis_url, "cli")
    env = {"FUNDFLOW_REDIS_URL": redis_url, "FUNDFLOW_KEY_PREFIX": "cli"}
    shown = fundflow("customer", "show", "C0003", **env)
    assert shown.returncode == 0, shown.stderr
    assert "日均余额" in shown.stdout and "综合贡献度" in shown.stdout and "存款贡献" in shown.stdout
    tiers = fundflow("tiers", "--refresh", "--json", **env)
    assert tiers.returncode == 0, tiers.stderr
    result = json.loads(tiers.stdout)
    assert result["customers"] == 8 and sum(result["counts"].values()) == 8
    table = fundflow("tiers", **env).stdout  # for people: the cut points as rules/fmt.py writes money
    cuts = [fmt.amount(Decimal(result["cuts"][q])) for q in ("q1", "q2", "q3")]
    assert f"cut points  Q1 {cuts[0]}  Q2 {cuts[1]}  Q3 {cuts[2]}" in table
    as_text = shown.stdout
    shown = fundflow("customer", "show", "C0003", "--json", **env)
    row = json.loads(shown.stdout)
    assert row["tier"] in ("I", "II", "III", "IV")
    balance_line = next(line for line in as_text.splitlines() if "余额 balance" in line)
    assert balance_line.split()[-1] == fmt.amount(Decimal(row["balance"]))  # written for people, as the console
    missing = fundflow("customer", "show", "nobody", **env)
    assert_one_line_error(missing, 1, "no customer 'nobody'")
    snapshot = fundflow("snapshot", "--out", str(tmp_path / "s.jsonl"), **env)
    assert snapshot.returncode == 0, snapshot.stderr
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 8


async def test_an_as_of_out_of_range_is_one_line_not_a_traceback(redis_url: str, tmp_path: Path) -> None:
    """Issue 20 row 11: year 9999 (or 1) used to overflow in the bank's zone: a traceback."""
    await _store_customers(redis_url, "cli")
    env = {"FUNDFLOW_REDIS_URL": redis_url, "FUNDFLOW_KEY_PREFIX": "cli"}
    for as_of in ("9999-12-31T16:00:00+00:00", "0001-01-01T00:00:00+08:00"):
        shown = fundflow("customer", "show", "C0003", "--as-of", as_of, **env)
        assert_one_line_error(shown, 1, "as_of must be in the years 1970 to 2100")
        snapshot = fundflow("snapshot", "--out", str(tmp_path / "s.jsonl"), "--as-of", as_of, **env)
        assert_one_line_error(snapshot, 1, "as_of must be in the years 1970 to 2100")


@pytest.mark.parametrize("arg", ["--rounds", "--events"])
def test_bench_refuses_zero_rounds_or_events(tmp_path: Path, arg: str) -> None:
    assert_one_line_error(fundflow("bench", "--berka", str(tmp_path), arg, "0"), 2, "'0' must be > 0")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("soak", "--minutes", "1", "--interval", "45"), "--interval must fit twice in --minutes"),
        (("fetch-cost", "--batches", "10,x"), "not a comma-separated list of numbers"),
        (("bench", "--berka", "/nonexistent/berka"), "no Berka data at /nonexistent/berka"),
    ],
)
def test_maintainer_tools_answer_bad_arguments_in_one_line(args: tuple[str, ...], fragment: str) -> None:
    result = fundflow(*args)
    assert result.returncode in (1, 2)
    assert_one_line_error(result, result.returncode, fragment)


def test_convert_berka_uses_the_shipped_copy_and_takes_another(tmp_path: Path) -> None:
    """With no DIR the shipped (compressed) files; with DIR a plain copy: the same events."""
    copy = tmp_path / "berka"
    copy.mkdir()
    for name in ("trans.asc", "loan.asc"):
        (copy / name).write_bytes(lzma.decompress((SHIPPED_BERKA / f"{name}.xz").read_bytes()))
    shipped = fundflow("convert-berka", str(tmp_path / "shipped.jsonl"))
    assert shipped.returncode == 0, shipped.stderr
    other = fundflow("convert-berka", str(copy), str(tmp_path / "copy.jsonl"))
    assert other.returncode == 0, other.stderr
    events = (tmp_path / "shipped.jsonl").read_bytes()
    assert events == (tmp_path / "copy.jsonl").read_bytes() and events.count(b"\n") == 49_102 + 161


def test_replay_berka_without_a_dir_converts_the_shipped_copy() -> None:
    """``--berka`` alone: the shipped data convert (else "no such directory"), then the broker is missing."""
    result = fundflow("replay", "--berka", "--rate", "10", FUNDFLOW_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert_one_line_error(result, 1, "127.0.0.1:1")


def test_a_wrong_token_role_is_one_line() -> None:
    tokens = '["a", {"token": "t", "role": "admin", "name": "li.wei"}]'
    result = fundflow("api", FUNDFLOW_API_TOKENS=tokens, **KAFKA_REDIS)
    assert_one_line_error(result, 1, "FUNDFLOW_API_TOKENS: Value error, token 2: role: Input should be 'viewer'")
    assert "admin" not in result.stderr and '"t"' not in result.stderr  # no token in the message


async def test_board_shows_the_day_and_check_finds_a_tampered_cell(redis_url: str) -> None:
    """``fundflow board`` prints the 看板 of the latest day; ``--check`` agrees with a
    recomputation from the states until a cell is changed behind the worker's back."""
    import json

    from streams.clients import connect
    from streams.storage.keys import Keys
    from streams.storage.store import StateStore
    from tests.support.board import processor, records

    client = connect(redis_url)
    try:
        store = StateStore(client, Keys("cliboard"))
        await processor(store).process(records())
        env = {"FUNDFLOW_REDIS_URL": redis_url, "FUNDFLOW_KEY_PREFIX": "cliboard", "FUNDFLOW_BANK_TZ": "Asia/Shanghai"}
        shown = fundflow("board", "--day", "2024-03-01", **env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["flows"]["total"] == {"inflow": "1050.00", "outflow": "380.75", "net": "669.25"}
        checked = fundflow("board", "--check", **env)
        assert (checked.returncode, checked.stdout.strip()) == (0, "board: agrees"), checked.stderr
        await client.hincrby(store.keys.board("board", "flow:2024-03-01"), "09|in|salary|int", 1)
        checked = fundflow("board", "--check", **env)
        assert checked.returncode == 1
        assert checked.stdout.splitlines()[0].startswith("flows of 2024-03-01: stored")
    finally:
        await client.aclose()


async def test_fold_writes_every_changelog_into_its_state(redis_url: str) -> None:
    """``fundflow fold`` on customers a logging worker left with changelogs: exit 0, no log
    left, and ``customer show`` gives the same numbers before and after."""
    import orjson

    from streams.clients import connect
    from streams.deadletter import RawRecord
    from streams.pipeline import BatchProcessor
    from streams.rulestep import build_step
    from streams.settings import Settings
    from streams.storage.keys import Keys
    from streams.storage.store import StateStore
    from streams.topics import TRANSACTIONS
    from tests.support import eventgen
    from tests.support.fakes import Sink

    settings = Settings(key_prefix="fold", bank_tz="Asia/Shanghai")
    client = connect(redis_url)
    try:
        worker = BatchProcessor(StateStore(client, Keys("fold")), build_step(settings), Sink(), snapshot_every=8)
        lines = eventgen.lines(eventgen.transactions(customers=5, per_customer=40))
        records = [
            RawRecord(TRANSACTIONS, 0, i, orjson.loads(line)["customer_id"].encode(), line, 1_900_000_000_000)
            for i, line in enumerate(lines)
        ]
        for start in range(0, len(records), 20):
            await worker.process(records[start : start + 20])
        assert [k async for k in client.scan_iter(match="fold:{*}:log")]
        env = {"FUNDFLOW_REDIS_URL": redis_url, "FUNDFLOW_KEY_PREFIX": "fold"}
        before = fundflow("customer", "show", "C0003", "--json", **env)
        assert before.returncode == 0, before.stderr
        folded = fundflow("fold", **env)
        assert folded.returncode == 0, folded.stderr
        assert folded.stdout.startswith("folded ") and "folded 0 " not in folded.stdout
        assert not [k async for k in client.scan_iter(match="fold:{*}:log")]
        assert fundflow("customer", "show", "C0003", "--json", **env).stdout == before.stdout
        assert fundflow("fold", **env).stdout.strip() == "folded 0 changelogs into full states"
    finally:
        await client.aclose()

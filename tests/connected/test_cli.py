"""The command line answers every user mistake with one line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fundflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-m", "streams.cli.main", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("fundflow: error:"), lines[0]
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), "required"),
        (("nonsense",), "invalid choice"),
        (("replay",), "one of the arguments"),
        (("replay", "x.jsonl", "--rate", "-3"), "must be > 0"),
        (("replay", "x.jsonl", "--rate", "fast"), "not a number"),
        (("replay", "x.jsonl", "--berka", "dir"), "not allowed with"),
        (("backtest",), "required"),
        (("customer", "show"), "required"),
        (("worker", "--web-port", "http"), "invalid int value"),
        (("alerts",), "required"),
        (("alerts", "tail", "--severity", "urgent"), "invalid choice"),
        (("alerts", "tail", "--max", "0"), "must be > 0"),
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
    result = subprocess.run(
        [sys.executable, "-m", "streams.tools.statedict", "--berka", str(tmp_path / "nope"), "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("statedict: error: no such directory") and not list(tmp_path.iterdir())


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
    from streams.keys import Keys
    from streams.store import Commit, StateStore
    from tests import eventgen

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
    shown = fundflow("customer", "show", "C0003", "--json", **env)
    assert json.loads(shown.stdout)["tier"] in ("I", "II", "III", "IV")
    missing = fundflow("customer", "show", "nobody", **env)
    assert_one_line_error(missing, 1, "no customer 'nobody'")
    snapshot = fundflow("snapshot", "--out", str(tmp_path / "s.jsonl"), **env)
    assert snapshot.returncode == 0, snapshot.stderr
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 8


@pytest.mark.parametrize("arg", ["--rounds", "--events"])
def test_bench_refuses_zero_rounds_or_events(tmp_path: Path, arg: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.tools.bench", "--berka", str(tmp_path), arg, "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"make bench: error: {arg} must be > 0"


def test_a_wrong_token_role_is_one_line() -> None:
    tokens = '["a", {"token": "t", "role": "admin", "name": "li.wei"}]'
    result = fundflow("api", FUNDFLOW_API_TOKENS=tokens, **KAFKA_REDIS)
    assert_one_line_error(result, 1, "FUNDFLOW_API_TOKENS: Value error, token 2: role: Input should be 'viewer'")
    assert "admin" not in result.stderr and '"t"' not in result.stderr  # no token in the message

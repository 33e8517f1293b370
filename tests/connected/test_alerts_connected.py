"""Rules that act, end to end with real processes: transactions into Kafka, a
``fundflow worker`` judges them, the alerts land on their topic, and a
``fundflow alerts webhook`` relay POSTs every one, signed, to a real HTTP
receiver; ``fundflow alerts tail`` shows them in a terminal."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from alerts.receiver_example import RECEIVED, STATS, make_app
from rules.contribution import tier_of
from streams.clients import connect, ensure_topics
from streams.local.orchestra import read_topic
from streams.local.servers import Stack, free_port
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.tiers import contributions, read_cuts
from streams.topics import ALERTS, MARKETING, RECOMMENDATIONS, all_topics
from tests.support.drain import CUSTOMERS, ZONE, drain_events
from tests.support.processes import env, produce, stop
from tests.support.webhook import SECRET, Receiver

pytestmark = [pytest.mark.connected, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


async def findings_on_topics(settings: Settings, bootstrap: str) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = {}
    for topic in (ALERTS, RECOMMENDATIONS, MARKETING):
        for value in await read_topic(settings, bootstrap, topic):
            finding = orjson.loads(value)
            if finding["customer_id"] in CUSTOMERS:
                found[finding["id"]] = finding
    return found


def tier_events(phase: int) -> list[dict[str, object]]:
    """Phase 0: TC0..TC7 deposit 1,000 x (i+1). Phase 1: TC0 receives 10 million and TC7
    empties its account; a small movement 35 days later puts both 30-day windows after the
    change. Phase 2: TC0 sends 5 million to another bank (an alert that carries the new tier)."""
    day0 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=ZONE)

    def txn(customer: str, n: int, days: int, direction: str, amount: str, **extra: object) -> dict[str, object]:
        return {"txn_id": f"{customer}-{n}", "customer_id": customer, "account_id": f"A-{customer}",
                "ts": (day0 + dt.timedelta(days=days)).isoformat(), "direction": direction, "amount": amount,
                **extra}  # fmt: skip

    if phase == 0:
        return [txn(f"TC{i}", 0, 0, "credit", f"{1000 * (i + 1)}.00") for i in range(8)]
    if phase == 1:
        return [
            txn("TC0", 1, 40, "credit", "10000000.00"),
            txn("TC7", 1, 40, "debit", "7999.00"),
            txn("TC0", 2, 75, "credit", "1.00"),
            txn("TC7", 2, 75, "credit", "1.00"),
        ]
    return [txn("TC0", 3, 76, "debit", "5000000.00", kind="transfer_out", external=True, counterparty_bank="B09")]


def customer_tier(stack: Stack, tmp: Path, customer: str) -> str | None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "customer", "show", customer, "--json"],
        env=env(stack, tmp, FUNDFLOW_KEY_PREFIX="tiers-e2e"),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    if result.returncode != 0:
        return None
    return orjson.loads(result.stdout).get("tier")  # type: ignore[no-any-return]


async def worker_tiers(stack: Stack, customers: list[str]) -> dict[str, str | None]:
    """The tiers the worker itself attaches to alerts: the contributions and cut points of
    its last refresh, as it published them (``customer show`` recomputes the contribution
    from the newest state, so it can be a refresh ahead of the worker)."""
    client = connect(stack.redis_url)
    try:
        keys = Keys("tiers-e2e")
        cuts, _ = await read_cuts(client, keys)
        values = await contributions(client, keys, customers)
    finally:
        await client.aclose()
    return {c: tier_of(v, cuts) if v is not None and cuts else None for c, v in values.items()}


async def wait_for_tiers(stack: Stack, tmp: Path, wanted: dict[str, str], worker: subprocess.Popen[bytes]) -> None:
    """Until both `customer show` and the worker's last refresh give the wanted tiers (live
    tiers may lag by one refresh interval: metrics.md)."""
    deadline = time.monotonic() + 90
    seen: dict[str, str | None] = {}
    published: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        assert worker.poll() is None, "worker died"
        seen = {c: customer_tier(stack, tmp, c) for c in wanted}
        published = await worker_tiers(stack, list(wanted))
        if seen == wanted and published == wanted:
            return
        await asyncio.sleep(1)
    raise AssertionError(f"tiers {seen} (worker: {published}), wanted {wanted}")


async def test_tiers_follow_balances_through_a_worker(stack: Stack, tmp_path: Path) -> None:
    """客户分层 live: a worker keeps contributions and cut points current as money moves and
    `customer show` reads the new tier; the next alert does not carry it: the live tier comes
    from a wall-clock refresh, and a finding depends on the customer's events only
    (docs/findings.md)."""
    settings = Settings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, var_dir=tmp_path)
    await ensure_topics(stack.kafka_bootstrap, all_topics(settings.partitions), settings)
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli.main", "worker", "--web-port", str(free_port())],
            env=env(
                stack,
                tmp_path,
                FUNDFLOW_APP_ID="tiers-e2e",
                FUNDFLOW_KEY_PREFIX="tiers-e2e",
                FUNDFLOW_TIER_REFRESH_SECONDS="1",
            ),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await produce(stack.kafka_bootstrap, tier_events(0))
        await wait_for_tiers(stack, tmp_path, {"TC0": "IV", "TC7": "I"}, worker)
        await produce(stack.kafka_bootstrap, tier_events(1))
        await wait_for_tiers(stack, tmp_path, {"TC0": "I", "TC7": "IV"}, worker)
        await produce(stack.kafka_bootstrap, tier_events(2))
        deadline = time.monotonic() + 60
        drain: list[dict[str, object]] = []
        while not drain and time.monotonic() < deadline:
            found = [orjson.loads(v) for v in await read_topic(settings, stack.kafka_bootstrap, ALERTS)]
            drain = [f for f in found if f["trigger_txn_id"] == "TC0-3" and f["rule"] == "large_external_outflow"]
            await asyncio.sleep(0.5)
        assert drain, "no alert for TC0's large outflow"
        assert drain[0]["tier"] is None and drain[0]["severity"] == "high"  # not escalated by the live tier
    finally:
        stop(worker)


async def test_alerts_reach_their_topic_a_signed_webhook_and_the_terminal(stack: Stack, tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap=stack.kafka_bootstrap, redis_url=stack.redis_url, var_dir=tmp_path)
    await ensure_topics(stack.kafka_bootstrap, all_topics(settings.partitions), settings)
    receiver = Receiver(make_app(SECRET))
    await receiver.start()
    logs = [(tmp_path / name).open("wb") for name in ("worker.log", "relay.log")]
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "worker", "--web-port", str(free_port())],
        env=env(stack, tmp_path),
        cwd=ROOT,
        stdout=logs[0],
        stderr=subprocess.STDOUT,
    )
    relay = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "alerts", "webhook", "--url", receiver.url],
        env=env(stack, tmp_path),
        cwd=ROOT,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    try:
        events = drain_events()
        await produce(stack.kafka_bootstrap, events)
        deadline = time.monotonic() + 120
        found: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            assert worker.poll() is None and relay.poll() is None, "worker or relay died; see logs in tmp_path"
            found = await findings_on_topics(settings, stack.kafka_bootstrap)
            drains = {f["customer_id"] for f in found.values() if f["rule"] == "large_external_outflow"}
            received = {f["id"] for f in receiver.app[RECEIVED]}
            if drains == set(CUSTOMERS) and received >= set(found):
                break
            await asyncio.sleep(0.5)
        drains = {f["customer_id"] for f in found.values() if f["rule"] == "large_external_outflow"}
        assert drains == set(CUSTOMERS), f"alerts on the topic: {sorted(found)}"
        await asyncio.sleep(1.5)  # anything late or duplicated would show up now
        received_ids = [str(f["id"]) for f in receiver.app[RECEIVED]]
        ours = [i for i in received_ids if i in found]
        assert sorted(ours) == sorted(found), "the webhook got exactly what is on the topics"
        assert len(set(received_ids)) == len(received_ids)
        assert receiver.app[STATS]["refused"] == 0 and receiver.app[STATS]["duplicates"] == 0
        alert = next(f for f in found.values() if f["rule"] == "large_external_outflow")
        assert alert["category"] == "outflow_risk" and alert["trigger_txn_id"] == f"{alert['customer_id']}-2"
        assert alert["evidence"] and alert["message"]

        # the terminal view: filtered by customer, from the beginning, as JSON
        customer = CUSTOMERS[2]
        expected = sorted(i for i, f in found.items() if f["customer_id"] == customer)
        tail = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streams.cli.main",
            "alerts",
            "tail",
            "--customer",
            customer,
            "--from-beginning",
            "--json",
            "--max",
            str(len(expected)),
            env=env(stack, tmp_path),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(tail.communicate(), timeout=60)
        assert tail.returncode == 0, err.decode()
        shown = [orjson.loads(line) for line in out.decode().splitlines()]
        assert sorted(str(f["id"]) for f in shown) == expected
        assert {f["customer_id"] for f in shown} == {customer}
    finally:
        for process in (worker, relay):
            stop(process)
        for log in logs:
            log.close()
        await receiver.stop()

"""Consent, complaints and routes at delivery, against a real Redis, the real webhook relay
(``alerts.relay.Relay`` with its contact gate, in this process) and a real HTTP receiver: what
the API records stops the next push; a complaint holds pushes for its window; the audit says
who; a restart of Redis loses none of it; a Tier I sweep becomes a task in the RM queue."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from alerts.receiver_example import RECEIVED, make_app
from alerts.relay import Relay
from alerts.webhook import RetryPolicy, WebhookSender
from contact.gate import Gate
from contact.model import Consent, Record, merge
from contact.routes import ContactConfig
from contact.store import ContactStore
from rules.engine import Finding
from streams import telemetry
from streams.api.cases import CASES
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.local.servers import EmbeddedRedis, free_port
from streams.storage.keys import Keys
from streams.topics import MARKETING
from tests.support.contact import set_tiers
from tests.support.desk import PREFIX, SETTINGS, Client, auth, finding, get, publish
from tests.support.webhook import SECRET, Receiver

DAY = 86_400
_txn = itertools.count(1)


def push(customer: str, category: str = "sweep") -> dict[str, Any]:
    """A push trigger exactly as the rules engine renders it for fundflow.marketing.v1."""
    made = Finding("push", f"push_{category}", category, "info", customer, None, 1_700_000_000_000_000,
                   f"P{next(_txn)}", {"amount": "1.00"}, f"push for {customer}",
                   {"channel": "app", "template": "t", "campaign": f"camp-{next(_txn)}"})  # fmt: skip
    return made.as_dict(SETTINGS.zone)


def record(value: dict[str, Any]) -> RawRecord:
    return RawRecord(MARKETING, 0, next(_txn), value["customer_id"].encode(), orjson.dumps(value), 0)


async def say(desk: Client, who: str, path: str, body: dict[str, Any], status: int = 200) -> Any:
    response = await desk.post(path, data=orjson.dumps(body), headers=auth(who))
    assert response.status == status, await response.text()
    return await response.json()


class Delivery:
    def __init__(self, relay: Relay, receiver: Receiver) -> None:
        self.relay, self.receiver = relay, receiver

    async def send(self, *pushes: dict[str, Any]) -> int:
        """The pushes through the relay; how many it held."""
        return (await self.relay.handle([record(p) for p in pushes])).held

    def received(self) -> list[dict[str, Any]]:
        return list(self.receiver.app[RECEIVED])


@pytest.fixture
async def delivery(desk: Client) -> AsyncIterator[Delivery]:
    receiver = Receiver(make_app(SECRET))
    await receiver.start()
    redis = desk.app[CASES].redis
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, receiver.url, SECRET, RetryPolicy(max_attempts=1))
        gate = Gate(ContactStore(redis, Keys(PREFIX)), ContactConfig())
        yield Delivery(Relay([sender], redis, Keys(PREFIX), SETTINGS, gate=gate), receiver)
    await receiver.stop()


def held_count(why: str) -> float:
    return telemetry.PUSHES_HELD.labels("push_sweep", why)._value.get()  # type: ignore[attr-defined,no-any-return]


async def test_an_opt_out_recorded_through_the_api_stops_the_next_push(desk: Client, delivery: Delivery) -> None:
    await set_tiers(desk.app[CASES].redis, PREFIX, {"C2": "II"})
    first = push("C2")
    assert await delivery.send(first) == 0
    [went] = delivery.received()
    assert (went["channel"], went["route"], went["tier"]) == ("app", "push", "II")
    said = dt.datetime.fromtimestamp(time.time() - 60, dt.UTC).isoformat()  # a minute ago, on the phone
    view = await say(desk, "li", "/contact/C2/consent",
                     {"channel": "push", "status": "opt_out", "reason": "call centre", "at": said})  # fmt: skip
    assert view["held"] == {"push": "opt_out:push", "sms": None}
    before = held_count("opt_out:push")
    stopped = push("C2")
    assert await delivery.send(stopped) == 1
    assert len(delivery.received()) == 1  # nothing more reached the receiver
    assert await delivery.send(stopped) == 1  # redelivered: held again, recorded and counted once
    assert held_count("opt_out:push") == before + 1
    # the push delivered before the opt-out, redelivered (a replay of the topic): a duplicate, not held
    again = await delivery.relay.handle([record(first)])
    assert (again.held, again.duplicates, len(delivery.received())) == (0, 1, 1)
    [held] = (await get(desk, "/contact/held?customer=C2"))["held"]
    assert (held["id"], held["why"], held["route"], held["tier"]) == (stopped["id"], "opt_out:push", "push", "II")
    shown = await get(desk, "/contact/C2", "viewer")
    [entry] = shown["audit"]
    assert (entry["by"], entry["role"], entry["action"], entry["channel"], entry["reason"]) == (
        "li.wei", "analyst", "opt_out", "push", "call centre")  # fmt: skip
    assert entry["changed"] is True and shown["held_pushes"][0]["id"] == stopped["id"]
    await say(desk, "boss", "/contact/C2/consent", {"channel": "all", "status": "opt_in", "reason": "asked again"})
    assert await delivery.send(push("C2")) == 0 and len(delivery.received()) == 2
    assert [e["by"] for e in (await get(desk, "/contact/C2"))["audit"]] == ["li.wei", "zhang"]


async def test_a_complaint_holds_every_push_for_its_window(desk: Client, delivery: Delivery) -> None:
    now = int(time.time())

    def ago(days: int) -> str:
        return dt.datetime.fromtimestamp(now - days * DAY, dt.UTC).isoformat()

    await say(desk, "li", "/contact/C5/complaint", {"reason": "投诉: too many messages", "at": ago(10)})
    await say(desk, "li", "/contact/C6/complaint", {"reason": "old complaint", "at": ago(91)})  # quiet days: 90
    assert await delivery.send(push("C5"), push("C5", "collection"), push("C6")) == 2
    assert [p["customer_id"] for p in delivery.received()] == ["C6"]
    assert {h["why"] for h in (await get(desk, "/contact/held?customer=C5"))["held"]} == {"complaint"}
    view = await get(desk, "/contact/C5")
    assert view["complaint"]["quiet_until"] == dt.datetime.fromtimestamp(now + 80 * DAY, dt.UTC).isoformat()
    assert view["audit"][0]["action"] == "complaint" and view["audit"][0]["said_at"] == now - 10 * DAY
    # the window is wall-clock: a relay whose clock is past it lets the push go
    later = Gate(ContactStore(desk.app[CASES].redis, Keys(PREFIX)), ContactConfig(), clock=lambda: now + 81 * DAY)
    delivery.relay.gate = later
    assert await delivery.send(push("C5")) == 0


async def test_a_tier_one_sweep_is_a_task_in_the_rm_queue_not_a_push(desk: Client, delivery: Delivery) -> None:
    redis = desk.app[CASES].redis
    await set_tiers(redis, PREFIX, {"C1": "I", "C3": "III"})
    sweep = finding("C1", "post_repayment_sweep", "sweep", "info", kind="recommendation", tier=None)
    sweep["product"], sweep["amount"] = "money_market_fund", "12000.00"
    collection = finding("C3", "collection_opportunity", "collection", "medium", tier=None)
    await publish(desk, sweep, collection)
    [task] = (await get(desk, "/cases?queue=rm"))["cases"]
    assert (task["customer_id"], task["queue"], task["tier"], task["priority"]) == ("C1", "rm", "I", 4)
    detail = await get(desk, f"/cases/{task['id']}")
    assert detail["findings"][0]["product"] == "money_market_fund" and detail["findings"][0]["evidence"]
    [other] = (await get(desk, "/cases?queue=analyst"))["cases"]
    assert (other["customer_id"], other["tier"]) == ("C3", "III")
    assert await delivery.send(push("C1"), push("C3", "collection")) == 1
    assert [p["customer_id"] for p in delivery.received()] == ["C3"]
    [held] = (await get(desk, "/contact/held"))["held"]
    assert (held["customer_id"], held["why"], held["route"]) == ("C1", "route:rm", "rm")
    assert (await get(desk, "/contact/C1"))["routes"] == {"collection": "rm", "sweep": "rm"}


async def test_every_contact_endpoint_checks_who_calls(desk: Client) -> None:
    body = {"channel": "sms", "status": "opt_out", "reason": "r"}
    for path in ("/contact/C9", "/contact/held", "/contact/imports"):
        assert (await desk.get(path)).status == 401
        await get(desk, path, "viewer")
    for path, sent in (("/contact/C9/consent", body), ("/contact/C9/complaint", {"reason": "r"})):
        assert (await desk.post(path, data=orjson.dumps(sent))).status == 401
        refused = await say(desk, "viewer", path, sent, 403)
        assert refused["error"] == "a viewer cannot record consent or complaints"
        await say(desk, "li", path, sent)
        await say(desk, "boss", path, sent)
    assert (await get(desk, "/contact/C9"))["audit"][0]["by"] == "li.wei"
    for bad in ({**body, "channel": "fax"}, {**body, "extra": 1}, {**body, "at": "2020-01-01"},
                {**body, "at": "2999-01-01T00:00:00Z"}, {**body, "reason": ""}):  # fmt: skip
        await say(desk, "li", "/contact/C9/consent", bad, 400)
    await get(desk, "/contact/" + "x" * 65, status=400)
    await get(desk, "/contact/held?color=red", status=400)


async def test_the_store_merges_as_the_model_does_in_any_batches(redis_url: str) -> None:
    client = connect(redis_url, False)
    try:
        rng = random.Random(32)
        for run in range(20):
            store = ContactStore(client, Keys(f"m{run}"), buckets=4)
            history = [
                Record(rng.choice(["a", "b", "c"]), rng.choice(["opt_out", "opt_in", "complaint"]),  # type: ignore[arg-type]
                       rng.choice(["push", "sms", "all"]), rng.randint(1, 30), rng.randint(0, 2))  # type: ignore[arg-type]
                for _ in range(rng.randint(1, 40))
            ]  # fmt: skip
            history = [Record(r.customer_id, r.kind, "all" if r.kind == "complaint" else r.scope, r.at, r.source)
                       for r in history]  # fmt: skip
            cut = rng.randint(0, len(history))
            await store.merge(history[:cut])
            for one in history[cut:]:
                await store.record(one, {"by": "t"})
            stored = await store.consents(["a", "b", "c"])
            for customer in "abc":
                mine = [r for r in history if r.customer_id == customer]
                model = merge(mine)
                got = stored[customer]
                assert (got.push, got.sms, got.all, got.complaint_at) == (model.push, model.sms, model.all,
                                                                          model.complaint_at)  # fmt: skip
            assert await store.merge(history) == (0, len(history))  # everything again: nothing changes
    finally:
        await client.aclose()


async def test_an_import_is_idempotent_and_kept_in_small_hashes(redis_url: str) -> None:
    client = connect(redis_url, False)
    try:
        store = ContactStore(client, Keys("imp"), buckets=64)
        records = [Record(f"{6_200_000_000 + n}", "opt_out", "all", 1_700_000_000 + n % 7) for n in range(3000)]
        assert await store.import_records(iter(records), 1) == (3000, 0)
        assert await store.import_records(iter(records), 2) == (0, 3000)
        assert (await store.consent("6200000005")).source == 1
        encodings = {await client.object("encoding", store.keys.consent_bucket(b)) for b in range(64)}
        assert encodings == {b"listpack"}  # one allocation per bucket, no object per record
    finally:
        await client.aclose()


async def test_a_redis_restart_loses_no_consent_audit_or_import(tmp_path: Path) -> None:
    server = EmbeddedRedis(free_port(), tmp_path / "redis", persistent=True)
    server.start()
    try:
        client = connect(server.url, False)
        store = ContactStore(client, Keys("r"))
        await store.record(Record("C1", "opt_out", "sms", 1_700_000_000), {"by": "li.wei", "reason": "phone"})
        await store.import_records(iter([Record("C2", "complaint", "all", 1_700_000_000)]), 7)
        await store.log_import({"import": 7, "by": "zhang", "sha256": "ab"})
        await store.hold([{"id": "p1", "customer_id": "C1", "why": "opt_out:sms"}])
        await client.aclose()
        server.restart()
        client = connect(server.url, False)
        store = ContactStore(client, Keys("r"))
        assert (await store.consent("C1")).opted_out("sms")
        assert (await store.consent("C2")) == Consent(complaint_at=1_700_000_000, source=7)
        assert [e["by"] for e in await store.audit("C1")] == ["li.wei"]
        assert (await store.imports())[0]["sha256"] == "ab"
        assert [h["id"] for h in await store.held()] == ["p1"]
        await client.aclose()
    finally:
        server.stop()


def test_the_import_command_counts_bad_rows_audits_once_and_runs_again_as_a_no_op(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio
    import hashlib

    from cases.people import add
    from streams.cli.main import main as fundflow

    monkeypatch.setenv("FUNDFLOW_REDIS_URL", redis_url)
    monkeypatch.setenv("FUNDFLOW_KEY_PREFIX", "cli")

    async def setup_and_read(then: Any = None) -> Any:
        client = connect(redis_url, False)
        try:
            if then is None:
                await add(client, Keys("cli").cases, "li.wei", "analyst", "0" * 32, "zhang")
                await add(client, Keys("cli").cases, "kan", "viewer", "1" * 32, "zhang")
                return None
            return await then(ContactStore(client, Keys("cli")))
        finally:
            await client.aclose()

    asyncio.run(setup_and_read())
    good = tmp_path / "optouts.csv"
    good.write_text("customer_id,channel,status,recorded_at\nA1,push,opt_out,2025-03-01\nA2,all,opt_out,2025-03-01\n"
                    "A3,fax,opt_out,2025-03-01\nA4,sms,opt_in,someday\n", encoding="utf-8")  # fmt: skip
    assert fundflow(["consent", "import", str(good), "--by", "kan"]) == 1
    assert "not an analyst or supervisor" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("customer,channel,status,recorded_at\nA9,push,opt_out,2025-03-01\n", encoding="utf-8")
    assert fundflow(["consent", "import", str(bad), "--by", "li.wei"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fundflow: error: {bad}: line 1: unknown column 'customer'") and err.count("\n") == 1
    assert asyncio.run(setup_and_read(lambda s: s.imports())) == []  # refused before anything was written

    assert fundflow(["consent", "import", str(good), "--by", "li.wei"]) == 1  # two rows refused
    out = capsys.readouterr().out
    assert "refused line 4: channel must be one of push, sms, all" in out and "refused line 5: recorded_at" in out
    assert "consent import 1 by li.wei: 4 rows, 2 imported (2 changed, 0 already so), 2 refused" in out
    assert fundflow(["consent", "import", str(good), "--by", "li.wei"]) == 1
    assert "consent import 2 by li.wei: 4 rows, 2 imported (0 changed, 2 already so)" in capsys.readouterr().out
    first, second = asyncio.run(setup_and_read(lambda s: s.imports()))
    assert (first["by"], first["sha256"], first["changed"], first["bad"]) == (
        "li.wei", hashlib.sha256(good.read_bytes()).hexdigest(), 2, 2)  # fmt: skip
    assert first["bad_lines"][0].startswith("line 4:") and second["changed"] == 0
    a1, a2 = asyncio.run(setup_and_read(lambda s: s.consents(["A1", "A2"]))).values()
    assert a1.opted_out("push") and not a1.opted_out("sms") and a2.opted_out("sms") and a1.source == 1

    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nmarketing:\n  per_day: 1\n  opt_out: [R1, R2]\n", encoding="utf-8")
    assert fundflow(["consent", "import", str(rules), "--from-rules", "--by", "li.wei"]) == 0
    out = capsys.readouterr().out
    assert "2 imported (2 changed" in out and "now delete marketing.opt_out" in out
    assert fundflow(["consent", "import", str(rules), "--from-rules", "--by", "li.wei"]) == 0
    assert "(0 changed, 2 already so)" in capsys.readouterr().out
    r1 = asyncio.run(setup_and_read(lambda s: s.consent("R1")))
    assert r1.opted_out("push") and r1.opted_out("sms")
    assert fundflow(["rules", "check", str(rules)]) == 1
    said = capsys.readouterr()
    assert "fundflow consent import --from-rules" in said.out + said.err


async def test_consent_on_a_redis_cluster_is_one_slot_per_script(cluster_url: str) -> None:
    """Buckets spread over the slots; each merge call holds the buckets of one slot (a cluster
    refuses anything else), and reads, the audit and held pushes work there too."""
    client = connect(cluster_url, True)
    try:
        store = ContactStore(client, Keys("cl"), buckets=512, cluster=True)
        records = [Record(f"K{n}", "opt_out", "sms" if n % 2 else "push", 1_700_000_000) for n in range(2000)]
        assert await store.import_records(iter(records), 3) == (2000, 0)
        found = await store.consents([f"K{n}" for n in range(2000)])
        assert all(found[f"K{n}"].opted_out("sms" if n % 2 else "push") for n in range(2000))
        await store.record(Record("K1", "opt_in", "sms", 1_700_000_100), {"by": "li.wei"})
        assert not (await store.consent("K1")).opted_out("sms") and len(await store.audit("K1")) == 1
        assert await store.hold([{"id": "p", "customer_id": "K1"}]) == [True]
    finally:
        await client.aclose()

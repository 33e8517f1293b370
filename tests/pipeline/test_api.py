"""The HTTP API on a real Redis holding state the real pipeline wrote: access
control, every response against its OpenAPI schema, filters, the live stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from rules import fmt
from streams.api.board_models import board_openapi
from streams.api.case_models import case_openapi
from streams.api.contact_models import contact_openapi
from streams.api.models import Alerts, Customer, Finding, Health, History, Tiers, openapi_document
from streams.api.rule_models import rules_openapi
from streams.api.server import create_api
from streams.errors import ConfigError
from streams.local.servers import free_port
from streams.pipeline import BatchProcessor
from streams.settings import Settings
from tests.support.api import AUTH, PREFIX, TOKENS, records, seed
from tests.support.drain import CUSTOMERS, drain_events


@pytest.fixture
async def served(redis_url: str) -> AsyncIterator[tuple[TestClient[Any, Any], BatchProcessor]]:
    settings = Settings(key_prefix=PREFIX, api_tokens=tuple(SecretStr(t) for t in TOKENS))
    processor = await seed(redis_url, settings)
    app = create_api(settings, redis_url, f"127.0.0.1:{free_port()}")
    async with TestClient(TestServer(app)) as client:
        yield client, processor
    await processor.store.redis.aclose()


async def get(client: TestClient[Any, Any], path: str, status: int = 200) -> Any:
    response = await client.get(path, headers=AUTH)
    assert response.status == status, await response.text()
    return await response.json()


def test_refuses_to_start_without_tokens_unless_demo(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="FUNDFLOW_API_TOKENS"):
        create_api(Settings(), redis_url, "")
    assert isinstance(create_api(Settings(), redis_url, "", demo=True), web.Application)


async def test_every_data_endpoint_needs_a_valid_token(served: tuple[TestClient[Any, Any], BatchProcessor]) -> None:
    client, _ = served
    for path in ("/customers/C0001", "/customers/C0001/history", "/alerts", "/alerts/stream", "/tiers", "/metrics",
                 "/openapi.json"):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKENS[0]}"},
                        {"Authorization": f"Bearer {TOKENS[0]}x"}):  # fmt: skip
            response = await client.get(path, headers=headers)
            assert response.status == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert (await response.json()) == {"error": "missing or wrong bearer token"}
    for token in TOKENS:  # several tokens, each accepted
        response = await client.get("/tiers", headers={"Authorization": f"Bearer {token}"})
        assert response.status == 200
    for path in ("/healthz", "/", "/console/app.js"):
        assert (await client.get(path)).status == 200, path
    Health.model_validate(await (await client.get("/healthz")).json())


async def test_customer_matches_its_schema_and_the_store(served: tuple[TestClient[Any, Any], BatchProcessor]) -> None:
    client, processor = served
    body = await get(client, "/customers/C0003")
    customer = Customer.model_validate(body)
    state = await processor.store.read("C0003")
    assert state is not None and Decimal(customer.balance) == state.balance
    assert customer.tier in ("I", "II", "III", "IV") and customer.tier_cuts_refreshed_at
    # the numbers written for people beside the machine-readable ones (rules/fmt.py, CNY)
    assert customer.display["balance"] == fmt.amount(state.balance) and "," in fmt.amount(state.balance)
    share = customer.external_outflow_share_30d
    assert customer.display["external_outflow_share_30d"] == fmt.percent(Decimal(share), 1)
    assert customer.display["external_outflow_share_30d"].endswith("%") and "ledger_drift" not in customer.display
    assert (await get(client, "/customers/nobody", 404)) == {"error": "no customer 'nobody'"}
    later = await get(client, "/customers/C0003?as_of=2030-01-01T00:00:00%2B08:00")
    assert later["as_of"].startswith("2030-01-01") and later["inflow_30d"] == "0.00"
    assert "before" in (await get(client, "/customers/C0003?as_of=2000-01-01T00:00:00%2B08:00", 400))["error"]
    assert "offset" in (await get(client, "/customers/C0003?as_of=2030-01-01T00:00:00", 400))["error"]


async def test_history_ends_at_the_live_balance(served: tuple[TestClient[Any, Any], BatchProcessor]) -> None:
    client, _ = served
    history = History.model_validate(await get(client, "/customers/C0002/history"))
    customer = await get(client, "/customers/C0002")
    assert 1 <= len(history.days) <= 91
    assert history.days[-1].end_balance == customer["balance"]
    assert history.days[-1].day == customer["as_of"][:10]
    days = [d.day for d in history.days]
    assert days == sorted(set(days))
    running = Decimal(history.days[0].end_balance)
    for day in history.days[1:]:  # each day ends at the previous end plus its own flows
        running += Decimal(day.inflow) - Decimal(day.outflow)
        assert Decimal(day.end_balance) == running


async def test_alerts_filter_and_match_their_schema(served: tuple[TestClient[Any, Any], BatchProcessor]) -> None:
    client, _ = served
    every = Alerts.model_validate(await get(client, "/alerts?limit=1000"))
    assert every.count == len(every.alerts) > 0 and every.cursor
    rules = {f.rule for f in every.alerts}
    assert "large_external_outflow" in rules
    drained = CUSTOMERS[0]
    mine = Alerts.model_validate(await get(client, f"/alerts?customer={drained}"))
    assert mine.alerts and {f.customer_id for f in mine.alerts} == {drained}
    assert {f.id for f in mine.alerts} == {f.id for f in every.alerts if f.customer_id == drained}
    high = Alerts.model_validate(await get(client, "/alerts?severity=high&category=outflow_risk"))
    assert high.alerts and all(f.severity == "high" and f.category == "outflow_risk" for f in high.alerts)
    one = Alerts.model_validate(await get(client, "/alerts?rule=large_external_outflow&limit=1"))
    assert one.count == 1 and one.alerts[0].rule == "large_external_outflow"
    assert (await get(client, "/alerts?rule=no_such_rule"))["count"] == 0
    await get(client, "/alerts?limit=0", 400)
    await get(client, "/alerts?limit=lots", 400)


async def test_tiers_and_openapi(served: tuple[TestClient[Any, Any], BatchProcessor]) -> None:
    client, _ = served
    tiers = Tiers.model_validate(await get(client, "/tiers?top=3"))
    assert tiers.customers == 8 + len(CUSTOMERS) - 1 == sum(tiers.counts.values())  # the last one comes later
    assert len(tiers.top) == 3 and tiers.cuts is not None
    assert tiers.cuts_display is not None and tiers.cuts_display.q2 == fmt.amount(Decimal(tiers.cuts.q2))
    await get(client, "/tiers?top=x", 400)
    document = await get(client, "/openapi.json")
    assert document == json.loads(
        json.dumps(
            rules_openapi(contact_openapi(board_openapi(case_openapi(openapi_document(document["info"]["version"])))))
        )
    )
    served_paths = {
        r.resource.canonical
        for r in client.app.router.routes()  # type: ignore[union-attr]
        if r.resource is not None and not r.resource.canonical.startswith("/console") and r.method in ("GET", "POST")
    }
    assert served_paths - {"/", "/favicon.ico"} == set(document["paths"])
    for name in ("Customer", "History", "Alerts", "Tiers", "Finding", "Health"):
        assert name in document["components"]["schemas"]


async def read_events(response: Any, wanted: int, timeout: float = 10) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    buffer = b""

    async def pump() -> None:
        nonlocal buffer
        async for chunk in response.content.iter_any():
            buffer += chunk
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
                if b"data" in lines:
                    found.append((lines[b"id"].decode(), json.loads(lines[b"data"])))
                    if len(found) >= wanted:
                        return

    await asyncio.wait_for(pump(), timeout)
    return found


async def test_stream_delivers_new_findings_live_and_resumes(
    served: tuple[TestClient[Any, Any], BatchProcessor],
) -> None:
    client, processor = served
    last_two = drain_events()[-2:]  # the last drained customer's big external debit and its credit
    stream = await client.get(f"/alerts/stream?customer={last_two[0]['customer_id']}", headers=AUTH)
    assert stream.status == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
    await asyncio.sleep(0.2)
    await processor.process(records(last_two, first_offset=10_000))
    live = await read_events(stream, 1)
    stream.close()
    ids = {f["id"] for _, f in live}
    for _, finding in live:
        Finding.model_validate(finding)
        assert finding["customer_id"] == last_two[0]["customer_id"]
    # resume from before them with Last-Event-ID: the same findings again, nothing lost between connections
    before = (await get(client, "/alerts?limit=1000"))["alerts"]
    assert ids <= {f["id"] for f in before}
    start = await client.get("/alerts/stream?since=0-0", headers=AUTH)
    replayed = await read_events(start, len(before))
    start.close()
    assert {f["id"] for _, f in replayed} == {f["id"] for f in before}
    cursor = replayed[-1][0]
    resumed = await client.get("/alerts/stream", headers={**AUTH, "Last-Event-ID": replayed[-2][0]})
    again = await read_events(resumed, 1)
    resumed.close()
    assert again[0][0] == cursor
    await get(client, "/alerts/stream?since=DROP", 400)


async def test_metrics_have_no_customer_ids(served: tuple[TestClient[Any, Any], BatchProcessor]) -> None:
    client, _ = served
    await get(client, "/customers/C0004")
    await get(client, "/customers/ghost", 404)
    response = await client.get("/metrics", headers=AUTH)
    text = await response.text()
    assert 'fundflow_api_requests_total{route="/customers/{customer_id}",status="200"}' in text
    assert 'route="/customers/{customer_id}",status="404"' in text
    for customer in ("C0004", "ghost", *CUSTOMERS):
        assert customer not in text


async def test_readiness_reports_each_dependency(redis_url: str) -> None:
    settings = Settings(key_prefix=PREFIX, api_tokens=(SecretStr("t-readyz-0123456789"),))
    dead_kafka = create_api(settings, redis_url, f"127.0.0.1:{free_port()}")
    async with TestClient(TestServer(dead_kafka)) as client:
        response = await client.get("/readyz")
        body = Health.model_validate(await response.json())
        assert response.status == 503 and body.status == "not_ready"
        assert body.checks["redis"] == "ok" and body.checks["kafka"].startswith("unreachable")
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        ready = create_api(settings, redis_url, f"127.0.0.1:{port}")
        async with TestClient(TestServer(ready)) as client:
            response = await client.get("/readyz")
            assert response.status == 200 and (await response.json())["status"] == "ready"
        dead_redis = create_api(settings, f"redis://127.0.0.1:{free_port()}/0", f"127.0.0.1:{port}")
        async with TestClient(TestServer(dead_redis)) as client:
            response = await client.get("/readyz")
            body = Health.model_validate(await response.json())
            assert response.status == 503 and body.checks["redis"].startswith("unreachable")
            assert body.checks["kafka"] == "ok"
            data = await client.get("/customers/C1", headers={"Authorization": "Bearer t-readyz-0123456789"})
            assert data.status == 503 and "Redis unavailable" in (await data.json())["error"]
    finally:
        listener.close()
        await listener.wait_closed()

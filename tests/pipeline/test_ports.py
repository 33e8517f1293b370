"""Issue 20, row 13: the ports that are not the API listen on 127.0.0.1 unless told
(``FUNDFLOW_WEB_HOST``) and serve only what FundFlow documents. Real servers: the
worker's own Faust web server (with a real Redis behind ``/readyz``) and the relay's
Prometheus server."""

from __future__ import annotations

import asyncio
import urllib.request

import aiohttp
import pytest

from streams.app import create_app
from streams.local.servers import free_port
from streams.settings import Settings
from streams.telemetry import serve_metrics

FAUST_PAGES = ("/", "/router/", "/table/", "/graph/", "/stats/", "/assignment/", "/performance/", "/signal/")


async def test_the_worker_web_port_is_loopback_and_serves_only_our_pages(redis_url: str) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # a "Kafka" for /readyz
    port = free_port()
    app = create_app(Settings(web_port=port), f"127.0.0.1:{listener.sockets[0].getsockname()[1]}", redis_url)
    await app.web.start()
    try:
        assert [host for host, _ in app.web._runner.addresses] == ["127.0.0.1"]  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 200, path
            for path in FAUST_PAGES:  # cluster topology, table contents, statistics: none of it
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    assert response.status == 404, path
    finally:
        await app.web.stop()
        listener.close()
        await listener.wait_closed()


def test_the_worker_binds_what_fundflow_web_host_says(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().web_host == "127.0.0.1"
    monkeypatch.setenv("FUNDFLOW_WEB_HOST", "0.0.0.0")
    settings = Settings()
    app = create_app(settings, "127.0.0.1:1", "redis://127.0.0.1:1/0")
    assert app.conf.web_bind == "0.0.0.0"


def test_the_relay_metrics_port_is_loopback_by_default() -> None:
    port = free_port()
    server = serve_metrics(port, Settings().web_host)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert b"fundflow_webhook_deliveries_total" in response.read()
    finally:
        server.shutdown()
        server.server_close()

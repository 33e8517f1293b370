"""``fundflow api``: the HTTP API and the web console, reading Redis.

Its own process (scale it independently of the workers; it never writes
customer state). Every endpoint but ``/healthz`` and ``/readyz`` needs
``Authorization: Bearer <token>``, checked in constant time against each of
``FUNDFLOW_API_TOKENS``; with no token configured it refuses to start unless
told it is a local demo (``--demo``). The console's static files (``/`` and
``/console/``) hold no data and are served without a token; the console asks
for one and sends it with every call (``fetch``, also for the live stream, so
tokens never travel in URLs or logs).

| endpoint | what |
| --- | --- |
| ``GET /customers/{id}`` | metrics.md fields, segments, contribution, live tier |
| ``GET /customers/{id}/history`` | end-of-day balance and flows per kept day |
| ``GET /alerts`` | recent findings (the ``{p}:feed`` stream, or the customer's list), filtered |
| ``GET /alerts/stream`` | Server-Sent Events from the feed, resumable with ``Last-Event-ID`` |
| ``GET /tiers`` | tier counts, cut points, top customers |
| ``/cases``, ``/rules/precision`` | the analyst's desk (``streams.api.cases``) |
| ``GET /healthz``, ``GET /readyz`` | up; Kafka and Redis reachable (503 and why, if not) |
| ``GET /metrics`` | Prometheus |
| ``GET /openapi.json`` | the OpenAPI document (``streams.api.models``) |

What can go wrong: Redis down -> data endpoints answer 503 with one line,
``/readyz`` says which dependency failed; the process stays up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from rules.contribution import tier_of
from rules.metrics import daily_history
from rules.money import money
from rules.state import CustomerState
from streams import __version__, telemetry
from streams.api.case_models import case_openapi
from streams.api.cases import setup_cases
from streams.api.models import openapi_document
from streams.api.roles import DEMO, PRINCIPAL, Principal, identify, principals
from streams.clients import connect
from streams.health import readiness
from streams.keys import Keys
from streams.settings import Settings
from streams.snapshot import customer_row, parse_as_of
from streams.store import StateStore
from streams.tiers import distribution, read_cuts

CONSOLE_DIR = Path(__file__).parent / "console"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
FILTERS = ("rule", "category", "customer_id", "severity", "type")
FEED_SCAN = 5000  # newest feed entries /alerts looks through when filtering
STREAM_BLOCK_MS = 2000
KEEPALIVE_SECONDS = 15.0

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", StateStore)
TOKENS = web.AppKey("tokens", tuple)
BOOTSTRAP = web.AppKey("bootstrap", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _route(request: web.Request) -> str:
    """A bounded label for metrics: the route pattern, never the customer id."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except RedisError as exc:
        status = 503
        telemetry.REDIS_ERRORS.labels("api").inc()
        return _error(503, f"Redis unavailable: {type(exc).__name__}")
    finally:
        route = _route(request)
        telemetry.API_REQUESTS.labels(route, str(status)).inc()
        telemetry.API_SECONDS.labels(route).observe(time.perf_counter() - started)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens: tuple[tuple[bytes, Principal], ...] = request.app[TOKENS]
    if not tokens:
        request[PRINCIPAL] = DEMO
    if not tokens or request.path in OPEN_PATHS or request.path.startswith("/console/"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    given = header[7:].strip().encode() if header[:7].lower() == "bearer " else b""
    principal = identify(given, tokens)  # every token compared, in constant time
    if principal is None:
        response = _error(401, "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="fundflow"'
        return response
    request[PRINCIPAL] = principal
    return await handler(request)


def _as_of(request: web.Request, last_us: int | None) -> int:
    text = request.query.get("as_of")
    if not text:
        return last_us or 0
    try:
        as_of = parse_as_of(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": f"as_of: {exc}"}).decode(), content_type="application/json"
        ) from None
    if last_us is not None and as_of < last_us:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": "as_of is before the customer's latest event"}).decode(),
            content_type="application/json",
        )
    return as_of


async def _customer(request: web.Request) -> CustomerState:
    customer_id = request.match_info["customer_id"]
    state = await request.app[STORE].read(customer_id)
    if state is None:
        raise web.HTTPNotFound(
            text=orjson.dumps({"error": f"no customer {customer_id!r}"}).decode(), content_type="application/json"
        )
    return state


async def get_customer(request: web.Request) -> web.Response:
    store, settings = request.app[STORE], request.app[SETTINGS]
    state = await _customer(request)
    row = customer_row(state, _as_of(request, state.last_us), settings)
    cuts, info = await read_cuts(store.redis, store.keys)
    row["tier"] = tier_of(Decimal(row["contribution"]), cuts) if cuts is not None else None
    row["tier_cuts_refreshed_at"] = info.get("refreshed_at")
    return _json(row)


async def get_history(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    state = await _customer(request)
    as_of = _as_of(request, state.last_us)
    days = [
        {
            "day": row.day.isoformat(),
            "end_balance": money(row.end_balance),
            "inflow": money(row.inflow),
            "outflow": money(row.outflow),
            "txn_count": row.txn_count,
        }
        for row in daily_history(state, as_of, settings.zone)
    ]
    from streams.snapshot import iso

    return _json({"customer_id": state.customer_id, "as_of": iso(as_of, settings), "days": days})


def _wanted(request: web.Request) -> dict[str, str]:
    wanted = {name: request.query[name] for name in FILTERS if request.query.get(name)}
    if request.query.get("customer"):
        wanted["customer_id"] = request.query["customer"]
    return wanted


def _matches(finding: dict[str, Any], wanted: dict[str, str]) -> bool:
    return all(finding.get(name) == value for name, value in wanted.items())


def _limit(request: web.Request, default: int = 100, most: int = 1000) -> int:
    text = request.query.get("limit", str(default))
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": f"limit must be 1..{most}"}).decode(), content_type="application/json"
        )
    return int(text)


async def get_alerts(request: web.Request) -> web.Response:
    store = request.app[STORE]
    wanted, limit = _wanted(request), _limit(request)
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    redis = store.redis
    if "customer_id" in wanted:  # the customer's own list: complete for them, not just the feed's tail
        for entry in await store.recent_findings(wanted["customer_id"], 200):
            finding = _loads(entry.split(b"\n", 2)[-1])
            if finding is not None and _matches(finding, wanted):
                found.append(finding)
                if len(found) >= limit:
                    break
        newest = cast(list[Any], await redis.xrevrange(store.keys.feed, count=1))
        cursor = newest[0][0].decode() if newest else None
    else:
        entries = cast(list[Any], await redis.xrevrange(store.keys.feed, count=FEED_SCAN))
        cursor = entries[0][0].decode() if entries else None
        for _, fields in entries:
            finding = _loads(fields.get(b"v", b""))
            if finding is not None and _matches(finding, wanted):
                found.append(finding)
                if len(found) >= limit:
                    break
    return _json({"alerts": found, "count": len(found), "cursor": cursor})


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def stream_alerts(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    wanted = _wanted(request)
    last = request.headers.get("Last-Event-ID") or request.query.get("since") or "$"
    if last != "$" and not _valid_stream_id(last):
        return _error(400, "since / Last-Event-ID must be a feed id like 1700000000000-0")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    if last == "$":  # pin "now" to a concrete id so nothing between two reads is skipped
        newest = cast(list[Any], await store.redis.xrevrange(store.keys.feed, count=1))
        last = newest[0][0].decode() if newest else "0-0"
    await response.write(b"retry: 2000\n: connected\n\n")
    quiet_since = time.monotonic()
    telemetry.API_STREAMS.inc()
    try:
        while True:
            try:
                replies = cast(
                    list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                    await store.redis.xread({store.keys.feed: last}, count=200, block=STREAM_BLOCK_MS),
                )
            except RedisError:
                await response.write(b": redis unavailable, retrying\n\n")
                await asyncio.sleep(1)
                continue
            chunks = []
            for _, entries in replies or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    raw = fields.get(b"v", b"")
                    finding = _loads(raw)
                    if finding is not None and _matches(finding, wanted):
                        chunks.append(b"id: %s\nevent: finding\ndata: %s\n\n" % (entry_id, raw))
            if chunks:
                await response.write(b"".join(chunks))
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_SECONDS:
                await response.write(b": keepalive\n\n")
                quiet_since = time.monotonic()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        telemetry.API_STREAMS.dec()
    return response


def _valid_stream_id(text: str) -> bool:
    head, _, tail = text.partition("-")
    return head.isdigit() and (tail == "" or tail.isdigit()) and len(text) <= 41


async def get_tiers(request: web.Request) -> web.Response:
    store = request.app[STORE]
    text = request.query.get("top", "10")
    if not text.isdigit() or not 0 <= int(text) <= 100:
        return _error(400, "top must be 0..100")
    top = int(text)
    return _json(await distribution(store.redis, store.keys, top))


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "checks": {}})


async def readyz(request: web.Request) -> web.Response:
    ready, checks = await readiness(request.app[STORE].redis, request.app[BOOTSTRAP])
    telemetry.API_READY.set(1 if ready else 0)
    return _json({"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(case_openapi(openapi_document(__version__)))


async def console_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CONSOLE_DIR / "index.html")


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def create_api(settings: Settings, redis_url: str, bootstrap: str, *, demo: bool = False) -> web.Application:
    tokens = principals(settings)
    if not tokens and not demo:
        from streams.errors import ConfigError

        raise ConfigError("no FUNDFLOW_API_TOKENS configured: refusing to serve customer data without access control "
                          "(pass --demo for a local demo)")  # fmt: skip
    app = web.Application(middlewares=[observe, authenticate], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[BOOTSTRAP] = bootstrap
    app[STORE] = StateStore(connect(redis_url, settings.redis_cluster), Keys(settings.key_prefix))

    async def close_redis(app: web.Application) -> None:
        await app[STORE].redis.aclose()

    app.on_cleanup.append(close_redis)
    setup_cases(app, app[STORE].redis, app[STORE].keys, settings, tuple(p for _, p in tokens) or (DEMO,))
    for path, handler in (
        ("/customers/{customer_id}", get_customer),
        ("/customers/{customer_id}/history", get_history),
        ("/alerts", get_alerts),
        ("/alerts/stream", stream_alerts),
        ("/tiers", get_tiers),
        ("/healthz", healthz),
        ("/readyz", readyz),
        ("/metrics", metrics),
        ("/openapi.json", openapi),
        ("/", console_index),
        ("/favicon.ico", favicon),
    ):
        app.router.add_get(path, handler)
    app.router.add_static("/console/", CONSOLE_DIR)
    return app


def run_api(settings: Settings, redis_url: str, bootstrap: str, host: str, port: int, demo: bool) -> int:
    app = create_api(settings, redis_url, bootstrap, demo=demo)
    print(f"FundFlow API and console on http://{host}:{port}/  (API docs: /openapi.json)", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
    return 0

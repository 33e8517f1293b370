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
| ``/contact/...`` | consent, complaints, held pushes, imports (``streams.api.contact``) |
| ``GET /board`` | the 看板: the day's flows, findings, cases, tiers (``streams.api.board``) |
| ``/rules/versions``, ``/rules/shadow/...`` | rule versions, four eyes, the shadow report (``streams.api.rules``) |
| ``GET /healthz``, ``GET /readyz`` | up; Kafka and Redis reachable (503 and why, if not) |
| ``GET /metrics`` | Prometheus |
| ``GET /openapi.json`` | the OpenAPI document (``streams.api.models``) |

Query parameters are validated in one place (``streams.api.params``): a value
outside the documented range is a 400 with one line. Live streams share one Redis
reader per process (``streams.api.feed``) and are capped per token
(``FUNDFLOW_API_MAX_STREAMS_PER_TOKEN``, 429) and in total
(``FUNDFLOW_API_MAX_STREAMS``, 503); a client that left is noticed at the next
heartbeat (``FUNDFLOW_API_STREAM_HEARTBEAT_SECONDS``).

What can go wrong: Redis down -> data endpoints answer 503 with one line,
``/readyz`` says which dependency failed; the process stays up. Anything
unexpected is ONE error path (``guard``): logged with a request id, answered 500
with that id and no traceback; after a stream's headers were sent it ends the
stream with ``event: error`` instead (never a second response inside the first).
Every response carries ``X-Request-Id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from contact.routes import ContactConfigError, load_contact
from rules import fmt
from rules.contribution import tier_of
from rules.metrics import daily_history
from rules.money import money
from rules.state import CustomerState
from streams import __version__, telemetry
from streams.api import params
from streams.api.board import setup_board
from streams.api.board_models import board_openapi
from streams.api.case_models import case_openapi
from streams.api.cases import setup_cases
from streams.api.contact import setup_contact
from streams.api.contact_models import contact_openapi
from streams.api.feed import READ_COUNT, FeedHub, Subscription, TooManyStreams
from streams.api.models import openapi_document, shown
from streams.api.roles import DEMO, PRINCIPAL, Principal, identify, principals
from streams.api.rule_models import rules_openapi
from streams.api.rules import setup_rules
from streams.clients import connect
from streams.errors import ConfigError
from streams.health import readiness
from streams.retry import outage_policy
from streams.rulestep import reader_store
from streams.settings import Settings
from streams.storage.snapshot import customer_row, iso
from streams.storage.store import StateStore
from streams.tiers import distribution, read_cuts

CONSOLE_DIR = Path(__file__).parent / "console"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/favicon.ico"})
FILTERS = ("rule", "category", "customer_id", "severity", "type")
FEED_SCAN = 5000  # newest feed entries /alerts looks through when filtering
ANONYMOUS = "anonymous"  # the stream quota's name for requests without a token (--demo)

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", StateStore)
TOKENS = web.AppKey("tokens", tuple)
BOOTSTRAP = web.AppKey("bootstrap", str)
HUB = web.AppKey("hub", FeedHub)
READY_TIMER = web.AppKey("ready_timer", asyncio.Task)
READY_CHECK_SECONDS = 5.0  # as often as a worker checks its dependencies (streams.app.timers)
REQUEST_ID = web.RequestKey("request_id", str)
TOKEN_NAME = web.RequestKey("token", str)  # which configured token (by position) authenticated the request
STREAM = web.RequestKey("stream", web.StreamResponse)  # the StreamResponse of /alerts/stream

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
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one error path and the request metrics: 400 for a refused parameter, 503 for
    Redis, a logged 500 with a request id (and no traceback) for anything else."""
    started = time.perf_counter()
    request_id = uuid.uuid4().hex[:16]
    request[REQUEST_ID] = request_id
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # aiohttp's own: 404 for an unknown path, 405, 413
        if exc.status < 400 or exc.content_type == "application/json":
            exc.headers["X-Request-Id"] = request_id
            _count(request, exc.status, started)
            raise
        response = _error(exc.status, _plain_error(exc))  # every error body is JSON
        for name in ("Allow", "WWW-Authenticate", "Retry-After"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
    except params.BadRequest as exc:
        log.info("request %s %s: 400 %s", request_id, _route(request), exc)
        response = _error(400, str(exc))
    except RedisError as exc:
        telemetry.REDIS_ERRORS.labels("api").inc()
        log.warning("request %s %s: Redis unavailable: %s", request_id, _route(request), type(exc).__name__)
        response = await _failed(request, 503, f"Redis unavailable: {type(exc).__name__}")
    except Exception:
        log.exception("request %s %s failed", request_id, _route(request))
        response = await _failed(request, 500, "internal error")
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
    _count(request, response.status, started)
    return response


def _plain_error(exc: web.HTTPException) -> str:
    """aiohttp's plain-text error, as one line for a JSON body."""
    if exc.status == 413:
        return "the request body is larger than this API takes"
    if exc.status == 405:
        return f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    return (exc.text or exc.reason or "error").splitlines()[0].removeprefix(f"{exc.status}: ")


def _count(request: web.Request, status: int, started: float) -> None:
    route = _route(request)
    telemetry.API_REQUESTS.labels(route, str(status)).inc()
    telemetry.API_SECONDS.labels(route).observe(time.perf_counter() - started)


async def _failed(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """The answer to a failure: a JSON error, or, when a stream already sent its headers,
    an ``event: error`` that ends it (a second status line would corrupt the response)."""
    request_id = request[REQUEST_ID]
    stream = cast(web.StreamResponse | None, request.get(STREAM))
    if stream is not None and stream.prepared:
        data = orjson.dumps({"error": message, "request_id": request_id})
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client may be gone already
            await stream.write(b"event: error\ndata: %s\n\n" % data)
        return stream
    return _json({"error": message, "request_id": request_id}, status)


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens: tuple[tuple[bytes, Principal], ...] = request.app[TOKENS]
    if not tokens:
        request[PRINCIPAL] = DEMO
    if not tokens or request.path in OPEN_PATHS or request.path.startswith("/console/"):
        request[TOKEN_NAME] = ANONYMOUS
        return await handler(request)
    given = params.bearer(request.headers.get("Authorization", "")) or b""
    principal = identify(given, tokens)  # every token compared, in constant time
    if principal is None:
        response = _error(401, "missing or wrong bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="fundflow"'
        return response
    request[PRINCIPAL] = principal
    request[TOKEN_NAME] = principal.name
    return await handler(request)


def _as_of(request: web.Request, last_us: int | None) -> int:
    as_of = params.as_of(request.query)
    if as_of is None:
        return last_us or 0
    if last_us is not None and as_of < last_us:
        raise params.BadRequest("as_of is before the customer's latest event")
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
    row["display"] = shown(row, settings.currency)
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
    return _json({"customer_id": state.customer_id, "as_of": iso(as_of, settings), "days": days})


def _wanted(request: web.Request) -> dict[str, str]:
    wanted = {name: request.query[name] for name in FILTERS if request.query.get(name)}
    if request.query.get("customer"):
        wanted["customer_id"] = request.query["customer"]
    return wanted


def _matches(finding: dict[str, Any], wanted: dict[str, str]) -> bool:
    return all(finding.get(name) == value for name, value in wanted.items())


async def get_alerts(request: web.Request) -> web.Response:
    store = request.app[STORE]
    wanted, limit = _wanted(request), params.integer(request.query, "limit", params.LIMIT)
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
    settings, hub = request.app[SETTINGS], request.app[HUB]
    wanted = _wanted(request)
    given = request.headers.get("Last-Event-ID") or request.query.get("since")
    since = params.stream_id(given) if given else None
    try:
        subscription = await hub.subscribe(request[TOKEN_NAME])
    except TooManyStreams as exc:
        log.info("request %s: stream refused: %s", request[REQUEST_ID], exc)
        telemetry.API_STREAMS_LIMITED.labels("token" if exc.per_token else "server").inc()
        refused = _error(429 if exc.per_token else 503, str(exc))
        refused.headers["Retry-After"] = "5"
        return refused
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                 "X-Request-Id": request[REQUEST_ID]}
    )  # fmt: skip
    request[STREAM] = response
    telemetry.API_STREAMS.inc()
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n: connected\n\n")
        await _follow(response, hub, subscription, since, wanted, settings.api_stream_heartbeat_seconds)
    except ConnectionResetError:  # the client left: noticed at the latest by the next heartbeat
        pass
    finally:
        hub.unsubscribe(subscription)
        telemetry.API_STREAMS.dec()
    return response


async def _follow(
    response: web.StreamResponse,
    hub: FeedHub,
    subscription: Subscription,
    since: str | None,
    wanted: dict[str, str],
    heartbeat: float,
) -> None:
    """Write the feed after ``since`` (read back with paged XRANGE up to where the live
    subscription began), then the live entries, with a comment every ``heartbeat``
    seconds of silence: a write to a client that left fails, and that ends the stream."""
    position = params.parse_stream_id(since or subscription.start)
    if since is not None:
        after = since
        while True:
            entries = await hub.history(after, subscription.start)
            await response.write(_events(entries, wanted, position))
            if len(entries) < READ_COUNT:
                break
            after = entries[-1][0].decode()
            position = params.parse_stream_id(after)
    written = time.monotonic()
    while not (subscription.overflowed and subscription.queue.empty()):
        try:
            entries = [await asyncio.wait_for(subscription.queue.get(), heartbeat)]
        except TimeoutError:
            entries = []
        while not subscription.queue.empty():
            entries.append(subscription.queue.get_nowait())
        chunk = _events(entries, wanted, position)
        if entries:
            position = max(position, params.parse_stream_id(entries[-1][0].decode()))
        if not chunk and time.monotonic() - written >= heartbeat:
            chunk = b": keepalive\n\n"
        if chunk:
            await response.write(chunk)
            written = time.monotonic()
    telemetry.API_STREAMS_LIMITED.labels("slow").inc()
    error = orjson.dumps({"error": "the client reads too slowly; resume with Last-Event-ID"})
    await response.write(b"event: error\ndata: %s\n\n" % error)


def _events(entries: list[tuple[bytes, bytes]], wanted: dict[str, str], after: tuple[int, int]) -> bytes:
    """The SSE text of the entries past ``after`` that match the filters."""
    chunks = []
    for entry_id, raw in entries:
        if params.parse_stream_id(entry_id.decode()) <= after:
            continue
        finding = _loads(raw)
        if finding is not None and _matches(finding, wanted):
            chunks.append(b"id: %s\nevent: finding\ndata: %s\n\n" % (entry_id, raw))
    return b"".join(chunks)


async def get_tiers(request: web.Request) -> web.Response:
    store = request.app[STORE]
    top = params.integer(request.query, "top", params.TOP)
    body = await distribution(store.redis, store.keys, top)
    cuts = body.get("cuts")
    currency = request.app[SETTINGS].currency
    body["cuts_display"] = {q: fmt.amount(Decimal(v), currency) for q, v in cuts.items()} if cuts else None
    return _json(body)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok", "checks": {}})


async def readyz(request: web.Request) -> web.Response:
    ready, checks = await readiness(request.app[STORE].redis, request.app[BOOTSTRAP])
    telemetry.API_READY.set(1 if ready else 0)
    return _json({"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503)


async def keep_ready_current(app: web.Application) -> None:
    """fundflow_api_ready and fundflow_dependency_up kept by the process itself: where nothing
    probes /readyz (compose, a VM) the gauge would otherwise say what the last probe saw, or
    nothing at all."""
    while True:
        try:
            ready, _ = await readiness(app[STORE].redis, app[BOOTSTRAP])
            telemetry.API_READY.set(1 if ready else 0)
        except Exception:  # a view of health: never let it end the timer
            log.exception("readiness check failed")
            telemetry.API_READY.set(0)
        await asyncio.sleep(READY_CHECK_SECONDS)


async def start_ready_timer(app: web.Application) -> None:
    app[READY_TIMER] = asyncio.create_task(keep_ready_current(app), name="api-readiness")


async def stop_ready_timer(app: web.Application) -> None:
    app[READY_TIMER].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await app[READY_TIMER]


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest() + generate_latest(telemetry.API_REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(rules_openapi(contact_openapi(board_openapi(case_openapi(openapi_document(__version__))))))


async def console_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(CONSOLE_DIR / "index.html")


async def favicon(request: web.Request) -> web.Response:
    return web.Response(status=204)


def create_api(settings: Settings, redis_url: str, bootstrap: str, *, demo: bool = False) -> web.Application:
    tokens = principals(settings)
    if not tokens and not demo:
        raise ConfigError("no FUNDFLOW_API_TOKENS configured: refusing to serve customer data without access control "
                          "(pass --demo for a local demo)")  # fmt: skip
    app = web.Application(middlewares=[guard, authenticate], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app[TOKENS] = tokens
    app[BOOTSTRAP] = bootstrap
    store = reader_store(connect(redis_url, settings.redis_cluster), settings)
    app[STORE] = store
    try:
        table = load_contact(settings.contact_file)
    except ContactConfigError as exc:
        raise ConfigError(str(exc)) from None
    app[HUB] = FeedHub(
        store.redis,
        store.keys.feed,
        max_streams=settings.api_max_streams,
        max_per_token=settings.api_max_streams_per_token,
        policy=outage_policy(settings),
    )

    async def close_redis(app: web.Application) -> None:
        await app[HUB].close()
        # bounded too: closing waits for connections in use, and must not hang a shutdown
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app[STORE].redis.aclose(), 5)

    app.on_startup.append(start_ready_timer)
    app.on_cleanup.append(stop_ready_timer)
    app.on_cleanup.append(close_redis)
    setup_cases(app, app[STORE].redis, app[STORE].keys, settings, tuple(p for _, p in tokens) or (DEMO,),
                registered=bool(tokens), contact=table)  # fmt: skip
    setup_board(app, app[STORE].redis, app[STORE].keys, settings)
    setup_rules(app, app[STORE].redis, app[STORE].keys, settings)
    setup_contact(app, app[STORE].redis, app[STORE].keys, settings, table)
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
    # refused parameters and streams (INFO), Redis failures (WARNING), 500s with their
    # traceback (ERROR), each with its request id; never a token, never a query value
    logging.getLogger(__name__).setLevel(logging.INFO)
    line = f"FundFlow API and console on http://{host}:{port}/  (API docs: /openapi.json)"

    def listening(_: str) -> None:  # (run_app calls it once the port is bound: a caller may connect then)
        print(line, flush=True)

    # SIGINT / SIGTERM: streams.stopping (installed by the CLI) raises KeyboardInterrupt, which
    # run_app answers with its graceful cleanup; open /alerts/stream responses get 2 s.
    web.run_app(app, host=host, port=port, print=listening, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    return 0

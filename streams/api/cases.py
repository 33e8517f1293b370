"""The analyst's desk over HTTP: list, read and work cases; rule precision.

| endpoint | who | what |
| --- | --- | --- |
| ``GET /cases`` | everyone | filtered (status, assignee, rule, category, severity, tier, customer, type, age) |
| ``GET /cases/{id}`` | everyone | the case, the newest comments and trail entries (with cursors), findings |
| ``POST /cases/{id}/assign`` | analyst (self), supervisor | ``{"assignee": name or null}`` |
| ``POST /cases/{id}/comment`` | analyst (own/unassigned), supervisor | ``{"text": ...}`` |
| ``POST /cases/{id}/transition`` | analyst (own/unassigned), supervisor | ``{"to", "outcome", "note", "reason"}`` |
| ``POST /cases/bulk/assign`` | supervisor | ``{"ids": [...], "assignee": ...}`` |
| ``POST /cases/bulk/dismiss`` | supervisor | ``{"ids": [...], "note": ...}`` |
| ``GET /rules/precision`` | everyone | per rule: precision, volume, median times |
| ``GET /whoami`` | everyone | the caller's name and role, and the names cases can be assigned to |

Every POST needs an ``Idempotency-Key`` header (unique per intended change):
the first request's answer is stored with the change in one atomic step, and
a retry with the same key (same token, same request) gets that answer again,
byte for byte and marked ``Idempotent-Replayed: true``, without changing anything,
however many retries run at once; the same key with another request is a 422.
Keys are scoped by the token (its fingerprint), never by the name it claims.

Why a request is refused is the case desk's (``cases.model.Reason``); which HTTP status
answers each reason is said here, in ``STATUS_OF``, and nowhere else.

The API process also runs the case intake (``cases.store``): a background
task that reads the findings feed and opens or joins cases; every API replica
may run it (the intake is exactly-once per finding id), and it refreshes the
per-rule gauges every ``GAUGES_EVERY_SECONDS``.

What can go wrong: Redis down -> 503 (the server's middleware); the intake
waits and resumes from its stored cursor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from cases import people as registry
from cases.model import (
    CASE_TYPES,
    CATEGORIES,
    CONFIRMING,
    DISMISSALS,
    QUEUES,
    SEVERITIES,
    STATUSES,
    TIERS,
    Action,
    Assign,
    Case,
    Comment,
    Reason,
    Refused,
    Transition,
    article,
    outcomes_for,
    valid_name,
)
from cases.store import CaseFilter, CaseStore, Idempotency, Page, Stored, fingerprint
from contact.routes import ContactConfig
from streams import telemetry
from streams.api.case_models import (
    AssignBody,
    BulkAssignBody,
    BulkDismissBody,
    CommentBody,
    TransitionBody,
    all_outcomes,
)
from streams.api.roles import Principal, caller
from streams.errors import ConfigError
from streams.retry import OUTAGES, RetryPolicy, outage_policy, stop_requested, wait
from streams.settings import Role, Settings
from streams.storage.keys import Keys

log = logging.getLogger(__name__)

CASES = web.AppKey("cases", CaseStore)
ASSIGNABLE: web.AppKey[frozenset[str]] = web.AppKey("assignable", frozenset)
ZONE = web.AppKey("zone", ZoneInfo)
# Set once the people registry backs this process's tokens (``cases.people.check``); until then no case changes.
PEOPLE_CHECKED = web.AppKey("people_checked", asyncio.Event)
PEOPLE_REFUSED = web.AppKey("people_refused", list)  # why the registry refused them, once it has
GAUGES_EVERY_SECONDS = 30.0
INTAKE_BLOCK_MS = 1000
LIST_PARAMS = frozenset(
    {"status", "assignee", "rule", "category", "severity", "tier", "queue", "customer", "type", "min_age", "max_age",
     "limit", "offset"}
)  # fmt: skip
_DURATION = re.compile(r"^([0-9]{1,9})([smhd])$")  # ASCII digits: \d also takes "٣" (streams.api.params)
_NUMBER = re.compile(r"[0-9]{1,20}")
_CASE_ID = re.compile(r"[0-9]{1,18}")  # case_models.MAX_CASE_ID
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")  # no space: a bulk item's derived key has one (Idempotency.scoped)
PAGE = 50  # comments and trail entries a case read returns at most per list (then a cursor)
CASE_PARAMS = frozenset({"comments_before", "audit_before", "limit"})
Body = TypeVar("Body", bound=BaseModel)
OK = 200  # a change made (and the status its answer is kept with under its Idempotency-Key)
STATUS_OF: dict[Reason, int] = {
    Reason.MALFORMED: 400,
    Reason.BUSY: 503,  # (retry: nothing was decided)
    Reason.FORBIDDEN: 403,
    Reason.NOT_FOUND: 404,
    Reason.CONFLICT: 409,
    Reason.INVALID: 422,
}


def _json(data: Any, status: int = 200, replayed: bool = False) -> web.Response:
    response = web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _iso(ms: int | None, zone: ZoneInfo) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).astimezone(zone).isoformat(timespec="milliseconds")


def render(case: Case, zone: ZoneInfo) -> dict[str, Any]:
    return {
        "id": case.id,
        "type": case.type,
        "customer_id": case.customer_id,
        "category": case.category,
        "rule": case.rule,
        "rules": list(case.rules),
        "severity": case.severity,
        "tier": case.tier,
        "priority": case.priority,
        "status": case.status,
        "assignee": case.assignee,
        "count": case.count,
        "opened_at": _iso(case.opened_at_ms, zone),
        "updated_at": _iso(case.updated_at_ms, zone),
        "first_action_at": _iso(case.first_action_at_ms, zone),
        "closed_at": _iso(case.closed_at_ms, zone),
        "outcome": case.outcome,
        "note": case.note,
        "first_finding_ts": case.first_finding_ts,
        "last_finding_ts": case.last_finding_ts,
        "retracted": case.retracted,
        "history": case.history,
        "queue": case.queue,
    }


def _refusals(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A refusal answers its reason's status and its message."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Refused as exc:
            return _error(STATUS_OF[exc.reason], exc.message)

    wrapped.__name__ = handler.__name__
    return wrapped


def _query_filter(request: web.Request) -> tuple[CaseFilter, int, int]:
    query = request.query
    unknown = sorted(set(query) - LIST_PARAMS)
    if unknown:
        filters = ", ".join(sorted(LIST_PARAMS))
        raise Refused(Reason.MALFORMED, f"unknown query parameter {unknown[0]!r}; filters: {filters}")

    def one_of(name: str, values: tuple[str, ...]) -> str | None:
        value = query.get(name) or None
        if value is not None and value not in values:
            raise Refused(Reason.MALFORMED, f"{name} must be one of {', '.join(values)}")
        return value

    def age(name: str) -> int | None:
        text = query.get(name)
        if not text:
            return None
        found = _DURATION.fullmatch(text)
        if found is None:
            raise Refused(Reason.MALFORMED, f"{name} must be a number and a unit s, m, h or d, e.g. 4h")
        return int(found.group(1)) * _UNIT_MS[found.group(2)]

    def number(name: str, default: int, low: int, high: int) -> int:
        text = query.get(name, str(default))
        if not _NUMBER.fullmatch(text) or not low <= int(text) <= high:
            raise Refused(Reason.MALFORMED, f"{name} must be an integer {low}..{high} (ASCII digits)")
        return int(text)

    assignee = query.get("assignee") or None
    if assignee is not None and assignee != "-" and not valid_name(assignee):
        raise Refused(Reason.MALFORMED, "assignee must be a token's name, or - for unassigned")
    wanted = CaseFilter(
        status=one_of("status", STATUSES),
        assignee=assignee,
        rule=query.get("rule") or None,
        category=one_of("category", CATEGORIES),
        type=one_of("type", CASE_TYPES),
        customer=query.get("customer") or None,
        severity=one_of("severity", SEVERITIES),
        tier=one_of("tier", TIERS),
        queue=one_of("queue", QUEUES),
        min_age_ms=age("min_age"),
        max_age_ms=age("max_age"),
    )
    return wanted, number("limit", 100, 1, 1000), number("offset", 0, 0, 10_000_000)


@_refusals
async def list_cases(request: web.Request) -> web.Response:
    wanted, limit, offset = _query_filter(request)
    found, total = await request.app[CASES].search(wanted, limit, offset)
    zone = request.app[ZONE]
    return _json({"cases": [render(c, zone) for c in found], "count": len(found), "total": total})


def _case_id(request: web.Request) -> int:
    text = request.match_info["case_id"]
    if not _CASE_ID.fullmatch(text):
        raise Refused(Reason.NOT_FOUND, f"no case {text!r}")
    return int(text)


def _page_query(request: web.Request) -> tuple[int, int | None, int | None]:
    """``limit`` (entries per list, 1..PAGE), ``comments_before`` and ``audit_before`` (cursors)."""
    query = request.query
    unknown = sorted(set(query) - CASE_PARAMS)
    if unknown:
        known = ", ".join(sorted(CASE_PARAMS))
        raise Refused(Reason.MALFORMED, f"unknown query parameter {unknown[0]!r}; one of {known}")

    def number(name: str, low: int, high: int) -> int | None:
        text = query.get(name)
        if text is None:
            return None
        if not _NUMBER.fullmatch(text) or not low <= int(text) <= high:
            raise Refused(Reason.MALFORMED, f"{name} must be an integer {low}..{high} (ASCII digits)")
        return int(text)

    limit = number("limit", 1, PAGE)
    return limit or PAGE, number("comments_before", 0, 10**12), number("audit_before", 0, 10**12)


@_refusals
async def get_case(request: web.Request) -> web.Response:
    """The case, the newest ``limit`` comments and trail entries (oldest first) and each list's
    cursor to the page before it: memory and time bounded whatever a case holds."""
    store, zone = request.app[CASES], request.app[ZONE]
    case_id = _case_id(request)
    limit, comments_before, audit_before = _page_query(request)
    case = await store.get(case_id)
    if case is None:
        raise Refused(Reason.NOT_FOUND, f"no case {case_id}")
    trail = await store.page(case_id, "audit", limit, audit_before)
    said = await store.page(case_id, "comments", limit, comments_before)
    comments = [{"at": _iso(e["at"], zone), "actor": e["actor"], "text": e["text"]} for e in said.entries]
    return _json(
        {
            "case": render(case, zone),
            "comments": comments,
            "comments_page": _cursor(said),
            "audit": [{**entry, "at": _iso(entry["at"], zone)} for entry in trail.entries],
            "audit_page": _cursor(trail),
            "findings": await store.findings(case_id),
            "outcomes": list(outcomes_for(case.category)),
            "dismissals": list(DISMISSALS),
        }
    )


def _cursor(page: Page) -> dict[str, int | None]:
    return {"total": page.total, "before": page.before}


async def _body(request: web.Request, model: type[Body]) -> tuple[Body, bytes]:
    raw = await request.read()
    try:
        return model.model_validate_json(raw), raw
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "json_invalid":
            raise Refused(Reason.MALFORMED, "the body must be a JSON object") from None
        raise Refused(Reason.MALFORMED, f"{where or 'body'}: {first['msg']}") from None


def _idempotency(request: web.Request, actor: Principal, raw: bytes) -> Idempotency:
    key = request.headers.get("Idempotency-Key", "")
    if not _KEY.fullmatch(key):
        raise Refused(Reason.MALFORMED, "Idempotency-Key header is required on every change: 1-200 visible "
                                        "characters, unique per intended change (e.g. a UUID per click)")  # fmt: skip
    return Idempotency(actor.token, key, fingerprint(request.method, request.path, raw), OK)


def _may(request: web.Request, role: Role) -> Principal:
    """The caller, if their role allows changes of this kind (checked before the body is read)."""
    actor = caller(request)
    if not actor.at_least(role):
        what = "change cases" if role == "analyst" else "act on many cases at once (a supervisor does)"
        raise Refused(Reason.FORBIDDEN, f"{article(actor.role)} cannot {what}")
    if not request.app[PEOPLE_CHECKED].is_set():  # Redis was down at start: the names are not checked yet
        why = request.app[PEOPLE_REFUSED]
        raise web.HTTPServiceUnavailable(
            text=orjson.dumps({"error": why[0] if why else "the people registry is not checked yet"}).decode(),
            content_type="application/json", headers={"Retry-After": "5"},
        )  # fmt: skip
    return actor


async def _act(request: web.Request, action: Action, raw: bytes) -> web.Response:
    actor = caller(request)
    idem = _idempotency(request, actor, raw)
    case_id = _case_id(request)
    store, zone = request.app[CASES], request.app[ZONE]
    replay = await store.stored(idem)
    if replay is not None:
        return _answer(replay)
    assignable = request.app[ASSIGNABLE]
    try:
        stored = await store.act_once(case_id, actor, action, assignable, lambda c: render(c, zone), idem)
    except Refused as exc:
        if exc.reason is Reason.BUSY:
            raise  # (nothing was decided: a retry may go through)
        # the first outcome is every retry's answer, a refusal too (a retry after the case
        # changed must not succeed where the first attempt was refused)
        refusal = dataclasses.replace(idem, status=STATUS_OF[exc.reason])
        stored = await store.remember(refusal, {"error": exc.message})
    return _answer(stored)


def _answer(stored: Stored) -> web.Response:
    """The answer kept under a key: the same bytes every time (orjson writes a body as it reads it)."""
    return _json(stored.body, stored.status, replayed=stored.replayed)


@_refusals
async def assign_case(request: web.Request) -> web.Response:
    _may(request, "analyst")
    body, raw = await _body(request, AssignBody)
    return await _act(request, Assign(body.assignee), raw)


@_refusals
async def comment_case(request: web.Request) -> web.Response:
    _may(request, "analyst")
    body, raw = await _body(request, CommentBody)
    return await _act(request, Comment(body.text), raw)


@_refusals
async def transition_case(request: web.Request) -> web.Response:
    _may(request, "analyst")
    body, raw = await _body(request, TransitionBody)
    return await _act(request, Transition(body.to, body.outcome, body.note, body.reason), raw)


async def _bulk(request: web.Request, ids: list[int], action: Action, raw: bytes) -> web.Response:
    actor = caller(request)
    idem = _idempotency(request, actor, raw)
    store, zone = request.app[CASES], request.app[ZONE]
    replay = await store.stored(idem)
    if replay is not None:
        return _answer(replay)
    results: list[dict[str, Any]] = []
    for case_id in dict.fromkeys(ids):  # each case once, in the order given
        try:  # each case under its own derived key: a retry after a crash mid-way redoes nothing
            answer = await store.act_once(
                case_id, actor, action, request.app[ASSIGNABLE], lambda c: render(c, zone), idem.scoped(str(case_id))
            )
        except Refused as exc:
            results.append({"id": case_id, "status": STATUS_OF[exc.reason], "error": exc.message, "case": None})
        else:
            results.append({"id": case_id, "status": OK, "error": None, "case": answer.body})
    done = sum(1 for r in results if r["status"] == OK)
    reply = {"results": results, "done": done, "refused": len(results) - done}
    return _answer(await store.remember(idem, reply))  # the first retry to finish keeps its answer for all


@_refusals
async def bulk_assign(request: web.Request) -> web.Response:
    _may(request, "supervisor")
    body, raw = await _body(request, BulkAssignBody)
    return await _bulk(request, body.ids, Assign(body.assignee), raw)


@_refusals
async def bulk_dismiss(request: web.Request) -> web.Response:
    _may(request, "supervisor")
    body, raw = await _body(request, BulkDismissBody)
    return await _bulk(request, body.ids, Transition("dismissed", outcome=body.reason, note=body.note), raw)


async def rules_precision(request: web.Request) -> web.Response:
    store = request.app[CASES]
    rows = await store.precision()
    counts = await store.status_counts()
    return _json(
        {
            "rules": [asdict(row) for row in rows],
            "cases_by_status": counts,
            "outcomes": all_outcomes(),
            "confirming": sorted(CONFIRMING),
        }
    )


async def whoami(request: web.Request) -> web.Response:
    """The caller's name and role, and who can be assigned cases (the console shows only what the role allows)."""
    actor, names = caller(request), request.app[ASSIGNABLE]
    return _json({"name": actor.name, "role": actor.role, "assignable": sorted(names)})


async def run_intake(
    store: CaseStore, stop: asyncio.Event, block_ms: int = INTAKE_BLOCK_MS, policy: RetryPolicy = OUTAGES
) -> None:
    """Until ``stop`` (or a stop signal): take new feed entries into cases; refresh the case
    gauges now and then. Redis down: waits it out as the worker does (``policy``,
    ``streams.retry``), and a wait ends as soon as ``stop`` is set.

    Stopped by the event, never by cancelling: a blocking XREAD that is cancelled can
    leave redis-py waiting forever (seen in tests), so each read ends within ``block_ms``."""
    next_gauges = 0.0
    failures = 0
    while not stop_requested(stop):
        try:
            await store.intake_feed(block_ms=block_ms)
            if time.monotonic() >= next_gauges:
                next_gauges = time.monotonic() + GAUGES_EVERY_SECONDS
                await store.precision()
                for status, count in (await store.status_counts()).items():
                    telemetry.CASES.labels(status).set(count)
            failures = 0
        except (RedisError, OSError) as exc:
            failures += 1
            delay = policy.backoff(failures)
            telemetry.REDIS_ERRORS.labels("case_intake").inc()
            log.warning("case intake: Redis unavailable (%s); retrying in %.2fs", type(exc).__name__, delay)
            await wait(delay, stop)
        except Exception:  # a bug must not end the intake silently
            failures += 1
            delay = policy.backoff(failures)
            log.exception("case intake failed; retrying in %.2fs", delay)
            await wait(delay, stop)


def setup_cases(
    app: web.Application,
    client: aioredis.Redis,
    keys: Keys,
    settings: Settings,
    people: tuple[Principal, ...],
    registered: bool = True,
    contact: ContactConfig | None = None,
) -> None:
    """Register the case routes and the intake task on ``app``; ``people`` may be assigned cases.
    ``registered``: before serving, their tokens are checked against the people registry
    (``cases.people.check``: a process whose tokens claim what the registry does not back stops)."""
    store = CaseStore(client, keys, from_history=settings.cases_from_history, max_comments=settings.cases_max_comments,
                      contact=contact)  # fmt: skip
    app[CASES] = store
    app[ZONE] = settings.zone
    app[ASSIGNABLE] = frozenset(p.name for p in people if p.at_least("analyst"))

    app[PEOPLE_CHECKED], app[PEOPLE_REFUSED] = asyncio.Event(), []
    tokens = [(p.token, p) for p in people]

    async def check_people() -> None:
        if await registry.check(client, keys.cases, tokens):
            log.warning("people registry: empty, so this first API process registered its %d token(s) "
                        "(fundflow people add registers more)", len(people))  # fmt: skip
        app[PEOPLE_CHECKED].set()

    async def check_later() -> None:  # Redis was down at start: the API serves reads, no case changes
        failures = 0
        while True:
            failures += 1
            await asyncio.sleep(outage_policy(settings).backoff(failures))
            try:
                await check_people()
                return
            except (RedisError, OSError):
                continue
            except ConfigError as exc:
                log.error("%s", exc)
                app[PEOPLE_REFUSED].append(str(exc))
                return

    async def on_start(app: web.Application) -> AsyncIterator[None]:
        """The check before serving: a refusal stops the process in one line (``ConfigError``)."""
        later: asyncio.Task[None] | None = None
        try:
            await check_people()
        except (RedisError, OSError) as exc:
            log.warning("people registry: Redis unavailable (%s); case changes wait for the check", type(exc).__name__)
            later = asyncio.create_task(check_later())
        yield
        if later is not None:
            later.cancel()

    if registered:
        app.cleanup_ctx.append(on_start)
    else:
        app[PEOPLE_CHECKED].set()

    async def intake(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(run_intake(store, stop, policy=outage_policy(settings)))
        yield
        stop.set()
        done, _ = await asyncio.wait({task}, timeout=INTAKE_BLOCK_MS / 1000 + 5)
        if not done:  # a Redis that does not answer: give up on the read, never hang the shutdown
            task.cancel()
            await asyncio.wait({task}, timeout=1)

    app.cleanup_ctx.append(intake)
    app.router.add_get("/cases", list_cases)
    app.router.add_post("/cases/bulk/assign", bulk_assign)  # before /cases/{case_id}/...
    app.router.add_post("/cases/bulk/dismiss", bulk_dismiss)
    app.router.add_get("/cases/{case_id}", get_case)
    app.router.add_post("/cases/{case_id}/assign", assign_case)
    app.router.add_post("/cases/{case_id}/comment", comment_case)
    app.router.add_post("/cases/{case_id}/transition", transition_case)
    app.router.add_get("/rules/precision", rules_precision)
    app.router.add_get("/whoami", whoami)

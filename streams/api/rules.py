"""Rule versions over HTTP: history, side by side, four eyes, promotion, shadow runs, the report.

| endpoint | who | what |
| --- | --- | --- |
| ``GET /rules/versions`` | everyone | every version (newest first), the timeline, the shadow run |
| ``GET /rules/versions/{n}`` | everyone | one version with its YAML and every setting |
| ``GET /rules/diff?a=N&b=M`` | everyone | two versions side by side, and what changes from a to b |
| ``GET /rules/timeline`` | everyone | the promotions, oldest first, and the version in force now |
| ``GET /rules/audit?limit=`` | everyone | who did what to the versions, newest first |
| ``GET /rules/shadow/report?version=N&run=R`` | everyone | the shadow report (``streams.api.rule_report``) |
| ``POST /rules/versions`` | analyst, supervisor | propose ``{"yaml", "reason"}`` |
| ``POST /rules/versions/{n}/approve`` | a supervisor who is not its author | ``{}`` |
| ``POST /rules/versions/{n}/reject`` | a supervisor who is not its author | ``{"reason"}`` |
| ``POST /rules/versions/{n}/promote`` | supervisor | ``{"effective": RFC 3339 or null}`` (event time; null: grace) |
| ``POST /rules/rollback`` | supervisor | ``{"effective": ...}``: promote the version in force before the last |
| ``POST /rules/shadow`` | analyst, supervisor | ``{"version": N}``: start a shadow run |
| ``POST /rules/shadow/stop`` | analyst, supervisor | ``{}`` |

Who acts is the caller's token (``streams.api.roles``): the name and role the people
registry backs, which the versions' audit records. A role below the endpoint's is a 403
before the body is read; four eyes (nobody approves or rejects their own proposal) is the
store's refusal, also a 403. An ``Idempotency-Key`` header is optional here: with one, the
first answer is kept 24 h (beside the case desk's, scoped by the token) and a retry with
the same key gets it again marked ``Idempotent-Replayed: true``; the same key with another
request is a 422. (The answer is kept just after the change, not in its step: a retry after a
crash between them is decided again; a decision cannot be made twice, a second approval is a
409, but a proposal can.) Why a transition is refused is ``rules.versions.Code``; which status
answers each code is said here, in ``STATUS_OF``, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from pydantic import BaseModel, ValidationError

from cases.model import Reason, Refused, article
from cases.store import Idempotency, Stored, fingerprint
from rules.versions import (
    Code,
    RuleRefusal,
    ShadowRun,
    TimelineEntry,
    Version,
    side_by_side,
    version_at,
)
from streams.api.cases import CASES, PEOPLE_CHECKED, PEOPLE_REFUSED
from streams.api.roles import Principal, caller
from streams.api.rule_models import ApproveBody, PromoteBody, ProposeBody, RejectBody, ShadowBody, StopBody
from streams.api.rule_report import shadow_report
from streams.settings import Role, Settings
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook

RULEBOOK = web.AppKey("rulebook", Rulebook)
RULES_ZONE = web.AppKey("rules_zone", ZoneInfo)
NOW_US: web.AppKey[Callable[[], int]] = web.AppKey("rules_now_us")  # the wall clock (tests set their own)
STATUS_OF: dict[Code, int] = {
    Code.NOT_FOUND: 404,
    Code.FORBIDDEN: 403,
    Code.CONFLICT: 409,
    Code.INVALID: 422,
    Code.BUSY: 503,  # (retry: nothing was decided)
}
OK = 200
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NUMBER = re.compile(r"[0-9]{1,9}")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
Body = TypeVar("Body", bound=BaseModel)


class Malformed(Exception):
    """A request that cannot be read (400)."""


def _json(data: Any, status: int = OK, replayed: bool = False) -> web.Response:
    response = web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _answers(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A refusal answers its code's status and its message; a malformed request 400."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except RuleRefusal as exc:
            return _json({"error": exc.message}, STATUS_OF[exc.code])
        except Malformed as exc:
            return _json({"error": str(exc)}, 400)
        except Refused as exc:  # (the case desk's idempotency records: a key reused for another request)
            return _json({"error": exc.message}, 422 if exc.reason is Reason.INVALID else 400)

    wrapped.__name__ = handler.__name__
    return wrapped


# ---- rendering


def _iso(us: int | None, zone: ZoneInfo) -> str | None:
    if us is None:
        return None
    when = (EPOCH + dt.timedelta(microseconds=us)).astimezone(zone)
    return when.isoformat(timespec="seconds" if when.microsecond == 0 else "milliseconds")


def _state(version: Version, timeline: Sequence[TimelineEntry], now_us: int) -> str:
    mine = [entry for entry in timeline if entry.version == version.number]
    if not mine:
        return "never_in_force"
    current = version_at(timeline, now_us)
    if current is not None and current.version == version.number:
        return "in_force"
    if any(entry.effective_us > now_us for entry in mine):
        return "scheduled"
    return "was_in_force"


def render_version(
    version: Version,
    timeline: Sequence[TimelineEntry],
    shadow: ShadowRun | None,
    now_us: int,
    zone: ZoneInfo,
    detail: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "number": version.number,
        "fingerprint": version.fingerprint,
        "status": version.status,
        "state": _state(version, timeline, now_us),
        "shadow": shadow is not None and shadow.version == version.number,
        "author": version.author,
        "author_role": version.author_role,
        "reason": version.reason,
        "proposed_at": _iso(version.proposed_us, zone),
        "approver": version.approver,
        "approved_at": _iso(version.approved_us, zone),
        "rejecter": version.rejecter,
        "rejected_at": _iso(version.rejected_us, zone),
        "rejected_reason": version.rejected_reason,
        "base": version.base,
        "diff": list(version.diff),
        "effective": [_iso(e.effective_us, zone) for e in timeline if e.version == version.number],
    }
    if detail:
        out["yaml"] = version.yaml
        out["rules"] = orjson.loads(version.rules)
    return out


def render_entry(entry: TimelineEntry, zone: ZoneInfo) -> dict[str, Any]:
    return {"effective": _iso(entry.effective_us, zone), "effective_us": entry.effective_us, "version": entry.version,
            "fingerprint": entry.fingerprint, "by": entry.by, "at": _iso(entry.at_us, zone)}  # fmt: skip


def render_shadow(run: ShadowRun | None, zone: ZoneInfo) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"version": run.version, "fingerprint": run.fingerprint, "started_at": _iso(run.started_us, zone),
            "by": run.by}  # fmt: skip


# ---- requests


def _number(text: str, what: str = "version") -> int:
    if not _NUMBER.fullmatch(text) or int(text) < 1:
        raise RuleRefusal(Code.NOT_FOUND, f"no {what} {text!r}")
    return int(text)


def _query_number(request: web.Request, name: str, required: bool, low: int = 1, high: int = 10**9) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        if required:
            raise Malformed(f"{name} is required: a version number")
        return None
    if not _NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise Malformed(f"{name} must be an integer {low}..{high} (ASCII digits)")
    return int(text)


def _only(request: web.Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise Malformed(f"unknown query parameter {unknown[0]!r}; one of {', '.join(sorted(allowed)) or 'none'}")


async def _body(request: web.Request, model: type[Body]) -> tuple[Body, bytes]:
    raw = await request.read()
    try:
        return model.model_validate_json(raw or b"{}"), raw
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        if first["type"] == "json_invalid":
            raise Malformed("the body must be a JSON object") from None
        where = ".".join(str(p) for p in first["loc"])
        raise Malformed(f"{where or 'body'}: {first['msg']}") from None


def _may(request: web.Request, role: Role, what: str) -> Principal:
    """The caller, if their role allows ``what`` (checked before the body is read)."""
    actor = caller(request)
    if not actor.at_least(role):
        raise RuleRefusal(Code.FORBIDDEN, f"{article(actor.role)} cannot {what} ({article(role)} does)")
    if not request.app[PEOPLE_CHECKED].is_set():  # Redis was down at start: the names are not checked yet
        why = request.app[PEOPLE_REFUSED]
        raise web.HTTPServiceUnavailable(
            text=orjson.dumps({"error": why[0] if why else "the people registry is not checked yet"}).decode(),
            content_type="application/json", headers={"Retry-After": "5"},
        )  # fmt: skip
    return actor


async def _change(
    request: web.Request,
    role: Role,
    what: str,
    model: type[Body],
    do: Callable[[Principal, Body, int], Awaitable[Any]],
) -> web.Response:
    """Check the role, read the body, answer a retry of its ``Idempotency-Key`` as the first time,
    or make the change (``do``) and keep its answer (a refusal too) under the key."""
    actor = _may(request, role, what)
    body, raw = await _body(request, model)
    key = request.headers.get("Idempotency-Key")
    idem: Idempotency | None = None
    store = request.app[CASES]
    if key is not None:
        if not _KEY.fullmatch(key):
            raise Malformed("Idempotency-Key: 1-200 visible characters, unique per intended change")
        # "rules " + key: a space is in no client's key, so no case request can share it
        idem = Idempotency(actor.token, f"rules {key}", fingerprint(request.method, request.path, raw), OK)
        replay = await store.stored(idem)
        if replay is not None:
            return _answer(replay)
    try:
        payload, status = await do(actor, body, request.app[NOW_US]()), OK
    except RuleRefusal as exc:
        if exc.code is Code.BUSY or idem is None:
            raise
        payload, status = {"error": exc.message}, STATUS_OF[exc.code]
    if idem is None:
        return _json(payload, status)
    return _answer(await store.remember(dataclasses.replace(idem, status=status), payload))


def _answer(stored: Stored) -> web.Response:
    return _json(stored.body, stored.status, replayed=stored.replayed)


async def _rendered(request: web.Request, version: Version, detail: bool = True) -> dict[str, Any]:
    book = request.app[RULEBOOK]
    timeline, shadow = await book.timeline(), await book.shadow()
    return render_version(version, timeline, shadow, request.app[NOW_US](), request.app[RULES_ZONE], detail)


def _effective(body: PromoteBody) -> int | None:
    if body.effective is None:
        return None
    return (body.effective - EPOCH) // dt.timedelta(microseconds=1)


# ---- reads


@_answers
async def list_versions(request: web.Request) -> web.Response:
    _only(request, frozenset())
    book, zone, now = request.app[RULEBOOK], request.app[RULES_ZONE], request.app[NOW_US]()
    versions, timeline, shadow = await book.versions(), await book.timeline(), await book.shadow()
    current = version_at(timeline, now)
    return _json({
        "versions": [render_version(v, timeline, shadow, now, zone) for v in reversed(versions)],
        "timeline": [render_entry(e, zone) for e in timeline],
        "shadow": render_shadow(shadow, zone),
        "in_force": current.version if current is not None else None,
    })  # fmt: skip


@_answers
async def get_version(request: web.Request) -> web.Response:
    _only(request, frozenset())
    number = _number(request.match_info["number"])
    version = await request.app[RULEBOOK].version(number)
    if version is None:
        raise RuleRefusal(Code.NOT_FOUND, f"no version {number}")
    return _json(await _rendered(request, version))


@_answers
async def diff_versions(request: web.Request) -> web.Response:
    _only(request, frozenset({"a", "b"}))
    a, b = _query_number(request, "a", True), _query_number(request, "b", True)
    book = request.app[RULEBOOK]
    found = []
    for number in (a, b):
        version = await book.version(number)  # type: ignore[arg-type]
        if version is None:
            raise RuleRefusal(Code.NOT_FOUND, f"no version {number}")
        found.append(version)
    rows = side_by_side(found[0].rules, found[1].rules)
    return _json({
        "a": await _rendered(request, found[0]),
        "b": await _rendered(request, found[1]),
        "rows": [{"path": r.path, "a": r.a, "b": r.b, "changed": r.changed} for r in rows],
        "lines": [r.line() for r in rows if r.changed],
    })  # fmt: skip


@_answers
async def get_timeline(request: web.Request) -> web.Response:
    _only(request, frozenset())
    book, zone = request.app[RULEBOOK], request.app[RULES_ZONE]
    timeline = await book.timeline()
    current = version_at(timeline, request.app[NOW_US]())
    return _json({"timeline": [render_entry(e, zone) for e in timeline],
                  "shadow": render_shadow(await book.shadow(), zone),
                  "in_force": current.version if current is not None else None})  # fmt: skip


@_answers
async def get_audit(request: web.Request) -> web.Response:
    _only(request, frozenset({"limit"}))
    limit = _query_number(request, "limit", False, 1, 1000) or 100
    zone = request.app[RULES_ZONE]
    entries = await request.app[RULEBOOK].audit(limit)
    out = []
    for entry in entries:
        shown = {key: value for key, value in entry.items() if key != "at_us"}
        shown["at"] = _iso(entry.get("at_us"), zone)
        if "effective_us" in entry:
            shown["effective"] = _iso(entry["effective_us"], zone)
        out.append(shown)
    return _json({"audit": out})


@_answers
async def get_report(request: web.Request) -> web.Response:
    _only(request, frozenset({"version", "run"}))
    asked = _query_number(request, "version", False)
    run = request.query.get("run") or None
    return _json(await shadow_report(request.app[RULEBOOK], request.app[CASES], asked, run))


# ---- changes


@_answers
async def propose(request: web.Request) -> web.Response:
    async def do(actor: Principal, body: ProposeBody, now: int) -> Any:
        version = await request.app[RULEBOOK].propose(body.yaml, actor.name, actor.role, body.reason, now)
        return await _rendered(request, version)

    return await _change(request, "analyst", "propose rules", ProposeBody, do)


@_answers
async def approve(request: web.Request) -> web.Response:
    number = _number(request.match_info["number"])

    async def do(actor: Principal, body: ApproveBody, now: int) -> Any:
        version = await request.app[RULEBOOK].approve(number, actor.name, actor.role, now)
        return await _rendered(request, version)

    return await _change(request, "supervisor", "approve a version", ApproveBody, do)


@_answers
async def reject(request: web.Request) -> web.Response:
    number = _number(request.match_info["number"])

    async def do(actor: Principal, body: RejectBody, now: int) -> Any:
        version = await request.app[RULEBOOK].reject(number, actor.name, actor.role, body.reason, now)
        return await _rendered(request, version)

    return await _change(request, "supervisor", "reject a version", RejectBody, do)


@_answers
async def promote(request: web.Request) -> web.Response:
    number = _number(request.match_info["number"])

    async def do(actor: Principal, body: PromoteBody, now: int) -> Any:
        entry = await request.app[RULEBOOK].promote(number, actor.name, actor.role, now, _effective(body))
        return render_entry(entry, request.app[RULES_ZONE])

    return await _change(request, "supervisor", "promote a version", PromoteBody, do)


@_answers
async def rollback(request: web.Request) -> web.Response:
    async def do(actor: Principal, body: PromoteBody, now: int) -> Any:
        entry = await request.app[RULEBOOK].rollback(actor.name, actor.role, now, _effective(body))
        return render_entry(entry, request.app[RULES_ZONE])

    return await _change(request, "supervisor", "roll back the rules", PromoteBody, do)


@_answers
async def start_shadow(request: web.Request) -> web.Response:
    async def do(actor: Principal, body: ShadowBody, now: int) -> Any:
        run = await request.app[RULEBOOK].start_shadow(body.version, actor.name, actor.role, now)
        return render_shadow(run, request.app[RULES_ZONE])

    return await _change(request, "analyst", "start a shadow run", ShadowBody, do)


@_answers
async def stop_shadow(request: web.Request) -> web.Response:
    async def do(actor: Principal, body: StopBody, now: int) -> Any:
        run = await request.app[RULEBOOK].stop_shadow(actor.name, actor.role, now)
        return render_shadow(run, request.app[RULES_ZONE])

    return await _change(request, "analyst", "stop a shadow run", StopBody, do)


def grace_us(settings: Settings) -> int:
    return int(settings.rules_promotion_grace_seconds * 1_000_000)


def setup_rules(
    app: web.Application,
    client: aioredis.Redis,
    keys: Keys,
    settings: Settings,
    now_us: Callable[[], int] | None = None,
) -> None:
    """Register the rule version routes on ``app`` (after ``setup_cases``: the people check and
    the idempotency records are the case desk's)."""
    app[RULEBOOK] = Rulebook(client, keys, grace_us(settings))
    app[RULES_ZONE] = settings.zone
    app[NOW_US] = now_us or (lambda: time.time_ns() // 1000)
    app.router.add_get("/rules/versions", list_versions)
    app.router.add_post("/rules/versions", propose)
    app.router.add_get("/rules/versions/{number}", get_version)
    app.router.add_post("/rules/versions/{number}/approve", approve)
    app.router.add_post("/rules/versions/{number}/reject", reject)
    app.router.add_post("/rules/versions/{number}/promote", promote)
    app.router.add_post("/rules/rollback", rollback)
    app.router.add_get("/rules/diff", diff_versions)
    app.router.add_get("/rules/timeline", get_timeline)
    app.router.add_get("/rules/audit", get_audit)
    app.router.add_post("/rules/shadow", start_shadow)
    app.router.add_post("/rules/shadow/stop", stop_shadow)
    app.router.add_get("/rules/shadow/report", get_report)

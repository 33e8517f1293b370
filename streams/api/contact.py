"""Consent and complaints over HTTP (docs/contact.md).

* ``GET /contact/{customer_id}`` (every role): the customer's consent per scope, the latest
  complaint, whether a push now would be held and why, the live tier and its routes, the
  audit, the recent held pushes;
* ``POST /contact/{customer_id}/consent`` (analyst, supervisor): ``{"channel", "status",
  "reason", "at"?}``; ``POST /contact/{customer_id}/complaint``: ``{"reason", "at"?}``;
* ``GET /contact/held?limit=&customer=`` (every role): pushes held at delivery, newest first;
* ``GET /contact/imports?limit=`` (every role): the imports (who, when, file SHA-256, counts).

A record is effective for the next push the relay judges (it reads Redis for every batch of
pushes). Each ``POST`` appends who, when and why to the customer's audit in the same atomic
step as the change (``contact.store``); the audit only grows. A record merges by the time the
customer said it (``at``): repeating a request changes nothing but adds its audit entry (the
audit is of what people did). A viewer's ``POST`` is a 403, no token a 401.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from cases.model import Reason, Refused, article
from contact.model import Record, check_customer_id, parse_time
from contact.routes import CATEGORIES, ContactConfig
from contact.store import ContactStore, live_tiers
from streams import telemetry
from streams.api import params
from streams.api.cases import PEOPLE_CHECKED, ZONE, _body, _refusals
from streams.api.contact_models import ComplaintBody, ConsentBody
from streams.api.roles import caller
from streams.settings import Settings
from streams.storage.keys import Keys

STORE = web.AppKey("contact_store", ContactStore)
TABLE = web.AppKey("contact_table", ContactConfig)
AUDIT_SHOWN = 100  # newest audit entries a customer read returns


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _customer(request: web.Request) -> str:
    customer = request.match_info["customer_id"]
    why = check_customer_id(customer)
    if why is not None:
        raise Refused(Reason.MALFORMED, why)
    return customer


async def view(request: web.Request, customer: str) -> dict[str, Any]:
    store, table = request.app[STORE], request.app[TABLE]
    tier = (await live_tiers(store.redis, store.keys, [customer]))[customer]
    consent = await store.consent(customer)
    return {
        "customer_id": customer,
        "tier": tier,
        "routes": {category: table.route(tier, category) for category in CATEGORIES},
        **consent.as_dict(int(time.time()), table.complaint_quiet_days),
        "audit": await store.audit(customer, AUDIT_SHOWN),
        "held_pushes": await store.held(20, customer),
    }


@_refusals
async def get_contact(request: web.Request) -> web.Response:
    return _json(await view(request, _customer(request)))


def _recorder(request: web.Request) -> tuple[str, str]:
    actor = caller(request)
    if not actor.at_least("analyst"):
        raise Refused(Reason.FORBIDDEN, f"{article(actor.role)} cannot record consent or complaints")
    if not request.app[PEOPLE_CHECKED].is_set():  # Redis was down at start: the names are not checked yet
        raise web.HTTPServiceUnavailable(text='{"error": "the people registry is not checked yet"}',
                                         content_type="application/json", headers={"Retry-After": "5"})  # fmt: skip
    return actor.name, actor.role


def _said_at(request: web.Request, text: str | None, now: int) -> int:
    if text is None:
        return now
    try:
        if len(text) == 10:
            raise ValueError("a time with an offset, not a date")
        return parse_time(text, request.app[ZONE], now)
    except ValueError as exc:
        raise Refused(Reason.MALFORMED, f"at: {exc}") from None


async def _record(request: web.Request, record: Record, reason: str) -> web.Response:
    name, role = _recorder(request)
    entry = {
        "at": int(time.time() * 1000),
        "by": name,
        "role": role,
        "action": record.kind,
        "channel": record.scope,
        "said_at": record.at,
        "reason": reason,
    }
    await request.app[STORE].record(record, entry)
    telemetry.CONSENT_RECORDS.labels(record.kind).inc()
    return _json(await view(request, record.customer_id))


@_refusals
async def post_consent(request: web.Request) -> web.Response:
    customer = _customer(request)
    _recorder(request)  # a viewer is refused before the body is read
    body, _ = await _body(request, ConsentBody)
    at = _said_at(request, body.at, int(time.time()))
    return await _record(request, Record(customer, body.status, body.channel, at), body.reason)


@_refusals
async def post_complaint(request: web.Request) -> web.Response:
    customer = _customer(request)
    _recorder(request)
    body, _ = await _body(request, ComplaintBody)
    at = _said_at(request, body.at, int(time.time()))
    return await _record(request, Record(customer, "complaint", "all", at), body.reason)


@_refusals
async def get_held(request: web.Request) -> web.Response:
    params.known(request.query, ("limit", "customer"))
    limit = params.integer(request.query, "limit", params.LIMIT)
    customer = request.query.get("customer") or None
    if customer is not None and check_customer_id(customer) is not None:
        raise Refused(Reason.MALFORMED, "customer: not a customer id")
    return _json({"held": await request.app[STORE].held(limit, customer)})


@_refusals
async def get_imports(request: web.Request) -> web.Response:
    params.known(request.query, ("limit",))
    limit = params.integer(request.query, "limit", params.LIMIT)
    return _json({"imports": await request.app[STORE].imports(limit)})


def setup_contact(
    app: web.Application, client: aioredis.Redis, keys: Keys, settings: Settings, table: ContactConfig
) -> None:
    """Register the contact routes (after ``setup_cases``: the people check and the zone are its)."""
    app[STORE] = ContactStore(client, keys, settings.contact_buckets, settings.redis_cluster)
    app[TABLE] = table
    app.router.add_get("/contact/held", get_held)  # before /contact/{customer_id}
    app.router.add_get("/contact/imports", get_imports)
    app.router.add_get("/contact/{customer_id}", get_contact)
    app.router.add_post("/contact/{customer_id}/consent", post_consent)
    app.router.add_post("/contact/{customer_id}/complaint", post_complaint)

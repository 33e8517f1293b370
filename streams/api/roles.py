"""Who is calling: each API token maps to a principal (a name and a role).

``FUNDFLOW_API_TOKENS`` lists plain strings (today's full-access tokens) and
objects ``{"token", "role", "name"}``. A plain string is a ``supervisor`` named
``token-N`` (N = its 1-based place in the list), so existing deployments keep
full access. A name is a claim the people registry must back (``cases.people``):
the API checks every token against it before serving. A token has at least 16
visible ASCII characters (``Settings``). Roles, each including the one before:

* ``viewer``: reads everything, changes nothing (403 on every mutating call);
* ``analyst``: works cases that are assigned to them or unassigned;
* ``supervisor``: also assigns anyone, reopens, bulk assigns/dismisses.

The token is compared in constant time against every configured token (no
early exit to time). A wrong role in the configuration is refused by
``Settings`` at start-up, in one line.
"""

from __future__ import annotations

import hmac

from aiohttp import web
from pydantic import SecretStr

from cases.model import Actor
from cases.people import token_fingerprint
from streams.settings import ApiToken, Settings

Principal = Actor  # the authenticated caller is who acts on cases


DEMO = Principal("demo", "supervisor", "demo")  # --demo with no token: a local, single-user desk
PRINCIPAL = web.RequestKey("principal", Principal)  # the caller, set by the auth middleware


def caller(request: web.Request) -> Principal:
    """The authenticated caller of ``request`` (the auth middleware has run)."""
    if PRINCIPAL not in request:
        raise web.HTTPUnauthorized(text='{"error": "missing or wrong bearer token"}', content_type="application/json")
    return request[PRINCIPAL]


def principals(settings: Settings) -> tuple[tuple[bytes, Principal], ...]:
    """Each configured token (as bytes) with the principal it stands for (and its fingerprint: what
    idempotency records are scoped by and the people registry knows, ``cases.people``)."""
    found: list[tuple[bytes, Principal]] = []
    for place, entry in enumerate(settings.api_tokens, start=1):
        secret = entry.token if isinstance(entry, ApiToken) else entry
        fingerprint = token_fingerprint(_value(secret))
        if isinstance(entry, ApiToken):
            principal = Principal(entry.name, entry.role, fingerprint)
        else:
            principal = Principal(f"token-{place}", "supervisor", fingerprint)
        if _value(secret):
            found.append((_value(secret).encode(), principal))
    return tuple(found)


def _value(secret: SecretStr) -> str:
    return secret.get_secret_value()


def identify(given: bytes, tokens: tuple[tuple[bytes, Principal], ...]) -> Principal | None:
    """The principal of ``given``, comparing against every token in constant time."""
    who: Principal | None = None
    for token, principal in tokens:
        if hmac.compare_digest(given, token):
            who = principal
    return who

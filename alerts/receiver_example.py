"""A webhook receiver to copy from: verifies the signature, drops duplicates.

Run it with ``python -m alerts.receiver_example --port 8080`` and the same
``FUNDFLOW_WEBHOOK_SECRET`` as the relay. What a real receiver must do, and
this one does:

1. refuse a request whose ``X-FundFlow-Signature`` does not verify (it covers
   the timestamp, ``X-FundFlow-Id``, ``X-FundFlow-Topic`` and the body), or whose
   ``X-FundFlow-Timestamp`` is older than five minutes (401: the relay does
   not retry a 4xx, it dead-letters it, so a wrong secret is seen at once);
2. act only on what was signed: the finding's ``id`` is read from the signed
   body, and a body whose ``id`` differs from ``X-FundFlow-Id`` is refused (400);
3. answer 2xx only once the finding is safely kept (here: in memory);
4. treat a second POST of a finding ``id`` it already has as success (200)
   without acting on it again: delivery is at-least-once, and a captured
   request replayed within the five minutes is such a second POST;
5. bound the body it reads (1 MiB here);
6. during a change of secret, accept the previous one as well
   (``FUNDFLOW_WEBHOOK_PREVIOUS_SECRET`` here) until the relay signs with the new
   one: see docs/security.md, "Rotation".

The tests run this very app as the "real local HTTP receiver".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from aiohttp import web

from alerts.webhook import ID_HEADER, verify_signature

MAX_BODY = 1 << 20
RECEIVED: web.AppKey[list[dict[str, Any]]] = web.AppKey("received", list)
SEEN: web.AppKey[set[str]] = web.AppKey("seen", set)
STATS: web.AppKey[dict[str, int]] = web.AppKey("stats", dict)


def make_app(secret: bytes, *, tolerance_seconds: float = 300, previous_secret: bytes | None = None) -> web.Application:
    if not secret:
        raise ValueError("the receiver needs a non-empty secret")
    keys = [key for key in (secret, previous_secret) if key]
    app = web.Application(client_max_size=MAX_BODY)
    app[RECEIVED] = []
    app[SEEN] = set()
    app[STATS] = {"accepted": 0, "duplicates": 0, "refused": 0}

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if not any(verify_signature(key, request.headers, body, tolerance_seconds=tolerance_seconds) for key in keys):
            request.app[STATS]["refused"] += 1
            return web.json_response({"error": "bad or stale signature"}, status=401)
        try:
            finding = json.loads(body)
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        finding_id = finding.get("id") if isinstance(finding, dict) else None
        if not isinstance(finding_id, str) or finding_id != request.headers.get(ID_HEADER):
            request.app[STATS]["refused"] += 1
            return web.json_response({"error": "the body's id is not X-FundFlow-Id"}, status=400)
        if finding_id in request.app[SEEN]:  # dedupe on the signed body's id
            request.app[STATS]["duplicates"] += 1
            return web.json_response({"ok": True, "duplicate": True})
        request.app[SEEN].add(finding_id)
        request.app[RECEIVED].append(finding)
        request.app[STATS]["accepted"] += 1
        print(f"{finding.get('ts')} {finding.get('severity')} {finding.get('rule')} {finding.get('customer_id')}")
        return web.json_response({"ok": True})

    app.router.add_post("/", receive)
    app.router.add_post("/hook", receive)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="FundFlow webhook receiver example")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this host only)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    secret = os.environ.get("FUNDFLOW_WEBHOOK_SECRET")
    if not secret:
        print("receiver_example: error: set FUNDFLOW_WEBHOOK_SECRET", file=sys.stderr)
        return 2
    previous = os.environ.get("FUNDFLOW_WEBHOOK_PREVIOUS_SECRET", "").encode() or None
    web.run_app(make_app(secret.encode(), previous_secret=previous), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

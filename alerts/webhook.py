"""Webhook delivery of one finding to one receiver: signed, bounded, retried.

Every POST carries the finding's JSON exactly as it is on its Kafka topic and
these headers:

| header | value |
| --- | --- |
| ``X-FundFlow-Id`` | the finding's deterministic id (the ``id`` in the body; receivers dedupe on it) |
| ``X-FundFlow-Topic`` | the topic it came from (alerts, recommendations, marketing) |
| ``X-FundFlow-Timestamp`` | unix seconds when this attempt was signed |
| ``X-FundFlow-Signature`` | ``sha256=`` + hex HMAC-SHA256 of the signed string below |

The signed string is every value a receiver acts on, one per line, then the body
exactly as sent::

    {X-FundFlow-Timestamp} "\n" {X-FundFlow-Id} "\n" {X-FundFlow-Topic} "\n" {body bytes}

(ASCII header values; the id and topic never contain a line break, the sender
refuses to sign one that does). The timestamp is inside the MAC, so a captured
request cannot be replayed later than the receiver's tolerance
(``verify_signature``, five minutes by default); the id and topic are inside it,
so a replay with another ``X-FundFlow-Id`` (to slip past a receiver's dedupe)
fails verification. Receivers should still dedupe on the ``id`` in the body.

Redirects are not followed (a 3xx is a refusal: the signed request is not sent on
to another address), and no error text carries the receiver URL's credentials,
query or fragment (``redact``): it goes to logs and dead letters.

Retry policy (``WebhookPolicy``): connection errors, timeouts, 408, 429 and 5xx are
retried with FundFlow's one backoff (``streams.retry``), up to ``max_attempts``; any other
4xx means the receiver refuses this request (bad signature, bad URL) and retrying cannot
help, so it fails at once. What fails is the caller's to dead-letter. A stop asked while a
delivery waits between attempts ends it with ``Abandoned`` (never a dead letter: the
finding is not committed, so it is delivered after the restart).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

import streams.retry
from streams.errors import Abandoned
from streams.retry import Stop, wait
from streams.settings import safe_url

SIGNATURE_HEADER = "X-FundFlow-Signature"
TIMESTAMP_HEADER = "X-FundFlow-Timestamp"
ID_HEADER = "X-FundFlow-Id"
TOPIC_HEADER = "X-FundFlow-Topic"
DEFAULT_TOLERANCE_SECONDS = 300
_RETRYABLE_STATUS = frozenset({408, 429})
_USERINFO = re.compile(r"(?<=://)[^/\s'\"@]*@")


def signed_string(timestamp: int, finding_id: str, topic: str, body: bytes) -> bytes:
    """What the signature covers: timestamp, id and topic, one per line, then the body."""
    for name, value in (("id", finding_id), ("topic", topic)):
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"webhook {name} must be printable ASCII (no line breaks)")
    return f"{timestamp}\n{finding_id}\n{topic}\n".encode() + body


def sign(secret: bytes, timestamp: int, finding_id: str, topic: str, body: bytes) -> str:
    """The signature header value for ``body`` (finding ``finding_id`` from ``topic``) sent at ``timestamp``."""
    mac = hmac.new(secret, signed_string(timestamp, finding_id, topic, body), hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify_signature(
    secret: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """True when ``headers`` hold a valid, fresh signature of ``body`` and of the id,
    topic and timestamp headers.

    Constant-time comparison; a timestamp further than ``tolerance_seconds``
    from ``now`` (either way) is refused, which bounds replays.
    """
    stamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    finding_id, topic = headers.get(ID_HEADER, ""), headers.get(TOPIC_HEADER, "")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12) or not given or not finding_id or not topic:
        return False
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    try:
        expected = sign(secret, timestamp, finding_id, topic, body)
    except ValueError:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def redact(text: str, url: str) -> str:
    """``text`` (an error message) without ``url``'s credentials, query or fragment."""
    parts = urlsplit(url)
    text = text.replace(url, safe_url(url))
    secrets = [parts.query, parts.fragment, parts.netloc if "@" in parts.netloc else "", parts.password or ""]
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _USERINFO.sub("", text)  # any other URL's user:password@ (another spelling, a redirect)


@dataclass(frozen=True, slots=True)
class WebhookPolicy:
    """How one finding is POSTed to one receiver: each attempt bounded by ``timeout_seconds``,
    the attempts spaced and counted by ``retry`` (``streams.retry.RetryPolicy``, FundFlow's one
    policy). Unlike an outage of Redis or Kafka it gives up (``FUNDFLOW_WEBHOOK_*``): a
    receiver that keeps failing gets the finding dead-lettered and the stream moves on."""

    timeout_seconds: float = 5.0
    max_attempts: int = 6
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0

    @property
    def retry(self) -> streams.retry.RetryPolicy:
        return streams.retry.RetryPolicy(self.backoff_initial_seconds, self.backoff_max_seconds, self.max_attempts)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait before attempt ``attempt + 1``."""
        return self.retry.backoff(attempt, rng)


RetryPolicy = WebhookPolicy  # its former name, still used by tests/pipeline/test_webhook.py


@dataclass(frozen=True, slots=True)
class Delivery:
    url: str  # safe_url form
    delivered: bool
    attempts: int
    status: int | None
    error: str  # empty when delivered


class WebhookSender:
    """POSTs findings to one receiver with the signature and the retry policy."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        secret: bytes | None,
        policy: WebhookPolicy,
        *,
        stop: Stop = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[bool | None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``sleep(seconds)`` waits between attempts and returns whether a stop was asked
        (default: ``streams.retry.wait`` on ``stop``)."""
        if secret is not None and not secret:
            raise ValueError("an empty webhook secret signs nothing")
        self.session = session
        self.url = url
        self.label = safe_url(url)
        self.secret = secret
        self.policy = policy
        self.clock = clock
        self.sleep = sleep or functools.partial(wait, stop=stop)
        self.rng = rng or random.Random()

    def headers(self, finding_id: str, topic: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", ID_HEADER: finding_id, TOPIC_HEADER: topic}
        if self.secret is not None:
            timestamp = int(self.clock())
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(self.secret, timestamp, finding_id, topic, body)
        return headers

    async def deliver(self, finding_id: str, topic: str, body: bytes) -> Delivery:
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_seconds)
        status: int | None = None
        error = ""
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                async with self.session.post(
                    self.url,
                    data=body,
                    headers=self.headers(finding_id, topic, body),
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    await response.read()
                if 200 <= status < 300:
                    return Delivery(self.label, True, attempt, status, "")
                error = f"HTTP {status}"
                if status < 500 and status not in _RETRYABLE_STATUS:
                    return Delivery(self.label, False, attempt, status, f"{error}: refused by the receiver")
            except TimeoutError:
                status, error = None, f"no answer within {self.policy.timeout_seconds:g}s"
            except (aiohttp.ClientError, ValueError) as exc:  # yarl/aiohttp raise ValueError for some URLs
                status, error = None, redact(f"{type(exc).__name__}: {exc}", self.url)
            if attempt < self.policy.max_attempts and await self.sleep(self.policy.backoff(attempt, self.rng)):
                raise Abandoned(f"stopping while {self.label} is retried ({error})")
        return Delivery(self.label, False, self.policy.max_attempts, status, f"{error} after {attempt} attempts")

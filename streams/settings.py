"""One frozen settings object for the whole process, read from ``FUNDFLOW_*``.

Every threshold, rate, address and limit lives here (rule thresholds that
operators tune live in the rules YAML, see ``deploy/rules.yaml``). When
``kafka_bootstrap`` / ``redis_url`` are unset, the commands that need servers
start the embedded ones (``streams.local.servers``); when set, nothing embedded is
started and the same code runs against production Kafka and Redis.

What can go wrong: a malformed variable raises ``pydantic.ValidationError`` at
start-up; the CLI turns it into one line and a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rules.contribution import ContributionRates
from rules.metrics import SegmentThresholds
from rules.state import StateConfig

_SEGMENTS = SegmentThresholds()
_RATES = ContributionRates()

Role = Literal["viewer", "analyst", "supervisor"]
RESERVED_NAMES = frozenset({"system", "demo", "anonymous"})  # and token-N: cases.model.reserved_name
NAME_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"  # a person's name in tokens, assignments and the audit trail
MIN_TOKEN_LENGTH = 16  # an API token's characters at least: a guessable token is no access control


class ApiToken(BaseModel):
    """One API token with its role and the name the case audit trail records.

    ``FUNDFLOW_API_TOKENS='[{"token": "…", "role": "analyst", "name": "li.wei"}]'``;
    a plain string in the list is a full-access token (``streams.api.roles``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr = Field(min_length=1)
    role: Role
    name: str = Field(pattern=NAME_PATTERN, description="who the audit trail records")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNDFLOW_", frozen=True, extra="ignore")

    # --- servers -----------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="host:port[,host:port]; unset = start the embedded broker"
    )
    redis_url: str | None = Field(
        default=None, description="redis://[user:password@]host:port/db or rediss://; unset = embedded"
    )
    redis_cluster: bool = Field(default=False, description="Redis Cluster: group each commit script call by hash slot")
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    kafka_sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    partitions: int = Field(default=4, ge=1, le=1024, description="partitions of the input topics")
    replication_factor: int = Field(default=1, ge=1, le=7)

    # --- worker ------------------------------------------------------------
    app_id: str = "fundflow"
    key_prefix: str = Field(default="ff", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Redis key namespace")
    web_port: int = Field(default=6066, ge=0, le=65535)
    web_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="address the worker's --web-port and the relay's --metrics-port listen on "
        "(the pod IP or 0.0.0.0 to be scraped from another host)",
    )
    # 1,000, not 500: a worker that fell behind catches up faster (per-batch costs: round
    # trips, the commit call, Faust's bookkeeping), and the batches of a worker that keeps
    # up are smaller anyway (what arrived meanwhile): docs/performance.md, "Largest batch:
    # 500 or 1,000"
    batch_max_events: int = Field(
        default=1000, ge=1, le=100_000, description="largest batch (a worker behind takes this many at once)"
    )
    batch_within_seconds: float = Field(
        default=0.005, gt=0, le=10, description="longest a batch waits to fill while records queue (idle: no wait)"
    )
    batch_busy_linger_seconds: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="longest a batch waits for the records Kafka already holds for it (a worker behind); 0: off",
    )
    broker_session_timeout: float = 10.0
    broker_heartbeat_interval: float = 1.0
    broker_rebalance_timeout: float = 4.0
    broker_commit_interval: float = 1.0
    fetch_max_wait_ms: int = Field(
        default=100, ge=1, le=5000, description="longest a fetch waits for records (latency floor on some brokers)"
    )
    producer_linger_ms: int = Field(
        default=5,
        ge=0,
        le=10_000,
        description="replay/tool producers: how long a batch waits to fill (the demo: 1000, see docs/demo.md)",
    )
    retry_initial_seconds: float = Field(default=0.05, gt=0)
    retry_max_seconds: float = Field(default=5.0, gt=0)
    max_event_bytes: int = Field(default=64 * 1024, ge=256, description="larger records are dead-lettered")
    event_time_earliest: dt.date = Field(
        default=dt.date(1970, 1, 1),
        ge=dt.date(1900, 1, 1),
        le=dt.date(8999, 1, 1),
        description="events (and loan due dates) before this date are dead-lettered implausible_timestamp",
    )
    event_time_max_skew_seconds: float = Field(
        default=86_400.0,
        ge=0,
        le=10_000 * 366 * 86_400,
        description="how far event time may run ahead of its Kafka record's timestamp (of the wall clock when "
        "the record has none) before it is dead-lettered implausible_timestamp",
    )
    stalled_after_seconds: float = Field(
        default=30.0,
        gt=0,
        description="a batch retried this long marks its partitions stalled: /readyz 503, fundflow_partition_stalled",
    )
    compress_state: bool = Field(default=True, description="zstd-compress the state blobs in Redis (~2.5x less memory)")
    cache_customers: int = Field(default=200_000, ge=0, description="states a worker keeps in memory")
    snapshot_every: int = Field(
        default=8,
        ge=1,
        le=64,
        description="a customer's full state is written every Nth commit; the others append the batch's records "
        "to its changelog, replayed on load (1: always the full state; docs/changelog.md)",
    )
    fold_after_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a customer whose changelog has not grown for this long gets its full state written and its "
        "log dropped (a worker folds up to 512 a second while batches flow, up to 8,192 when none came for a second)",
    )
    gc_threshold: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt] = Field(
        default=(10_000, 2, 1_000),
        description="the worker's garbage-collector thresholds (gc.set_threshold, 0 turns it off); a JSON list; "
        "only the first still matters: every collection and every committed batch freeze what survived, so the "
        "older generations are never collected (streams/health.py)",
    )

    # --- metrics (docs/metrics.md) -------------------------------
    bank_tz: str = "Asia/Shanghai"
    currency: str = Field(
        default="CNY",
        pattern=r"^[A-Z]{3}$",
        description="the deployment's one reporting currency (ISO 4217): events in another are dead-lettered "
        "currency_mismatch; amounts may carry its minor digits (0 for JPY, 2 for CNY, 3 for BHD)",
    )
    live_from: dt.datetime | None = Field(
        default=None,
        description="go-live instant (RFC 3339, event time): findings before it are history, kept and shown but "
        "never delivered (fundflow.history.v1); unset: every finding is live (docs/going-live.md)",
    )
    cases_max_comments: int = Field(
        default=1000, ge=1, le=1_000_000, description="comments one case holds at most (then 409)"
    )
    cases_from_history: bool = Field(
        default=False, description="the case intake also opens cases for history findings (before live_from)"
    )
    lot_cap: int = Field(default=256, ge=2, le=100_000)
    dedup_horizon_days: int = Field(
        default=120,
        ge=92,
        le=3650,
        description="txn_ids are remembered this long (event time) per customer; older events are dead-lettered",
    )
    # segment thresholds; the defaults are metrics.md's, kept in rules/ (one source of truth)
    high_activity_txn_per_day: Decimal = _SEGMENTS.high_activity_txn_per_day
    low_activity_txn_per_day: Decimal = _SEGMENTS.low_activity_txn_per_day
    high_repayment_30d: Decimal = _SEGMENTS.high_repayment_30d
    dispersed_funds_banks_90d: int = _SEGMENTS.dispersed_funds_banks_90d

    # --- contribution (FTP model; defaults in rules.contribution) ----------
    ftp_deposit_price: Decimal = _RATES.ftp_deposit_price
    deposit_rate_paid: Decimal = _RATES.deposit_rate_paid
    ftp_loan_price: Decimal = _RATES.ftp_loan_price
    vat_rate: Decimal = _RATES.vat_rate
    risk_cost_rate: Decimal = _RATES.risk_cost_rate
    income_tax_rate: Decimal = _RATES.income_tax_rate
    capital_ratio: Decimal = _RATES.capital_ratio
    hurdle_rate: Decimal = _RATES.hurdle_rate
    tier_refresh_seconds: float = Field(default=30.0, gt=0)
    board_days_kept: int = Field(default=400, ge=31, description="看板 days kept before the latest event's day")
    board_open_days: int = Field(
        default=8,
        ge=1,
        le=400,
        description="看板 days (the latest included) whose net-outflow sets stay whole; an older day is closed and "
        "cut to its top board_top_kept customers (docs/scale.md)",
    )
    board_fold_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="on Redis Cluster: how often a worker carries the 看板 cells its commits left in their slots "
        "into the bank-wide keys (GET /board shows them as of the last fold; docs/scale.md)",
    )
    board_top_kept: int = Field(
        default=200,
        ge=100,
        le=100_000,
        description="customers a closed 看板 day keeps by net outflow: the 100 GET /board can show, and as many "
        "again for late events that lower a shown one (docs/scale.md)",
    )

    # --- rules and delivery -------------------------------------------------
    rules_file: Path = Field(
        default=Path("deploy/rules.yaml"),
        description="the rules a deployment starts with (version 1 when Redis holds no rule versions; "
        "after that rules change only through versions); a missing file is an error at start-up; "
        "'defaults': the built-in rules, no file",
    )
    rules_fallback: Literal["none", "last-good"] = Field(
        default="none",
        description="last-good: a worker whose rules file is bad or missing at start-up runs on the rules "
        "last in force (kept in Redis) and says so, instead of exiting",
    )
    shadow_rules_file: Path | None = Field(
        default=None,
        description="rules a worker judges beside the live ones from the beginning of time (the history "
        "shadow of `fundflow shadow EVENTS`); a running system shadows through rule versions",
    )
    # A promotion without an instant takes effect this long after it is made: every worker
    # re-reads the rule timeline within it, so none has judged an event past the instant
    # under the old version when the instant comes (docs/rules-lifecycle.md).
    rules_promotion_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=86_400,
        description="how long after a promotion (`fundflow rules promote` without --at) the version takes effect",
    )
    contact_file: Path = Field(
        default=Path("defaults"),
        description="the contact table: routes by live tier and finding category, complaint_quiet_days "
        "(docs/contact.md; deploy/contact.yaml is the built-in table written out, to copy and edit); read "
        "strictly at start-up by the relay and the API; 'defaults': the built-in table",
    )
    contact_buckets: int = Field(
        default=131_072,
        ge=1,
        le=2**24,
        description="consent bucket hashes in Redis: keep customers / buckets under 100 so each stays a "
        "listpack (docs/contact.md); changing it needs the consent imported again into a fresh prefix",
    )
    webhook_urls: tuple[str, ...] = Field(default=(), description='JSON list, e.g. ["https://rm.bank/hook"]')
    webhook_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for X-FundFlow-Signature")
    webhook_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    webhook_max_attempts: int = Field(default=6, ge=1, le=100)
    webhook_backoff_initial_seconds: float = Field(default=0.5, gt=0)
    webhook_backoff_max_seconds: float = Field(default=30.0, gt=0)
    webhook_concurrency: int = Field(default=16, ge=1, le=1000, description="POSTs in flight per relay")
    webhook_dedupe_days: int = Field(default=14, ge=1, le=365, description="delivered ids are remembered this long")
    api_tokens: tuple[SecretStr | ApiToken, ...] = Field(
        default=(),
        description='JSON list of tokens: "secret" (full access) or {"token","role","name"}; '
        "role viewer | analyst | supervisor",
    )
    api_max_streams: int = Field(default=200, ge=1, le=100_000, description="open /alerts/stream per API process")
    api_max_streams_per_token: int = Field(default=20, ge=1, le=100_000, description="open streams per bearer token")
    api_stream_heartbeat_seconds: float = Field(
        default=5.0, gt=0, le=60, description="a comment on a quiet stream this often: a client that left is noticed"
    )

    # --- fault injection (reliability tests; never set in production) -------
    crash_after_commits: int = Field(
        default=0, ge=0, description="kill -9 this worker right after its N-th state commit (0 = never)"
    )

    # --- embedded stack -----------------------------------------------------
    var_dir: Path = Field(default=Path("var"), description="logs and pid files of embedded servers")

    @field_validator("live_from")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2026-12-01T00:00:00+08:00")
        return value

    @field_validator("bank_tz")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _token_entries(cls, value: Any) -> Any:
        """Each entry a plain token or an ``ApiToken`` object; a bad one named in one line."""
        if not isinstance(value, (list, tuple)):
            return value
        entries: list[Any] = []
        for place, entry in enumerate(value, start=1):
            if isinstance(entry, dict):
                try:
                    entry = ApiToken.model_validate(entry)
                except ValidationError as exc:
                    first = exc.errors(include_input=False, include_url=False)[0]
                    where = ".".join(str(p) for p in first["loc"]) or "entry"
                    raise ValueError(f"token {place}: {where}: {first['msg']}") from None
            entries.append(entry)
        return entries

    @field_validator("api_tokens")
    @classmethod
    def _distinct_tokens(cls, value: tuple[SecretStr | ApiToken, ...]) -> tuple[SecretStr | ApiToken, ...]:
        secrets = [(t.token if isinstance(t, ApiToken) else t).get_secret_value() for t in value]
        for place, secret in enumerate(secrets, start=1):  # never the token itself in the message
            if len(secret) < MIN_TOKEN_LENGTH or not all("\x21" <= c <= "\x7e" for c in secret):
                raise ValueError(f"token {place}: at least {MIN_TOKEN_LENGTH} visible ASCII characters, no spaces")
        roles: dict[str, str] = {}
        for place, entry in enumerate(value, start=1):
            if not isinstance(entry, ApiToken):
                continue
            name = entry.name
            if name.lower() in RESERVED_NAMES or re.fullmatch(r"token-[0-9]+", name.lower()):
                raise ValueError(f"token {place}: name {name!r} is reserved: the product writes it in the trail")
            if roles.setdefault(name, entry.role) != entry.role:
                raise ValueError(f"token {place}: name {name!r} has two roles, {roles[name]} and {entry.role}")
        if len(set(secrets)) != len(secrets):
            raise ValueError("the same token is listed twice")
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.bank_tz)


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def state_config(settings: Settings) -> StateConfig:
    return StateConfig(
        zone=settings.zone,
        lot_cap=settings.lot_cap,
        dedup_horizon_days=settings.dedup_horizon_days,
        currency=settings.currency,
    )


def thresholds(settings: Settings) -> SegmentThresholds:
    return SegmentThresholds(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(SegmentThresholds)})


def rates(settings: Settings) -> ContributionRates:
    return ContributionRates(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(ContributionRates)})


def safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment: fit for logs and dead letters."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))

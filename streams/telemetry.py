"""Every Prometheus metric FundFlow exports, declared in one place.

Labels carry bounded codes only (outcome, reason, rule, severity, topic,
partition): never a customer or account id. Workers and the API serve these
on ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

EVENTS = Counter("fundflow_events_total", "Input records by outcome", ["outcome"])
DEAD_LETTERS = Counter("fundflow_dead_letters_total", "Records sent to the dead-letter topic", ["reason"])
FINDINGS = Counter("fundflow_findings_total", "Alerts, recommendations and push triggers committed")
FINDINGS_BY_RULE = Counter("fundflow_alerts_total", "Findings emitted by rule and severity", ["rule", "severity"])
SUPPRESSED = Counter("fundflow_alerts_suppressed_total", "Findings held back", ["rule", "why"])
REPUBLISHED = Counter("fundflow_outbox_republished_total", "Outbox entries found after a crash and re-sent")
TRANSIENT_RETRIES = Counter("fundflow_transient_retries_total", "Batches retried after a Redis/Kafka error")
VERSION_CONFLICTS = Counter("fundflow_version_conflicts_total", "Commits refused by the version check")
CHANGELOG_COMMITS = Counter(
    "fundflow_changelog_commits_total", "Customer commits by what they wrote (state: whole; log: appended)", ["wrote"]
)
CHANGELOG_REPLAYED = Counter("fundflow_changelog_replayed_total", "Changelog entries replayed when states were loaded")
CHANGELOG_FOLDED = Counter("fundflow_changelog_folded_total", "Customers whose quiet changelog a worker folded")
CHANGELOG_HELD = Gauge(
    "fundflow_changelog_customers", "Customers with a changelog in Redis this worker caches or has queued for the fold"
)
CHANGELOG_LEFT = Counter(
    "fundflow_changelog_left_total",
    "Customers the cache let go with a changelog the fold's queue had no room for (it stays until their next commits)",
)
BATCH_SIZE = Histogram(
    "fundflow_batch_size", "Records per processed batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000)
)
E2E_LATENCY = Histogram(
    "fundflow_end_to_end_latency_seconds",
    "Produce time of a record to its state committed in Redis",
    buckets=LATENCY_BUCKETS_S,
)
BATCH_SECONDS = Histogram(
    "fundflow_batch_processing_seconds",
    "Wall time of one batch, from decoding to published (with the wait for the batch before it)",
    buckets=LATENCY_BUCKETS_S,
)
REDIS_SECONDS = Histogram(
    "fundflow_redis_roundtrip_seconds",
    "Redis round trips by operation",
    ["operation"],
    buckets=LATENCY_BUCKETS_S,
)
BROKER_FETCH_COST = Histogram(
    "fundflow_broker_fetch_cost_seconds",
    "A fetch's round trip to the broker, less the max wait it asked for when it returned no records",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REDIS_ERRORS = Counter("fundflow_redis_errors_total", "Redis errors by operation", ["operation"])
PARTITION_STALLED = Gauge(
    "fundflow_partition_stalled",
    "1 while a batch of this input partition has been retried for FUNDFLOW_STALLED_AFTER_SECONDS or more",
    ["topic", "partition"],
)
CONSUMER_LAG = Gauge("fundflow_consumer_lag", "Records behind the end of the partition", ["topic", "partition"])
WEBHOOK_DELIVERIES = Counter("fundflow_webhook_deliveries_total", "Webhook delivery outcomes", ["outcome"])
WEBHOOK_SECONDS = Histogram(
    "fundflow_webhook_delivery_seconds", "One finding to one receiver, retries included", buckets=LATENCY_BUCKETS_S
)
PUSHES_HELD = Counter("fundflow_pushes_held_total", "Pushes the webhook relay held at delivery", ["rule", "why"])
CONSENT_RECORDS = Counter("fundflow_consent_records_total", "Consent records made through the API", ["kind"])
ADAPTER_RECORDS = Counter("fundflow_adapter_records_total", "CDC change records by outcome", ["format", "outcome"])
RULES_RELOADS = Counter("fundflow_rules_reloads_total", "Rules file loads by outcome", ["outcome"])
RULES_RELOAD_REJECTED = Gauge(
    "fundflow_rules_reload_rejected",
    "1 while the worker runs on its last good rules: a version in the timeline it cannot load, or a start on "
    "the fallback",
)
RULES_FILE_IGNORED = Gauge(
    "fundflow_rules_file_ignored",
    "1 while the rules file differs from the version in force (or cannot be read): it is not applied",
)
API_REQUESTS = Counter("fundflow_api_requests_total", "API requests by route pattern and status", ["route", "status"])
API_SECONDS = Histogram(
    "fundflow_api_request_seconds", "API request time by route pattern", ["route"], buckets=LATENCY_BUCKETS_S
)
API_STREAMS = Gauge("fundflow_api_open_streams", "Open /alerts/stream connections")
API_STREAMS_LIMITED = Counter(
    "fundflow_api_streams_limited_total",
    "Live streams refused at a cap (token: per-token cap, server: total cap) or ended for reading too slowly (slow)",
    ["why"],
)
# The API process's own: only its /metrics serves this registry (a worker exporting an API
# gauge would make every alert on it match the workers too).
API_REGISTRY = CollectorRegistry(auto_describe=True)
API_READY = Gauge(
    "fundflow_api_ready",
    "1 when the API's last readiness check (a timer, and every /readyz) reached Kafka and Redis",
    registry=API_REGISTRY,
)
DEPENDENCY_UP = Gauge("fundflow_dependency_up", "1 when the last check reached it (redis, kafka)", ["dependency"])
PAUSE_SECONDS = Histogram(
    "fundflow_pause_seconds",
    "Stretches in which the worker's event loop ran nothing else, by cause (gc, loop)",
    ["cause"],
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5),
)
LONGEST_PAUSE = Gauge("fundflow_longest_pause_seconds", "The longest pause of each cause since start", ["cause"])
TIER_CUSTOMERS = Gauge("fundflow_tier_customers", "Customers per contribution tier", ["tier"])
TIER_BANDS_SET = Counter(
    "fundflow_tier_bands_set_total", "Times this process set the live tiers' bands anew (a walk of the sub-shards)"
)
BOARD_FOLDED = Gauge(
    "fundflow_board_fold_last_success_timestamp_seconds",
    "Redis Cluster: when this worker last folded its 看板 shards' pending cells (Unix time)",
)
TIER_REFRESHED = Gauge(
    "fundflow_tier_refresh_last_success_timestamp_seconds", "When this worker last refreshed the live tiers (Unix time)"
)
CASES_OPENED = Counter("fundflow_cases_opened_total", "Cases opened by the case intake")
CASE_FINDINGS_JOINED = Counter("fundflow_case_findings_joined_total", "Findings that joined an open case")
CASE_RETRACTIONS = Counter(
    "fundflow_case_retractions_total", "Retractions the case intake took, by what they did to a case", ["outcome"]
)
CASE_INTAKE_GAPS = Counter(
    "fundflow_case_intake_gaps_total", "Times the findings feed was trimmed past the case intake's cursor"
)
CASE_ACTIONS = Counter("fundflow_case_actions_total", "Case changes made by people", ["action"])
CASES = Gauge("fundflow_cases", "Cases by status", ["status"])
RULE_PRECISION = Gauge("fundflow_rule_precision", "Confirmed / resolved cases of a rule (NaN before any)", ["rule"])
RULE_RESOLVED = Gauge("fundflow_rule_resolved_cases", "Resolved cases with a finding of the rule", ["rule"])
RULE_CONFIRMED = Gauge("fundflow_rule_confirmed_cases", "Resolved cases of the rule the analyst confirmed", ["rule"])
RULE_CASES = Gauge("fundflow_rule_cases", "Cases with a finding of the rule, any status", ["rule"])
RULE_FIRST_ACTION = Gauge(
    "fundflow_rule_median_first_action_seconds", "Median open -> first human action over resolved cases", ["rule"]
)
RULE_RESOLUTION = Gauge(
    "fundflow_rule_median_resolution_seconds", "Median open -> resolution over resolved cases", ["rule"]
)


def observe_latencies(latencies_ms: Iterable[int]) -> None:
    for ms in latencies_ms:
        E2E_LATENCY.observe(ms / 1000)


def serve_metrics(port: int, host: str) -> Any:
    """``/metrics`` on ``host:port`` in a daemon thread (the relay's ``--metrics-port``).
    ``host`` is ``FUNDFLOW_WEB_HOST``: 127.0.0.1 unless told (prometheus_client's own
    default is every interface). Returns the server (``server_address``, ``shutdown()``)."""
    server, _ = start_http_server(port, addr=host)
    return server

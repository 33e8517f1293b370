"""Kafka topic names, from ``docs/events.md``.

Every topic is keyed by customer_id and created with the same partition count,
so the input topics are co-partitioned: one worker owns a customer's
transactions and loans together.
"""

from __future__ import annotations

TRANSACTIONS = "fundflow.transactions.v1"
LOANS = "fundflow.loans.v1"
ALERTS = "fundflow.alerts.v1"
RECOMMENDATIONS = "fundflow.recommendations.v1"
MARKETING = "fundflow.marketing.v1"
DLQ = "fundflow.dlq.v1"
HISTORY = "fundflow.history.v1"  # findings before FUNDFLOW_LIVE_FROM: kept, never delivered
SHADOW = "fundflow.shadow.v1"  # a shadow run's findings and differences: never delivered

INPUT_TOPICS = (TRANSACTIONS, LOANS)
OUTPUT_TOPICS = (ALERTS, RECOMMENDATIONS, MARKETING, DLQ, HISTORY, SHADOW)


def all_topics(partitions: int) -> dict[str, int]:
    """Every FundFlow topic with the same partition count."""
    return {topic: partitions for topic in (*INPUT_TOPICS, *OUTPUT_TOPICS)}

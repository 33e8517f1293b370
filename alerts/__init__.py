"""Delivery of what the rules find: dedup, routing, sinks (Kafka, webhooks)."""

"""Pure business logic of FundFlow: event types, per-customer state, metrics.

Nothing in this package does I/O, reads a clock or talks to Redis or Kafka.
Every function takes data and returns data, so it is tested with plain unit
and property tests against slow reference implementations.
"""

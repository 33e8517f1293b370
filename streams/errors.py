"""The small exception tree that decides what happens to a failure.

- ``InvalidEvent``: the input itself is wrong. Never retried; the record goes
  to the dead-letter topic with ``reason`` (a short stable code, used as a
  metric label) and ``error`` (a human-readable detail without personal data).
- ``TransientError``: Redis or Kafka hiccup. Retried with backoff, never
  dropped, never dead-lettered.
- ``ConfigError``: a setting or rules file is unusable; the CLI prints one line.
"""

from __future__ import annotations


class FundFlowError(Exception):
    """Base of every error FundFlow raises on purpose."""


class InvalidEvent(FundFlowError):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


class TransientError(FundFlowError):
    """A dependency failed in a way that retrying can fix."""


class Abandoned(FundFlowError):
    """The process (the worker, the relay) is stopping while a batch cannot be finished (Redis
    or Kafka down): the batch is given up unacked, so its records are redelivered to the next owner."""


class ConfigError(FundFlowError):
    """A setting, a rules file or a command-line argument is unusable."""

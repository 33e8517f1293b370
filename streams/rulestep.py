"""The worker's per-event step with the business rules attached.

``rules_step`` wraps the pure state step: only an event that was APPLIED is
judged (a duplicate, a conflict or a too-late event fires nothing), and the
findings become outbox entries that the pipeline commits atomically with the
state. ``RulesProvider`` re-reads ``FUNDFLOW_RULES_FILE`` when it changes
(checked at most every few seconds): a valid file takes effect in the running
worker, an invalid one is logged in one line and the last good configuration
stays in force.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from rules.config import RulesConfig, RulesConfigError, load_rules
from rules.engine import Finding, judge
from rules.events import Event
from rules.state import CustomerState, Outcome, StateConfig, apply_event
from streams import telemetry
from streams.errors import ConfigError
from streams.pipeline import Step, outbox_entry
from streams.settings import Settings, state_config
from streams.topics import ALERTS, MARKETING, RECOMMENDATIONS

log = logging.getLogger(__name__)

TOPIC_OF_KIND = {"alert": ALERTS, "recommendation": RECOMMENDATIONS, "push": MARKETING}


class RulesProvider:
    """The current rules: the file's last good version, reloaded when its mtime changes."""

    def __init__(
        self,
        path: Path | None,
        check_every_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.check_every = check_every_seconds
        self.clock = clock
        self.config = RulesConfig()
        self._mtime: float | None = None
        self._next_check = 0.0
        if path is not None:
            self.config = load_rules(path)  # a bad file at start-up is an error, not a silent default
            self._mtime = path.stat().st_mtime
            telemetry.RULES_RELOADS.labels("loaded").inc()

    def current(self) -> RulesConfig:
        now = self.clock()
        if self.path is None or now < self._next_check:
            return self.config
        self._next_check = now + self.check_every
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            log.error("rules file %s unreadable (%s); keeping the last good rules", self.path, exc)
            return self.config
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self.config = load_rules(self.path)
            except RulesConfigError as exc:
                telemetry.RULES_RELOADS.labels("rejected").inc()
                log.error("rules file rejected, keeping the last good rules: %s", exc)
            else:
                telemetry.RULES_RELOADS.labels("loaded").inc()
                log.warning("rules reloaded from %s", self.path)
        return self.config


def finding_entry(finding: Finding, config: StateConfig) -> bytes:
    value = orjson.dumps(finding.as_dict(config.zone))
    return outbox_entry(TOPIC_OF_KIND[finding.kind], finding.customer_id, value)


def rules_step(config: StateConfig, provider: RulesProvider) -> Step:
    """The step: a finding depends on the customer's events and the rules only
    (docs/findings.md), never on the live tier, which a wall-clock timer refreshes."""

    def step(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        balance_before = state.balance
        outcome = apply_event(state, event, config)
        if outcome is not Outcome.APPLIED:
            return outcome, []
        judgement = judge(state, event, balance_before, provider.current(), config)
        for rule, why in judgement.suppressed:
            telemetry.SUPPRESSED.labels(rule, why).inc()
        entries = []
        for finding in judgement.findings:
            telemetry.FINDINGS_BY_RULE.labels(finding.rule, finding.severity).inc()
            entries.append(finding_entry(finding, config))
        return outcome, entries

    return step


def build_step(settings: Settings) -> Step:
    """The per-event step the worker runs: state plus the business rules when configured."""
    path = settings.rules_file if settings.rules_file.exists() else None
    if path is None:
        logging.getLogger(__name__).warning("no rules file at %s: default thresholds", settings.rules_file)
    try:
        provider = RulesProvider(path)
    except RulesConfigError as exc:
        raise ConfigError(str(exc)) from None
    return rules_step(state_config(settings), provider)

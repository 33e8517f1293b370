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

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from rules.config import RulesConfig, RulesConfigError, load_rules
from rules.engine import Finding, judge
from rules.events import Event
from rules.state import CustomerState, Outcome, StateConfig, apply_event, to_us
from streams import telemetry
from streams.errors import ConfigError
from streams.pipeline import Step, outbox_entry
from streams.settings import Settings, state_config
from streams.storage.keys import Keys
from streams.storage.store import StateStore
from streams.topics import ALERTS, HISTORY, MARKETING, RECOMMENDATIONS

log = logging.getLogger(__name__)

TOPIC_OF_KIND = {"alert": ALERTS, "recommendation": RECOMMENDATIONS, "push": MARKETING}


DEFAULTS = "defaults"  # FUNDFLOW_RULES_FILE=defaults: the built-in rules, asked for by name


def built_in(settings: Settings) -> bool:
    """Whether the settings ask for the built-in rules instead of a file."""
    return str(settings.rules_file) == DEFAULTS


class RulesProvider:
    """The current rules: the file's last good version, reloaded when its mtime changes.

    ``fallback``: rules to run on when the file cannot be used at start-up (the last good
    ones kept in Redis, ``FUNDFLOW_RULES_FALLBACK=last-good``); without it such a file is an
    error. While the rules in force are not the file's (a rejected reload, or a start on the
    fallback), ``fundflow_rules_reload_rejected`` is 1."""

    def __init__(
        self,
        path: Path | None,
        check_every_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        fallback: RulesConfig | None = None,
    ) -> None:
        self.path = path
        self.check_every = check_every_seconds
        self.clock = clock
        self.config = RulesConfig()
        self._mtime: float | None = None
        self._next_check = 0.0
        self._unreadable = False  # (said once, not at every check)
        if path is not None:
            try:
                self._mtime = path.stat().st_mtime
            except OSError:
                self._mtime = None
            try:
                self.config = load_rules(path)  # a bad file at start-up is an error, not a silent default
            except RulesConfigError:
                if fallback is None:
                    raise
                self.config = fallback
                telemetry.RULES_RELOADS.labels("rejected").inc()
                telemetry.RULES_RELOAD_REJECTED.set(1)
                return
            telemetry.RULES_RELOADS.labels("loaded").inc()
            telemetry.RULES_RELOAD_REJECTED.set(0)

    def current(self) -> RulesConfig:
        now = self.clock()
        if self.path is None or now < self._next_check:
            return self.config
        self._next_check = now + self.check_every
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            if not self._unreadable:
                log.error("rules file %s unreadable (%s); keeping the last good rules", self.path, exc)
                self._unreadable = True
            telemetry.RULES_RELOAD_REJECTED.set(1)
            return self.config
        self._unreadable = False
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self.config = load_rules(self.path)
            except RulesConfigError as exc:
                telemetry.RULES_RELOADS.labels("rejected").inc()
                telemetry.RULES_RELOAD_REJECTED.set(1)
                log.error("rules file rejected, keeping the last good rules: %s", exc)
            else:
                telemetry.RULES_RELOADS.labels("loaded").inc()
                telemetry.RULES_RELOAD_REJECTED.set(0)
                log.warning("rules reloaded from %s", self.path)
        return self.config


def finding_entry(finding: Finding, config: StateConfig, live_from_us: int | None = None) -> bytes:
    """The outbox entry of ``finding``: its topic and JSON; a finding whose event time is
    before the go-live (``FUNDFLOW_LIVE_FROM``) is history, marked so and kept apart from
    every topic anyone delivers from (docs/events.md, "History"), and so is the retraction of
    such a finding, which nobody was shown."""
    data = finding.as_dict(config.zone)
    topic = TOPIC_OF_KIND[finding.kind]
    when = finding.retracted_us if finding.retracted_us is not None else finding.ts_us
    if live_from_us is not None and when < live_from_us:
        data["history"] = True
        topic = HISTORY
    return outbox_entry(topic, finding.customer_id, orjson.dumps(data))


def rules_step(config: StateConfig, provider: RulesProvider) -> Step:
    """The step: a finding depends on the customer's events and the rules only
    (docs/findings.md), never on the live tier, which a wall-clock timer refreshes."""

    def step(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        return _judged(state, event, config, provider.current(), quiet=False)

    return step


def _judged(
    state: CustomerState,
    event: Event,
    config: StateConfig,
    rules: RulesConfig,
    *,
    quiet: bool,
    live_from_us: int | None = None,
) -> tuple[Outcome, list[bytes]]:
    balance_before = state.balance
    outcome = apply_event(state, event, config)
    if outcome is not Outcome.APPLIED:
        return outcome, []
    judgement = judge(state, event, balance_before, rules, config)
    if quiet:  # a replay: these findings were counted (and committed) when first made
        return outcome, []
    for rule, why in judgement.suppressed:
        telemetry.SUPPRESSED.labels(rule, why).inc()
    entries = []
    for finding in judgement.findings:
        telemetry.FINDINGS_BY_RULE.labels(finding.rule, finding.severity).inc()
        entries.append(finding_entry(finding, config, live_from_us))
    return outcome, entries


def fingerprint(rules: RulesConfig) -> tuple[str, bytes]:
    """The rules' fingerprint (what a changelog entry names) and their JSON, the same in
    every process: keys sorted, and the sets (``disabled``, ``opt_out``...: the rules have
    no ordered lists), which pydantic writes in the process's hash order, sorted."""
    text = orjson.dumps(_canonical(rules.model_dump(mode="json")), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(text).hexdigest()[:16], text


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((_canonical(item) for item in value), key=orjson.dumps)
    return value


class RulesStep:
    """The worker's step (``rules_step``) as a changelog's ``Rulebook`` (``streams.storage.changelog``):
    the rules change only at ``refresh`` (the processor calls it between customers, so all
    of one customer's records in a batch run under one set, which its log entry names), and
    every set of rules this process has run under can replay the entries made under it."""

    def __init__(self, config: StateConfig, provider: RulesProvider, live_from_us: int | None = None) -> None:
        self.config = config
        self.provider = provider
        self.live_from_us = live_from_us
        self._known: dict[str, tuple[bytes, Step]] = {}
        self._rules = provider.config
        self._fingerprint = self._know(self._rules)

    def __call__(self, state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        return _judged(state, event, self.config, self._rules, quiet=False, live_from_us=self.live_from_us)

    def _know(self, rules: RulesConfig) -> str:
        fp, text = fingerprint(rules)
        if fp not in self._known:
            config = self.config

            def replay(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
                return _judged(state, event, config, rules, quiet=True)

            self._known[fp] = (text, replay)
        return fp

    def refresh(self) -> str:
        """The fingerprint of the rules the step runs under from now (reloaded if changed)."""
        rules = self.provider.current()
        if rules is not self._rules:
            self._rules = rules
            self._fingerprint = self._know(rules)
        return self._fingerprint

    def rules_json(self, fp: str) -> bytes | None:
        known = self._known.get(fp)
        return known[0] if known is not None else None

    def replay_step(self, fp: str) -> Step | None:
        known = self._known.get(fp)
        return known[1] if known is not None else None

    def learn(self, text: bytes) -> str:
        """Rules another process ran under (their JSON, as stored by fingerprint)."""
        try:
            rules = RulesConfig.model_validate_json(text)
        except ValueError as exc:
            raise ValueError(f"stored rules cannot be read: {exc}") from None
        return self._know(rules)


def reader_rules(settings: Settings) -> RulesStep:
    """A reader's rulebook (``StateStore(rulebook=...)``): it replays a changelog under the
    rules each entry names, as the workers stored them; it needs no rules file."""
    return RulesStep(state_config(settings), RulesProvider(None))


def reader_store(client: Any, settings: Settings, keys: Keys | None = None) -> StateStore:
    """A ``StateStore`` for reading states (the API, the CLI, tools): a changelog is replayed
    under the state settings of ``settings`` and the rules each entry names."""
    keys = keys if keys is not None else Keys(settings.key_prefix)
    return StateStore(client, keys, config=state_config(settings), rulebook=reader_rules(settings))


def rules_at_start(settings: Settings) -> RulesConfig:
    """The rules a worker starts with: the file's (``FUNDFLOW_RULES_FILE``), or the built-in
    ones when asked for by name; ``ConfigError`` in one line when the file is missing or bad."""
    if built_in(settings):
        return RulesConfig()
    path = settings.rules_file
    if not path.exists():
        raise ConfigError(f"no rules file at {path} (FUNDFLOW_RULES_FILE=defaults: the built-in rules)")
    try:
        return load_rules(path)
    except RulesConfigError as exc:
        raise ConfigError(str(exc)) from None


async def last_good_rules(store: StateStore) -> tuple[str, RulesConfig] | None:
    """The rules last in force (``{p}:rules:current``) as Redis keeps them, with their
    fingerprint; None when there are none."""
    fp = await store.current_rules()
    if fp is None:
        return None
    text = (await store.rules_of([fp])).get(fp)
    if text is None:
        return None
    try:
        return fp, RulesConfig.model_validate_json(text)
    except ValueError:
        return None


def build_step(settings: Settings, fallback: RulesConfig | None = None) -> RulesStep:
    """The per-event step the worker runs: state plus the business rules (``rules_at_start``;
    ``fallback``: the rules to run on instead when the file cannot be used)."""
    if built_in(settings):
        log.info("built-in default rules (FUNDFLOW_RULES_FILE=%s)", DEFAULTS)
        provider = RulesProvider(None)
    else:
        if fallback is None:
            rules_at_start(settings)  # (missing or bad: one line)
        try:
            provider = RulesProvider(settings.rules_file, fallback=fallback)
        except RulesConfigError as exc:
            raise ConfigError(str(exc)) from None
    live_from_us = to_us(settings.live_from) if settings.live_from is not None else None
    return RulesStep(state_config(settings), provider, live_from_us)

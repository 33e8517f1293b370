"""The worker's per-event step with the business rules attached.

``rules_step`` wraps the pure state step: only an event that was APPLIED is
judged (a duplicate, a conflict or a too-late event fires nothing), and the
findings become outbox entries that the pipeline commits atomically with the
state. The rules are a ``Timeline``: each event is judged under the rule version
in force at its own event time, and, while a version runs in shadow, under that
one too, with a rule memory of its own; the shadow's findings and differences
are outbox entries on ``fundflow.shadow.v1`` (docs/events.md, "Shadow runs").
A worker follows the versions in Redis (``VersionFollower``); ``FUNDFLOW_RULES_FILE``
gives version 1 and the rules of the tools that run without versions
(``RulesProvider``), and a file changed later is said, never applied.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import orjson

from rules.config import RulesConfig, RulesConfigError, load_rules
from rules.engine import Finding, Judgement, judge
from rules.events import Event, TransactionEvent
from rules.state import CustomerState, Outcome, StateConfig, apply_event, event_time, to_us
from rules.versions import fingerprint as fingerprint  # (what a changelog entry names rules by)
from streams import telemetry
from streams.errors import ConfigError
from streams.pipeline import Step, outbox_entry
from streams.settings import Settings, state_config
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from streams.storage.store import StateStore
from streams.topics import ALERTS, HISTORY, MARKETING, RECOMMENDATIONS, SHADOW

log = logging.getLogger(__name__)

TOPIC_OF_KIND = {"alert": ALERTS, "recommendation": RECOMMENDATIONS, "push": MARKETING}


DEFAULTS = "defaults"  # FUNDFLOW_RULES_FILE=defaults: the built-in rules, asked for by name


def built_in(settings: Settings) -> bool:
    """Whether the settings ask for the built-in rules instead of a file."""
    return str(settings.rules_file) == DEFAULTS


class RulesProvider:
    """The rules timeline the step runs under (``Timeline``), and the rules file beside it.

    At start the file (``FUNDFLOW_RULES_FILE``) gives the rules of a one-entry timeline: what
    tools without Redis versions run on, and what a worker bootstraps version 1 from when
    Redis holds no versions. A worker then follows the version timeline in Redis
    (``follow``, from ``follow_versions``); the file never changes the rules in force again:
    a file that differs from the version in force now is not applied, said once in the log
    and by ``fundflow_rules_file_ignored`` (docs/metrics.md).

    ``fallback``: rules to run on when the file cannot be used at start-up (the last good
    ones kept in Redis, ``FUNDFLOW_RULES_FALLBACK=last-good``); without it such a file is an
    error. ``shadow``: a fixed shadow judged from the beginning of time (the history shadow of
    ``fundflow shadow EVENTS``; a running system shadows through versions)."""

    def __init__(
        self,
        path: Path | None,
        check_every_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        fallback: RulesConfig | None = None,
        shadow: RulesConfig | None = None,
        wall_clock_us: Callable[[], int] = lambda: time.time_ns() // 1000,
    ) -> None:
        self.path = path
        self.check_every = check_every_seconds
        self.clock = clock
        self.wall_clock_us = wall_clock_us
        self.config = RulesConfig()
        self._mtime: float | None = None
        self._next_check = 0.0
        self._said: str | None = None  # what was last said about the file (said once, not at every check)
        self.on_fallback = False  # started on ``fallback``: the file could not be used
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
                self.on_fallback = True
                telemetry.RULES_RELOADS.labels("rejected").inc()
                telemetry.RULES_RELOAD_REJECTED.set(1)
            else:
                telemetry.RULES_RELOADS.labels("loaded").inc()
                telemetry.RULES_RELOAD_REJECTED.set(0)
        telemetry.RULES_FILE_IGNORED.set(0)
        self.fixed_shadow = None if shadow is None else ShadowRules(0, shadow, BEGINNING)
        self.timeline = Timeline((InForce(BEGINNING, 0, self.config),), self.fixed_shadow)

    @classmethod
    def fixed(cls, rules: RulesConfig) -> RulesProvider:
        """Rules given as they are, for tools that try several (``fundflow tune``): a one-entry
        timeline, no file, no Redis."""
        provider = cls(None)
        provider.config = rules
        provider.timeline = Timeline((InForce(BEGINNING, 0, rules),), None)
        return provider

    def follow(self, timeline: Timeline) -> None:
        """Run under ``timeline`` from the step's next ``refresh`` (the versions in Redis)."""
        if timeline.fingerprint != self.timeline.fingerprint:
            self.timeline = timeline
            self._said = None  # (the file is compared with the new version in force)
            self._next_check = 0.0

    def current(self) -> RulesConfig:
        """The rules in force now (wall clock); the file is looked at every few seconds, and a
        file that differs from them is said once, never applied."""
        in_force = self.timeline.at(self.wall_clock_us())
        now = self.clock()
        if self.path is None or now < self._next_check:
            return in_force
        self._next_check = now + self.check_every
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            self._say("unreadable", "rules file %s unreadable (%s); the rules in force stay", self.path, exc)
            return in_force
        if mtime == self._mtime and self._said is not None:
            return in_force
        self._mtime = mtime
        try:
            in_file = load_rules(self.path)
        except RulesConfigError as exc:
            self._say("refused", "rules file refused, not applied (the rules in force stay): %s", exc)
            return in_force
        if fingerprint(in_file)[0] == fingerprint(in_force)[0]:
            self._said = "same"
            telemetry.RULES_FILE_IGNORED.set(0)
        else:
            self._say(
                "differs",
                "rules file %s differs from the version in force and is not applied: a running system "
                "changes rules only through versions (docs/rules-lifecycle.md)",
                self.path,
            )
        return in_force

    def _say(self, what: str, message: str, *args: object) -> None:
        telemetry.RULES_FILE_IGNORED.set(1)
        if self._said != what:
            log.warning(message, *args)
            self._said = what


BEGINNING: Final = -(1 << 62)  # (µs) the beginning of time: version 1's effective instant
SHADOW_MEMORY: Final = "~shadow"  # the shadow's rule memory, in the live memory under a key no rule reads


@dataclass(frozen=True, slots=True)
class InForce:
    """One entry of the version timeline: ``rules`` judge the events from ``effective_us`` on."""

    effective_us: int
    version: int
    rules: RulesConfig


@dataclass(frozen=True, slots=True)
class ShadowRules:
    """A shadow run: ``rules`` (version ``version``) judge every applied event of event time
    ``from_us`` or later beside the live rules, with a rule memory of their own."""

    version: int
    rules: RulesConfig
    from_us: int

    @property
    def run(self) -> str:
        """What tells this run's memory from an earlier run's (which is dropped, not read)."""
        return f"{self.version}@{self.from_us}"


class Timeline:
    """The rules by event time: each event is judged under the entry in force at its event
    time (the last whose ``effective_us`` is not after it; the first entry also judges what
    came before it), and under the shadow's rules too while there is one.

    What a changelog entry names is the timeline's fingerprint, and what ``{p}:rules:{F}``
    stores its JSON, so a replay judges each event as it was judged even across a promotion.
    A timeline of one entry and no shadow is written as that entry's rules alone (the
    fingerprint and JSON of ``fingerprint``): a fixed rules file names its rules as it always
    did, and an entry made before versions replays as a one-entry timeline."""

    __slots__ = ("_single", "_starts", "entries", "fingerprint", "json", "shadow")

    def __init__(self, entries: Sequence[InForce], shadow: ShadowRules | None = None) -> None:
        if not entries:
            raise ValueError("a timeline has at least one entry")
        kept: list[InForce] = []
        for entry in sorted(entries, key=lambda e: e.effective_us):  # (stable: of two at one instant the later wins)
            if kept and kept[-1].effective_us == entry.effective_us:
                kept[-1] = entry
            else:
                kept.append(entry)
        self.entries = tuple(kept)
        self.shadow = shadow
        self._starts = [entry.effective_us for entry in kept]
        self._single = kept[0].rules if len(kept) == 1 else None
        if self._single is not None and shadow is None:
            self.fingerprint, self.json = fingerprint(self._single)
        else:
            beside = None
            if shadow is not None:
                beside = {"version": shadow.version, "from_us": shadow.from_us, "rules": _canonical_rules(shadow.rules)}
            timeline = [
                {"effective_us": e.effective_us, "version": e.version, "rules": _canonical_rules(e.rules)} for e in kept
            ]
            self.json = orjson.dumps({"timeline": timeline, "shadow": beside}, option=orjson.OPT_SORT_KEYS)
            self.fingerprint = hashlib.sha256(self.json).hexdigest()[:16]

    @classmethod
    def fixed(cls, rules: RulesConfig, shadow: RulesConfig | None = None) -> Timeline:
        """One set of rules for all time (a tool's rules file), and a shadow from the beginning."""
        return cls((InForce(BEGINNING, 0, rules),), None if shadow is None else ShadowRules(0, shadow, BEGINNING))

    @classmethod
    def from_json(cls, text: bytes) -> Timeline:
        """A timeline as ``json`` wrote it, or the JSON of plain rules (one entry). ``ValueError``."""
        data = orjson.loads(text)
        if isinstance(data, dict) and "timeline" in data:
            entries = [
                InForce(int(e["effective_us"]), int(e["version"]), RulesConfig.model_validate(e["rules"]))
                for e in data["timeline"]
            ]
            raw = data.get("shadow")
            shadow = (
                None
                if raw is None
                else ShadowRules(int(raw["version"]), RulesConfig.model_validate(raw["rules"]), int(raw["from_us"]))
            )
            return cls(entries, shadow)
        return cls.fixed(RulesConfig.model_validate(data))

    def at(self, ts_us: int) -> RulesConfig:
        """The rules in force at event time ``ts_us``."""
        if self._single is not None:
            return self._single
        return self.entries[max(bisect.bisect_right(self._starts, ts_us) - 1, 0)].rules

    def version_at(self, ts_us: int) -> int:
        return self.entries[max(bisect.bisect_right(self._starts, ts_us) - 1, 0)].version


def _canonical_rules(rules: RulesConfig) -> Any:
    """The rules as their fingerprint is taken (``rules.versions.fingerprint``), to nest in a timeline's JSON."""
    return orjson.loads(fingerprint(rules)[1])


def _published(finding: Finding, config: StateConfig, live_from_us: int | None) -> tuple[str, dict[str, Any]]:
    """The topic and JSON object ``finding`` is published as."""
    data = finding.as_dict(config.zone)
    topic = TOPIC_OF_KIND[finding.kind]
    when = finding.retracted_us if finding.retracted_us is not None else finding.ts_us
    if live_from_us is not None and when < live_from_us:
        data["history"] = True
        topic = HISTORY
    return topic, data


def finding_entry(finding: Finding, config: StateConfig, live_from_us: int | None = None) -> bytes:
    """The outbox entry of ``finding``: its topic and JSON; a finding whose event time is
    before the go-live (``FUNDFLOW_LIVE_FROM``) is history, marked so and kept apart from
    every topic anyone delivers from (docs/events.md, "History"), and so is the retraction of
    such a finding, which nobody was shown."""
    topic, data = _published(finding, config, live_from_us)
    return outbox_entry(topic, finding.customer_id, orjson.dumps(data))


def rules_step(config: StateConfig, provider: RulesProvider) -> Step:
    """The step: a finding depends on the customer's events and the rules only
    (docs/findings.md), never on the live tier, which a wall-clock timer refreshes."""

    def step(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        return _judged(state, event, config, provider.timeline, quiet=False)

    return step


def _judged(
    state: CustomerState,
    event: Event,
    config: StateConfig,
    timeline: Timeline,
    *,
    quiet: bool,
    live_from_us: int | None = None,
) -> tuple[Outcome, list[bytes]]:
    balance_before = state.balance
    outcome = apply_event(state, event, config)
    if outcome is not Outcome.APPLIED:
        return outcome, []
    ts_us = event_time(event, config.zone)[0]  # (computed by the step: free)
    judgement = judge(state, event, balance_before, timeline.at(ts_us), config)
    shadow = timeline.shadow
    beside = None
    if shadow is not None and ts_us >= shadow.from_us:
        beside = _shadow_judged(state, event, balance_before, shadow, config)
    elif SHADOW_MEMORY in state.rule_state and (shadow is None or state.rule_state[SHADOW_MEMORY][0] != shadow.run):
        del state.rule_state[SHADOW_MEMORY]  # a shadow run stopped or replaced: its memory goes with it
    if quiet:  # a replay: these findings were counted (and committed) when first made
        return outcome, []
    for rule, why in judgement.suppressed:
        telemetry.SUPPRESSED.labels(rule, why).inc()
    entries = []
    for finding in judgement.findings:
        telemetry.FINDINGS_BY_RULE.labels(finding.rule, finding.severity).inc()
        entries.append(finding_entry(finding, config, live_from_us))
    if beside is not None and shadow is not None:
        entries += shadow_records(event, ts_us, judgement, beside, shadow, config, live_from_us)
    return outcome, entries


def _shadow_judged(
    state: CustomerState, event: Event, balance_before: Decimal, shadow: ShadowRules, config: StateConfig
) -> Judgement:
    """``event`` (applied) judged under the shadow's rules with the shadow's own memory: kept
    in the live memory under ``SHADOW_MEMORY`` as ``[run, memory]``, which the live rules never
    read; a memory of another run is dropped, so a new shadow starts fresh."""
    live_memory = state.rule_state
    held = live_memory.get(SHADOW_MEMORY)
    if held is None or held[0] != shadow.run:
        held = live_memory[SHADOW_MEMORY] = [shadow.run, {}]
    state.rule_state = held[1]
    try:
        return judge(state, event, balance_before, shadow.rules, config)
    finally:
        state.rule_state = live_memory


def _record_id(shadow: ShadowRules, *parts: str) -> str:
    text = "|".join(("shadow", shadow.run, *parts))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def shadow_records(
    event: Event,
    ts_us: int,
    live: Judgement,
    beside: Judgement,
    shadow: ShadowRules,
    config: StateConfig,
    live_from_us: int | None = None,
) -> list[bytes]:
    """The outbox entries of one event's shadow judgement (docs/events.md, "Shadow runs"):
    every shadow finding, every difference from the live findings of the event (by finding
    id: only the live's = removed, only the shadow's = added, the same id with other content
    = changed), and every push the shadow's caps, quiet hours or veto held back."""
    cid = event.customer_id
    when = dt.datetime.fromtimestamp(ts_us / 1_000_000, dt.UTC).astimezone(config.zone).isoformat()
    head = {"shadow_version": shadow.version, "run": shadow.run, "customer_id": cid, "ts": when}
    records: list[dict[str, Any]] = []
    live_by_id = {f.id: f for f in live.findings}
    shadow_by_id = {f.id: f for f in beside.findings}
    for finding in beside.findings:
        _, data = _published(finding, config, live_from_us)
        records.append({"type": "finding", "id": _record_id(shadow, "finding", finding.id), "finding": data})
    for fid, finding in shadow_by_id.items():
        other = live_by_id.get(fid)
        if other is None:
            records.append(_diff(shadow, finding.rule, "added", None, fid))
        elif other.as_dict(config.zone) != finding.as_dict(config.zone):
            records.append(_diff(shadow, finding.rule, "changed", fid, fid))
    for fid, finding in live_by_id.items():
        if fid not in shadow_by_id:
            records.append(_diff(shadow, finding.rule, "removed", fid, None))
    trigger = event.txn_id if isinstance(event, TransactionEvent) else f"loan:{event.loan_id}@{ts_us}"
    seen: dict[tuple[str, str], int] = {}
    for rule, why in beside.suppressed:
        if rule.startswith("push_"):
            n = seen[rule, why] = seen.get((rule, why), -1) + 1
            rid = _record_id(shadow, "suppressed", cid, trigger, rule, why, str(n))
            records.append({"type": "suppressed", "id": rid, "rule": rule, "why": why})
    return [outbox_entry(SHADOW, cid, orjson.dumps({**record, **head})) for record in records]


def shadow_by_version(messages: Iterable[tuple[str, bytes | None, bytes]]) -> dict[int, dict[bytes, bytes]]:
    """The shadow records among ``messages`` (topic, key, value), by shadow version and record id."""
    found: dict[int, dict[bytes, bytes]] = {}
    for topic, _, value in messages:
        if topic != SHADOW:
            continue
        record = orjson.loads(value)
        found.setdefault(int(record["shadow_version"]), {})[record["id"].encode()] = value
    return found


def _diff(shadow: ShadowRules, rule: str, change: str, live_id: str | None, shadow_id: str | None) -> dict[str, Any]:
    rid = _record_id(shadow, "diff", change, live_id or "", shadow_id or "")
    return {"type": "diff", "id": rid, "rule": rule, "change": change, "live_id": live_id, "shadow_id": shadow_id}


class RulesStep:
    """The worker's step (``rules_step``) as a changelog's ``Rulebook`` (``streams.storage.changelog``):
    the timeline changes only at ``refresh`` (the processor calls it between customers, so all
    of one customer's records in a batch run under one timeline, which its log entry names;
    each record is judged under the version in force at its own event time), and every
    timeline this process has run under can replay the entries made under it."""

    def __init__(self, config: StateConfig, provider: RulesProvider, live_from_us: int | None = None) -> None:
        self.config = config
        self.provider = provider
        self.live_from_us = live_from_us
        self._known: dict[str, tuple[bytes, Step]] = {}
        self._timeline = provider.timeline
        self._fingerprint = self._know(self._timeline)

    @property
    def timeline(self) -> Timeline:
        return self._timeline

    def __call__(self, state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
        return _judged(state, event, self.config, self._timeline, quiet=False, live_from_us=self.live_from_us)

    def _know(self, timeline: Timeline) -> str:
        fp = timeline.fingerprint
        if fp not in self._known:
            config = self.config

            def replay(state: CustomerState, event: Event) -> tuple[Outcome, list[bytes]]:
                return _judged(state, event, config, timeline, quiet=True)

            self._known[fp] = (timeline.json, replay)
        return fp

    def refresh(self) -> str:
        """The fingerprint of the timeline the step runs under from now (the provider's)."""
        self.provider.current()  # (looks at the file now and then: a changed one is said, not applied)
        timeline = self.provider.timeline
        if timeline is not self._timeline:
            self._timeline = timeline
            self._fingerprint = self._know(timeline)
        return self._fingerprint

    def rules_json(self, fp: str) -> bytes | None:
        known = self._known.get(fp)
        return known[0] if known is not None else None

    def replay_step(self, fp: str) -> Step | None:
        known = self._known.get(fp)
        return known[1] if known is not None else None

    def learn(self, text: bytes) -> str:
        """A timeline (or rules) another process ran under (their JSON, as stored by fingerprint)."""
        try:
            timeline = Timeline.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"stored rules cannot be read: {exc}") from None
        return self._know(timeline)


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
    fingerprint (of a timeline: its latest entry's); None when there are none."""
    fp = await store.current_rules()
    if fp is None:
        return None
    text = (await store.rules_of([fp])).get(fp)
    if text is None:
        return None
    try:
        rules = Timeline.from_json(text).entries[-1].rules
    except (ValueError, KeyError, TypeError):
        return None
    return fingerprint(rules)[0], rules


class VersionUnreadable(Exception):
    """A version in the timeline that this worker cannot load (written by a newer FundFlow, or damaged)."""


class VersionFollower:
    """The worker's side of the rule versions (``streams.storage.rulebook``): the timeline and
    the shadow run in Redis, read every few seconds, become the ``Timeline`` the step runs
    under (``RulesProvider.follow``). A deployment's first worker makes version 1 from its
    rules file (``bootstrap``); a running system changes rules only through versions.

    A shadow run judges from its ``from_us`` of event time (its start plus the grace, fixed
    when it started: ``rules.versions.ShadowRun``), as a promotion takes effect after the
    grace: every worker has read it by then, so which events it judges is a function of the
    history and the timeline, not of when a worker looked.
    A version this worker cannot load keeps the timeline it last could
    (``fundflow_rules_reload_rejected`` is 1 meanwhile, and the log says which)."""

    def __init__(self, book: Rulebook, provider: RulesProvider) -> None:
        self.book = book
        self.provider = provider
        self._rules: dict[tuple[int, str], RulesConfig] = {}  # (version, fingerprint): versions never change
        self._read: tuple[Any, ...] | None = None  # what the last timeline was made of
        self._unreadable: str | None = None

    async def bootstrap(self, now_us: int) -> bool:
        """Version 1 from the rules this worker started with, if Redis holds no versions."""
        fp, text = fingerprint(self.provider.config)
        return await self.book.bootstrap(text, fp, now_us)

    async def read(self) -> Timeline | None:
        """The timeline as Redis holds it now (None: no versions yet). ``VersionUnreadable``."""
        entries = await self.book.timeline()
        if not entries:
            return None
        run = await self.book.shadow()
        made_of = (tuple(entries), run)
        if made_of == self._read:
            return self.provider.timeline
        in_force = [InForce(e.effective_us, e.version, await self._version(e.version, e.fingerprint)) for e in entries]
        shadow = self.provider.fixed_shadow
        if shadow is None and run is not None:
            rules = await self._version(run.version, run.fingerprint)
            shadow = ShadowRules(run.version, rules, run.from_us)  # (fixed when the run started)
        timeline = Timeline(in_force, shadow)
        self._read = made_of
        return timeline

    async def _version(self, number: int, fp: str) -> RulesConfig:
        known = self._rules.get((number, fp))
        if known is not None:
            return known
        text = await self.book.rules_json(number)
        if text is None:
            raise VersionUnreadable(f"version {number} is in the timeline but not stored")
        try:
            rules = RulesConfig.model_validate_json(text)
        except ValueError as exc:
            raise VersionUnreadable(f"version {number} cannot be loaded: {str(exc).splitlines()[0]}") from None
        self._rules[number, fp] = rules
        return rules

    async def poll(self, now_us: int, *, strict: bool = False) -> None:
        """Follow the timeline in Redis (bootstrapping version 1 when there is none); a Redis
        failure is raised (the caller tries again at its next tick). ``strict`` (at start-up):
        a version this worker cannot load is raised, not kept in the log."""
        try:
            timeline = await self.read()
            if timeline is None:
                await self.bootstrap(now_us)
                timeline = await self.read()
        except VersionUnreadable as exc:
            if strict:
                raise
            telemetry.RULES_RELOAD_REJECTED.set(1)
            if self._unreadable != str(exc):
                log.error("%s; the worker keeps the timeline it last loaded", exc)
                self._unreadable = str(exc)
            return
        if timeline is None:  # (no versions even after the bootstrap: nothing to follow yet)
            return
        if self._unreadable is not None or self.provider.on_fallback:
            telemetry.RULES_RELOAD_REJECTED.set(0)
            self._unreadable = None
            self.provider.on_fallback = False
        if timeline.fingerprint != self.provider.timeline.fingerprint:
            log.info("rules timeline %s: version %d in force now", timeline.fingerprint, timeline.version_at(now_us))
        self.provider.follow(timeline)


def build_step(settings: Settings, fallback: RulesConfig | None = None, timeline: Timeline | None = None) -> RulesStep:
    """The per-event step the worker runs: state plus the business rules (``rules_at_start``;
    ``fallback``: the rules to run on instead when the file cannot be used; ``timeline``: the
    versions as read from Redis at start, followed from then on by ``VersionFollower``)."""
    shadow = None
    if settings.shadow_rules_file is not None:
        try:
            shadow = load_rules(settings.shadow_rules_file)
        except (OSError, RulesConfigError) as exc:
            raise ConfigError(f"shadow rules {settings.shadow_rules_file}: {exc}") from None
    if built_in(settings):
        log.info("built-in default rules (FUNDFLOW_RULES_FILE=%s)", DEFAULTS)
        provider = RulesProvider(None, shadow=shadow)
    else:
        if fallback is None:
            rules_at_start(settings)  # (missing or bad: one line)
        try:
            provider = RulesProvider(settings.rules_file, fallback=fallback, shadow=shadow)
        except RulesConfigError as exc:
            raise ConfigError(str(exc)) from None
    if timeline is not None:
        provider.follow(timeline)
    live_from_us = to_us(settings.live_from) if settings.live_from is not None else None
    return RulesStep(state_config(settings), provider, live_from_us)

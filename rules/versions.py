"""Rule versions a bank can govern: the model, the allowed transitions, and the diff.

Every rule set the workers run is a *version* (``streams.storage.rulebook`` keeps them in
Redis, never deleting one). A version is proposed by an analyst or a supervisor, approved
or rejected by a supervisor who is not its author (four eyes), and promoted by a
supervisor: promotion appends an entry to the *timeline*, which says from which event-time
instant each version is in force (the version in force at ``t`` is the last entry whose
``effective_us`` is at most ``t``; entries are appended only, their instants never
decrease). Rolling back is promoting an earlier version again. One proposed or approved
version that is not in force may run in *shadow* beside the live one.

This module is pure: each transition is a function of the records it reads and the actor,
which returns the new record or raises ``RuleRefusal`` with a reason code (only the HTTP
layer maps codes to statuses). The store applies what these functions return atomically;
``Book`` applies it in memory (the model the store's tests compare with).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

import orjson

from rules.config import RulesConfig, RulesConfigError, parse_rules

Role = Literal["viewer", "analyst", "supervisor"]
RANK: dict[str, int] = {"viewer": 0, "analyst": 1, "supervisor": 2}
Status = Literal["proposed", "approved", "rejected"]
STATUSES: tuple[Status, ...] = ("proposed", "approved", "rejected")

BEGINNING_US = 0  # the bootstrap version's instant: before every event FundFlow accepts (settings.event_time_earliest)
DEPLOYMENT = "deployment"  # the author (and approver) of the version a deployment started with
DEPLOYMENT_ROLE = "system"
MAX_YAML_BYTES = 64 * 1024  # a rules file is a few kB; a larger proposal is a mistake, not rules
MAX_REASON_CHARS = 2000


class Code(StrEnum):
    """Why a transition is refused, in a word (``streams.api.rules`` maps each to a status)."""

    NOT_FOUND = "not_found"  # no such version
    FORBIDDEN = "forbidden"  # the actor's role, or four eyes, does not allow it
    CONFLICT = "conflict"  # not in a state that allows it (already decided, in force, a shadow running...)
    INVALID = "invalid"  # the rules, a reason or an instant the rules of versions refuse
    BUSY = "busy"  # the book kept changing under the request: retry


class RuleRefusal(Exception):
    """A transition refused: ``code`` says why in a word, ``message`` to a person."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    fingerprint: str
    rules: bytes  # canonical JSON (``fingerprint``)
    yaml: str  # the text as proposed ('' for the deployment's version, which came as JSON)
    author: str
    author_role: str
    reason: str
    proposed_us: int
    status: Status = "proposed"
    approver: str | None = None
    approver_role: str | None = None
    approved_us: int | None = None
    rejecter: str | None = None
    rejected_us: int | None = None
    rejected_reason: str | None = None
    base: int | None = None  # the version in force (last promoted) when this one was proposed
    diff: tuple[str, ...] = ()  # from ``base`` (``diff_lines``)

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__slots__}
        out["rules"] = orjson.loads(self.rules)
        out["diff"] = list(self.diff)
        return out


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    effective_us: int
    version: int
    fingerprint: str
    by: str
    at_us: int

    def as_dict(self) -> dict[str, Any]:
        return {"effective_us": self.effective_us, "version": self.version, "fingerprint": self.fingerprint,
                "by": self.by, "at_us": self.at_us}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """A shadow run, started at ``started_us`` (wall clock); it judges events from event time ``from_us``
    (the start plus the promotion grace, fixed when it starts: every worker judges from the same instant)."""

    version: int
    fingerprint: str
    started_us: int
    by: str
    from_us: int

    @property
    def run(self) -> str:
        """The run's name in its records (``version@from_us``): two runs of one version stay apart."""
        return f"{self.version}@{self.from_us}"

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "fingerprint": self.fingerprint, "started_us": self.started_us, "by": self.by,
                "from_us": self.from_us}  # fmt: skip


def entry_of(data: dict[str, Any]) -> TimelineEntry:
    return TimelineEntry(int(data["effective_us"]), int(data["version"]), str(data["fingerprint"]),
                         str(data["by"]), int(data["at_us"]))  # fmt: skip


def shadow_of(data: dict[str, Any]) -> ShadowRun:
    started = int(data["started_us"])
    return ShadowRun(int(data["version"]), str(data["fingerprint"]), started, str(data["by"]),
                     int(data.get("from_us", started)))  # fmt: skip


# ---- the rules' fingerprint: what a changelog entry and a version name rules by


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


# ---- the timeline


def version_at(timeline: Sequence[TimelineEntry], t_us: int) -> TimelineEntry | None:
    """The entry in force at event time ``t_us``: the last whose instant is at most ``t_us``
    (of two at one instant, the later promotion)."""
    found = None
    for entry in timeline:
        if entry.effective_us <= t_us:
            found = entry
    return found


def latest(timeline: Sequence[TimelineEntry]) -> TimelineEntry | None:
    """The last promotion (in force now, or from its instant on)."""
    return timeline[-1] if timeline else None


def rollback_target(timeline: Sequence[TimelineEntry]) -> int:
    """The version a rollback promotes: the one in force before the last promoted one."""
    last = latest(timeline)
    if last is not None:
        for entry in reversed(timeline):
            if entry.version != last.version:
                return entry.version
    raise RuleRefusal(Code.CONFLICT, "no earlier version was in force: nothing to roll back to")


# ---- the diff


@dataclass(frozen=True, slots=True)
class Row:
    """One setting of two rule sets side by side (``None``: the set does not have it)."""

    path: str
    a: Any
    b: Any

    @property
    def changed(self) -> bool:
        return bool(self.a != self.b)

    def line(self) -> str:
        if isinstance(self.a, list) and isinstance(self.b, list):
            added = [item for item in self.b if item not in self.a]
            removed = [item for item in self.a if item not in self.b]
            parts = [f"+{_show(item)}" for item in added] + [f"-{_show(item)}" for item in removed]
            return f"{self.path}: {' '.join(parts)}"
        return f"{self.path}: {_show(self.a)} -> {_show(self.b)}"


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key in value:
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
    else:
        out[path] = value


def side_by_side(a: bytes, b: bytes) -> list[Row]:
    """Every setting of rule sets ``a`` and ``b`` (their JSON), by dotted path, sorted."""
    flat_a: dict[str, Any] = {}
    flat_b: dict[str, Any] = {}
    _flatten(orjson.loads(a), "", flat_a)
    _flatten(orjson.loads(b), "", flat_b)
    return [Row(path, flat_a.get(path), flat_b.get(path)) for path in sorted(flat_a.keys() | flat_b.keys())]


def diff_lines(a: bytes, b: bytes) -> list[str]:
    """What changes from rule set ``a`` to ``b``, one readable line per setting:
    ``outflow.large_external_amount: 100000 -> 80000``, ``disabled: +ledger_drift -churn_drift``."""
    return [row.line() for row in side_by_side(a, b) if row.changed]


# ---- the transitions


def _require(role: str, needed: str, what: str) -> None:
    if RANK.get(role, -1) < RANK[needed]:
        article = "an" if needed[0] in "aeiou" else "a"
        raise RuleRefusal(Code.FORBIDDEN, f"{what} needs {article} {needed} (you act as {role})")


def _reason(reason: str, what: str) -> str:
    text = reason.strip()
    if not text:
        raise RuleRefusal(Code.INVALID, f"{what} needs a reason")
    if len(text) > MAX_REASON_CHARS:
        raise RuleRefusal(Code.INVALID, f"a reason is at most {MAX_REASON_CHARS} characters")
    return text


def parse_proposal(yaml_text: str) -> RulesConfig:
    """The rules of a proposal, checked exactly as a rules file is (``rules.config``)."""
    if len(yaml_text.encode("utf-8")) > MAX_YAML_BYTES:
        raise RuleRefusal(Code.INVALID, f"a proposal's rules are at most {MAX_YAML_BYTES} bytes")
    try:
        return parse_rules(yaml_text, "proposal")
    except RulesConfigError as exc:
        raise RuleRefusal(Code.INVALID, str(exc)) from None


def proposal(
    number: int,
    yaml_text: str,
    author: str,
    role: str,
    reason: str,
    now_us: int,
    base: Version | None,
) -> Version:
    """Version ``number``, proposed by ``author`` from ``yaml_text``; ``base`` is the version in force."""
    _require(role, "analyst", "proposing rules")
    why = _reason(reason, "a proposal")
    fp, text = fingerprint(parse_proposal(yaml_text))
    if base is not None and base.fingerprint == fp:
        raise RuleRefusal(Code.INVALID, f"these are the rules of version {base.number}, in force: nothing to propose")
    changes = tuple(diff_lines(base.rules, text)) if base is not None else ()
    return Version(number, fp, text, yaml_text, author, role, why, now_us, "proposed",
                   base=base.number if base is not None else None, diff=changes)  # fmt: skip


def deployment_version(rules_json: bytes, fp: str, now_us: int) -> Version:
    """Version 1 of a deployment: the rules it started with, approved by nobody but the deployment."""
    why = "the rules the deployment started with"
    return Version(1, fp, rules_json, "", DEPLOYMENT, DEPLOYMENT_ROLE, why, now_us, "approved",
                   approver=DEPLOYMENT, approver_role=DEPLOYMENT_ROLE, approved_us=now_us)  # fmt: skip


def approval(version: Version, actor: str, role: str, now_us: int) -> Version:
    _require(role, "supervisor", "approving a version")
    if actor == version.author:
        raise RuleRefusal(Code.FORBIDDEN, f"{actor} proposed version {version.number}: another supervisor approves it "
                                          "(four eyes)")  # fmt: skip
    if version.status != "proposed":
        raise RuleRefusal(Code.CONFLICT, f"version {version.number} is {version.status}, not proposed")
    return replace(version, status="approved", approver=actor, approver_role=role, approved_us=now_us)


def rejection(version: Version, actor: str, role: str, reason: str, now_us: int) -> Version:
    _require(role, "supervisor", "rejecting a version")
    if actor == version.author:
        raise RuleRefusal(Code.FORBIDDEN, f"{actor} proposed version {version.number}: another supervisor decides "
                                          "on it (four eyes)")  # fmt: skip
    why = _reason(reason, "a rejection")
    if version.status != "proposed":
        raise RuleRefusal(Code.CONFLICT, f"version {version.number} is {version.status}, not proposed")
    return replace(version, status="rejected", rejecter=actor, rejected_us=now_us, rejected_reason=why)


def promotion(
    version: Version,
    timeline: Sequence[TimelineEntry],
    actor: str,
    role: str,
    now_us: int,
    effective_us: int,
    judged_until: int | None = None,
) -> TimelineEntry:
    """The timeline entry that puts ``version`` in force from ``effective_us`` (event time).
    ``judged_until``: the latest event time the workers have committed; events up to it may
    have been judged under the version in force, so a promotion takes effect after it (or a
    replay would judge them otherwise than the live run did)."""
    _require(role, "supervisor", "promoting a version")
    if version.status != "approved":
        raise RuleRefusal(Code.CONFLICT, f"version {version.number} is {version.status}: only an approved version "
                                         "is promoted")  # fmt: skip
    last = latest(timeline)
    if last is not None and last.version == version.number:
        raise RuleRefusal(Code.CONFLICT, f"version {version.number} is the last promoted already")
    if effective_us < BEGINNING_US:
        raise RuleRefusal(Code.INVALID, "an effective instant is after 1970-01-01")
    if last is not None and effective_us < last.effective_us:
        raise RuleRefusal(Code.INVALID, f"version {last.version} is in force from {last.effective_us} µs: a promotion "
                                        "takes effect at that instant or later")  # fmt: skip
    if judged_until is not None and effective_us <= judged_until:
        raise RuleRefusal(Code.INVALID, f"events up to {judged_until} µs have been judged already: a promotion "
                                        "takes effect after them")  # fmt: skip
    return TimelineEntry(effective_us, version.number, version.fingerprint, actor, now_us)


def shadowing(
    version: Version,
    timeline: Sequence[TimelineEntry],
    shadow: ShadowRun | None,
    actor: str,
    role: str,
    now_us: int,
    grace_us: int = 0,
    judged_until: int | None = None,
) -> ShadowRun:
    """A shadow run of ``version`` from ``now_us`` + ``grace_us`` of event time, or from the
    grace after ``judged_until`` (the latest event time the workers have committed) when the
    stream is ahead of the clock: a run never starts among events already judged."""
    _require(role, "analyst", "starting a shadow run")
    if version.status == "rejected":
        raise RuleRefusal(Code.CONFLICT, f"version {version.number} is rejected")
    last = latest(timeline)
    if last is not None and last.version == version.number:
        raise RuleRefusal(Code.CONFLICT, f"version {version.number} is in force: nothing to shadow")
    if shadow is not None:
        raise RuleRefusal(Code.CONFLICT, f"version {shadow.version} runs in shadow (since {shadow.started_us} µs, "
                                         f"started by {shadow.by}): stop it first")  # fmt: skip
    return ShadowRun(version.number, version.fingerprint, now_us, actor, max(now_us, judged_until or 0) + grace_us)


def shadow_stop(shadow: ShadowRun | None, role: str) -> ShadowRun:
    _require(role, "analyst", "stopping a shadow run")
    if shadow is None:
        raise RuleRefusal(Code.CONFLICT, "no shadow run")
    return shadow


def audit_entry(action: str, actor: str, role: str, now_us: int, version: int | None, **more: Any) -> dict[str, Any]:
    """One entry of the book's audit: who did what, when, to which version, and why."""
    entry: dict[str, Any] = {"at_us": now_us, "actor": actor, "role": role, "action": action, "version": version}
    entry.update({key: value for key, value in more.items() if value is not None})
    return entry


# ---- the book in memory


@dataclass
class Book:
    """The versions, timeline, shadow run and audit in memory, moved by the transitions above:
    what ``streams.storage.rulebook.Rulebook`` keeps in Redis, and the model its tests compare with."""

    versions: dict[int, Version] = field(default_factory=dict)
    timeline: list[TimelineEntry] = field(default_factory=list)
    shadow: ShadowRun | None = None
    audit: list[dict[str, Any]] = field(default_factory=list)
    grace_us: int = 0  # a shadow run judges from its start plus this (the store's grace)

    def get(self, number: int) -> Version:
        found = self.versions.get(number)
        if found is None:
            raise RuleRefusal(Code.NOT_FOUND, f"no version {number}")
        return found

    def base(self) -> Version | None:
        last = latest(self.timeline)
        return self.versions[last.version] if last is not None else None

    def bootstrap(self, rules_json: bytes, fp: str, now_us: int) -> bool:
        if self.versions:
            return False
        self.versions[1] = deployment_version(rules_json, fp, now_us)
        self.timeline.append(TimelineEntry(BEGINNING_US, 1, fp, DEPLOYMENT, now_us))
        self.audit.append(audit_entry("bootstrap", DEPLOYMENT, DEPLOYMENT_ROLE, now_us, 1, fingerprint=fp,
                                      effective_us=BEGINNING_US))  # fmt: skip
        return True

    def propose(self, yaml_text: str, author: str, role: str, reason: str, now_us: int) -> Version:
        version = proposal(len(self.versions) + 1, yaml_text, author, role, reason, now_us, self.base())
        self.versions[version.number] = version
        self.audit.append(audit_entry("propose", author, role, now_us, version.number, reason=version.reason,
                                      fingerprint=version.fingerprint))  # fmt: skip
        return version

    def approve(self, number: int, actor: str, role: str, now_us: int) -> Version:
        version = approval(self.get(number), actor, role, now_us)
        self.versions[number] = version
        self.audit.append(audit_entry("approve", actor, role, now_us, number))
        return version

    def reject(self, number: int, actor: str, role: str, reason: str, now_us: int) -> Version:
        version = rejection(self.get(number), actor, role, reason, now_us)
        self.versions[number] = version
        self.audit.append(audit_entry("reject", actor, role, now_us, number, reason=version.rejected_reason))
        self._end_shadow_of(number, actor, role, now_us, "rejected")
        return version

    def promote(self, number: int, actor: str, role: str, now_us: int, effective_us: int) -> TimelineEntry:
        return self._promote(number, "promote", actor, role, now_us, effective_us)

    def rollback(self, actor: str, role: str, now_us: int, effective_us: int) -> TimelineEntry:
        return self._promote(rollback_target(self.timeline), "rollback", actor, role, now_us, effective_us)

    def _promote(
        self, number: int, action: str, actor: str, role: str, now_us: int, effective_us: int
    ) -> TimelineEntry:
        entry = promotion(self.get(number), self.timeline, actor, role, now_us, effective_us)
        self.timeline.append(entry)
        self.audit.append(audit_entry(action, actor, role, now_us, number, effective_us=effective_us,
                                      fingerprint=entry.fingerprint))  # fmt: skip
        self._end_shadow_of(number, actor, role, now_us, "promoted")
        return entry

    def start_shadow(self, number: int, actor: str, role: str, now_us: int) -> ShadowRun:
        self.shadow = shadowing(self.get(number), self.timeline, self.shadow, actor, role, now_us, self.grace_us)
        self.audit.append(audit_entry("shadow_start", actor, role, now_us, number))
        return self.shadow

    def stop_shadow(self, actor: str, role: str, now_us: int) -> ShadowRun:
        stopped = shadow_stop(self.shadow, role)
        self.shadow = None
        self.audit.append(audit_entry("shadow_stop", actor, role, now_us, stopped.version))
        return stopped

    def _end_shadow_of(self, number: int, actor: str, role: str, now_us: int, why: str) -> None:
        if self.shadow is not None and self.shadow.version == number:
            self.shadow = None
            self.audit.append(audit_entry("shadow_stop", actor, role, now_us, number, reason=f"version {why}"))


def four_eyes_kept(versions: Iterable[Version]) -> bool:
    """No version approved by its author or by anyone but a supervisor (the deployment's own aside)."""
    return all(
        v.status != "approved"
        or v.author == DEPLOYMENT
        or (v.approver is not None and v.approver != v.author and v.approver_role == "supervisor")
        for v in versions
    )

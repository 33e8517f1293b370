"""Cases: every alert and recommendation opens or joins one; analysts work them.

One open case per customer, finding type (alert / recommendation) and rule
family (``category``): a second finding for the same three joins the case that
is open (its ``count`` grows) instead of opening another. A case moves
``open -> in_progress -> resolved | dismissed``; a supervisor may reopen a closed
one (with a reason). Resolving records an outcome from a fixed list per
category (``OUTCOMES``); what analysts conclude becomes each rule's precision
(``CaseStore.precision``, from tallies kept as cases close: ``TALLY_LUA``).

Two halves:

* the pure part (``decide``, ``priority``): who may do what
  to a case in which state, and what changes; no I/O, unit-tested;
* ``CaseStore``: the cases in Redis. Every write is one Lua script: the intake
  (``INTAKE_LUA``: opens/joins cases for a batch of findings and moves the
  feed cursor, skipping a finding it already took, so it is exactly-once per
  finding id) and the mutation (``APPLY_LUA``: compare-and-set on the case's
  version ``v``, the new fields, the audit entries, the index moves and the
  ``Idempotency-Key`` record, all or nothing).

Where cases come from: the API process reads the findings feed (``{p}:feed``,
written by the workers once a finding is published, see ``StateStore``) from a
cursor stored with the cases. Why not the workers' commit script: the cases of
all customers share indexes (one Redis Cluster slot, ``{cases}``) while a
worker's commit touches only its customers' slots, and the commit is the hot
path the bench measures. The feed may repeat an entry after a crash (the
intake skips finding ids it has taken) and is capped (``FEED_KEPT``): an intake
stopped for longer than the feed holds would miss findings; the gap is counted
in ``fundflow_case_intake_gaps_total`` and logged.

Nothing in a case is deleted: the audit trail and the findings lists only grow;
a reopened case keeps its history. Redis persistence (AOF in compose) and its
backups are the cases' backups.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from streams import telemetry
from streams.settings import NAME_PATTERN, Role
from streams.storage.keys import Keys

log = logging.getLogger(__name__)

STATUSES = ("open", "in_progress", "resolved", "dismissed")
OPEN_STATUSES = frozenset({"open", "in_progress"})
CASE_TYPES = ("alert", "recommendation")
CATEGORIES = ("collection", "repayment", "outflow_risk", "sweep", "ledger")
SEVERITIES = ("info", "low", "medium", "high")
TIERS = ("I", "II", "III", "IV")
OUTCOMES: dict[str, tuple[str, ...]] = {
    "outflow_risk": ("confirmed_outflow", "retained_after_contact", "false_positive", "not_actionable", "other"),
    "collection": ("funds_retained", "funds_left", "false_positive", "other"),
}
GENERIC_OUTCOMES = ("confirmed", "false_positive", "other")  # repayment, sweep, ledger
# The rule was right about the customer (whatever the analyst then achieved).
CONFIRMING = frozenset({"confirmed_outflow", "retained_after_contact", "funds_retained", "funds_left", "confirmed"})
MAX_TEXT = 4000
IDEMPOTENCY_SECONDS = 24 * 3600
RANK: dict[Role, int] = {"viewer": 0, "analyst": 1, "supervisor": 2}
HOUR_MS = 3_600_000
# The 看板's age buckets of open cases: (label, opened at least this long ago); the last one has no end.
AGE_BUCKETS = (("<1h", 0), ("1-4h", HOUR_MS), ("4-24h", 4 * HOUR_MS), ("1-3d", 24 * HOUR_MS),
               ("3-7d", 72 * HOUR_MS), (">7d", 168 * HOUR_MS))  # fmt: skip
_NAME = re.compile(NAME_PATTERN)


def outcomes_for(category: str) -> tuple[str, ...]:
    return OUTCOMES.get(category, GENERIC_OUTCOMES)


def priority(severity: str, tier: str | None) -> int:
    """1 (work first) .. 4: severity, raised one step for the top two contribution tiers."""
    score = SEVERITIES.index(severity) if severity in SEVERITIES else 0
    score += 1 if tier in ("I", "II") else 0
    return min(4, 5 - score)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on a case: the name the audit trail records and a role."""

    name: str
    role: Role

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


class Refused(Exception):
    """A request the case rules refuse: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Case:
    id: int
    type: str
    customer_id: str
    category: str
    rule: str  # the rule of the finding that opened it
    rules: tuple[str, ...]  # every rule with a finding in it
    severity: str  # the highest seen
    tier: str | None  # the latest finding's
    priority: int
    status: str
    assignee: str | None
    count: int  # findings in the case
    opened_at_ms: int
    updated_at_ms: int
    first_action_at_ms: int | None
    closed_at_ms: int | None
    outcome: str | None
    note: str | None
    first_finding_ts: str
    last_finding_ts: str
    version: int

    @property
    def slot(self) -> str:
        return open_slot(self.type, self.customer_id, self.category)

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes]) -> Case:
        text = {k.decode(): v.decode() for k, v in raw.items()}

        def optional_int(name: str) -> int | None:
            return int(text[name]) if text.get(name) else None

        return cls(
            id=int(text["id"]),
            type=text["type"],
            customer_id=text["customer_id"],
            category=text["category"],
            rule=text["rule"],
            rules=tuple(orjson.loads(text["rules"])),
            severity=text["severity"],
            tier=text.get("tier") or None,
            priority=int(text["priority"]),
            status=text["status"],
            assignee=text.get("assignee") or None,
            count=int(text["count"]),
            opened_at_ms=int(text["opened_at"]),
            updated_at_ms=int(text["updated_at"]),
            first_action_at_ms=optional_int("first_action_at"),
            closed_at_ms=optional_int("closed_at"),
            outcome=text.get("outcome") or None,
            note=text.get("note") or None,
            first_finding_ts=text.get("first_finding_ts", ""),
            last_finding_ts=text.get("last_finding_ts", ""),
            version=int(text["v"]),
        )


def open_slot(case_type: str, customer_id: str, category: str) -> str:
    return f"{case_type}|{customer_id}|{category}"


@dataclass(frozen=True, slots=True)
class Assign:
    assignee: str | None  # None: unassign


@dataclass(frozen=True, slots=True)
class Comment:
    text: str


@dataclass(frozen=True, slots=True)
class Transition:
    to: str
    outcome: str | None = None
    note: str | None = None
    reason: str | None = None  # required to reopen


Action = Assign | Comment | Transition


@dataclass(slots=True)
class Change:
    """What an action does to a case: new hash fields, audit entries, index moves."""

    case: Case  # the case after the change
    fields: dict[str, str] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)
    moves: list[tuple[str, str]] = field(default_factory=list)  # ("zadd" | "zrem", index name)
    slot: str = ""  # "claim": the case becomes the open one of its slot; "release": no longer


def _text(value: str | None, what: str, required: bool) -> str | None:
    if value is None or not value.strip():
        if required:
            raise Refused(422, f"{what} is required")
        return None
    if len(value) > MAX_TEXT:
        raise Refused(422, f"{what} is longer than {MAX_TEXT} characters")
    return value


def _may_work(case: Case, actor: Actor, doing: str) -> None:
    if not actor.at_least("analyst"):
        raise Refused(403, f"a {actor.role} cannot {doing}")
    if actor.role == "analyst" and case.assignee not in (None, actor.name):
        raise Refused(403, f"case {case.id} is assigned to {case.assignee}; only they or a supervisor can {doing}")


def decide(case: Case, actor: Actor, action: Action, now_ms: int, assignable: frozenset[str]) -> Change:
    """What ``actor`` doing ``action`` to ``case`` changes, or ``Refused`` (403/409/422)."""
    change = Change(case)
    updates: dict[str, Any] = {}

    def record(what: str, name: str, before: Any, after: Any, **extra: Any) -> None:
        entry = {"at": now_ms, "actor": actor.name, "role": actor.role, "action": what, "field": name}
        change.audit.append({**entry, "from": before, "to": after, **extra})

    def assign(to: str | None) -> None:
        record("assign", "assignee", case.assignee, to)
        updates["assignee"] = to
        change.moves += [("zrem", index("assignee", case.assignee)), ("zadd", index("assignee", to))]

    if isinstance(action, Comment):
        _may_work(case, actor, "comment on it")
        text = _text(action.text, "comment text", required=True)
        change.audit.append({"at": now_ms, "actor": actor.name, "role": actor.role, "action": "comment", "text": text})
    elif isinstance(action, Assign):
        to = action.assignee
        if to is not None and to not in assignable:
            raise Refused(422, f"unknown assignee {to!r}: not an analyst or supervisor token's name")
        if case.status not in OPEN_STATUSES:
            raise Refused(409, f"case {case.id} is {case.status}: reopen it before assigning")
        if to == case.assignee:
            raise Refused(409, f"case {case.id} is already {'assigned to ' + to if to else 'unassigned'}")
        if not actor.at_least("supervisor"):
            _may_work(case, actor, "assign it")
            if to not in (actor.name, None):
                raise Refused(403, "an analyst assigns cases only to themselves; a supervisor assigns anyone")
        assign(to)
    else:
        to = action.to
        if to not in STATUSES:
            raise Refused(422, f"unknown status {to!r}: one of {', '.join(STATUSES)}")
        if to == case.status:
            raise Refused(409, f"case {case.id} is already {to}")
        if to == "open":
            if case.status in OPEN_STATUSES:
                raise Refused(409, f"case {case.id} is {case.status}: only a resolved or dismissed case is reopened")
            if not actor.at_least("supervisor"):
                raise Refused(403, "only a supervisor reopens a case")
            reason = _text(action.reason, "a reason to reopen", required=True)
            record("transition", "status", case.status, "open", reason=reason, outcome_was=case.outcome)
            updates.update(status="open", outcome=None, note=None, closed_at_ms=None)
            change.slot = "claim"
        else:
            if case.status not in OPEN_STATUSES:
                raise Refused(409, f"case {case.id} is {case.status}: a supervisor must reopen it first")
            if to == "in_progress" and case.status != "open":
                raise Refused(409, f"case {case.id} is {case.status}")
            doing = {"in_progress": "start it", "resolved": "resolve it", "dismissed": "dismiss it"}[to]
            _may_work(case, actor, doing)
            outcome = action.outcome
            note = _text(action.note, "note", required=to == "resolved" and outcome == "other")
            if to == "resolved":
                allowed = outcomes_for(case.category)
                if outcome not in allowed:
                    raise Refused(422, f"outcome for a {case.category} case must be one of {', '.join(allowed)}")
            elif outcome is not None:
                raise Refused(422, "only resolving a case takes an outcome")
            if case.assignee is None:  # working an unassigned case takes it
                assign(actor.name)
            record("transition", "status", case.status, to, outcome=outcome, note=note)
            updates.update(status=to)
            if to != "in_progress":
                updates.update(outcome=outcome, note=note, closed_at_ms=now_ms)
                change.slot = "release"
        if "status" in updates:
            change.moves += [("zrem", index("status", case.status)), ("zadd", index("status", updates["status"]))]
    updates["updated_at_ms"] = now_ms
    if case.first_action_at_ms is None:
        updates["first_action_at_ms"] = now_ms
    change.case = dataclasses.replace(case, **updates, version=case.version + 1)
    change.fields = _fields(change.case, updates)
    return change


_STORED_AS = {"updated_at_ms": "updated_at", "first_action_at_ms": "first_action_at", "closed_at_ms": "closed_at"}


def _fields(case: Case, updates: Mapping[str, Any]) -> dict[str, str]:
    return {
        _STORED_AS.get(name, name): "" if getattr(case, name) is None else str(getattr(case, name)) for name in updates
    }


def index(name: str, value: str | None) -> str:
    """An index's name below the case keys: ``ix:status:open``; ``-`` is "none" (unassigned)."""
    return f"ix:{name}:{value if value else '-'}"


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


# ---------------------------------------------------------------- outcomes -> rules


@dataclass(frozen=True, slots=True)
class RulePrecision:
    rule: str
    cases: int  # every case the rule has a finding in
    findings: int  # its findings taken into cases
    resolved: int
    confirmed: int
    dismissed: int
    precision: float | None  # confirmed / resolved; None before any resolution
    median_first_action_seconds: float | None  # over its resolved cases
    median_resolution_seconds: float | None


# ---------------------------------------------------------------- storage

# Opens or joins a case for each finding not taken before; moves the feed cursor forward.
# KEYS: open slots, by-finding, sequence, cursor, rules. ARGV: base, now, cursor ('' = keep),
# then per finding 10 values: id, type, customer, category, rule, severity, rank, tier, priority, JSON.
INTAKE_LUA = """
local base, now = ARGV[1], ARGV[2]
local opened, joined = 0, 0
local function ix(name, value) if value == '' then value = '-' end return base .. ':ix:' .. name .. ':' .. value end
local function index(name, value, id) redis.call('ZADD', ix(name, value), id, id) end
local function move(name, old, new, id)
  if old ~= new then redis.call('ZREM', ix(name, old), id); index(name, new, id) end
end
local function audit(case, entry) redis.call('RPUSH', case .. ':audit', cjson.encode(entry)) end
for i = 4, #ARGV, 10 do
  local fid, kind, cust, cat, rule = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local sev, rank, tier, prio, body = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9]
  local ts = cjson.decode(body)['ts'] or ''
  if redis.call('HEXISTS', KEYS[2], fid) == 0 then
    local slot = kind .. '|' .. cust .. '|' .. cat
    local id = redis.call('HGET', KEYS[1], slot)
    local case
    if id then
      case = base .. ':case:' .. id
      redis.call('HINCRBY', case, 'count', 1)
      redis.call('HINCRBY', case, 'v', 1)
      if tonumber(rank) > tonumber(redis.call('HGET', case, 'severity_rank')) then
        move('severity', redis.call('HGET', case, 'severity'), sev, id)
        redis.call('HSET', case, 'severity', sev, 'severity_rank', rank)
      end
      move('tier', redis.call('HGET', case, 'tier'), tier, id)
      if tonumber(prio) < tonumber(redis.call('HGET', case, 'priority')) then
        redis.call('HSET', case, 'priority', prio)
      end
      local rules = cjson.decode(redis.call('HGET', case, 'rules'))
      local known = false
      for _, r in ipairs(rules) do if r == rule then known = true end end
      if not known then
        rules[#rules + 1] = rule
        redis.call('HSET', case, 'rules', cjson.encode(rules))
        index('rule', rule, id)
      end
      redis.call('HSET', case, 'tier', tier, 'updated_at', now, 'last_finding_ts', ts)
      audit(case, {at = tonumber(now), actor = 'system', action = 'finding_added', finding_id = fid, rule = rule})
      joined = joined + 1
    else
      id = redis.call('INCR', KEYS[3])
      case = base .. ':case:' .. id
      redis.call('HSET', case, 'id', id, 'type', kind, 'customer_id', cust, 'category', cat, 'rule', rule,
        'rules', cjson.encode({rule}), 'severity', sev, 'severity_rank', rank, 'tier', tier, 'priority', prio,
        'status', 'open', 'assignee', '', 'count', 1, 'opened_at', now, 'updated_at', now,
        'first_action_at', '', 'closed_at', '', 'outcome', '', 'note', '',
        'first_finding_ts', ts, 'last_finding_ts', ts, 'v', 1)
      redis.call('HSET', KEYS[1], slot, id)
      index('status', 'open', id)
      index('assignee', '-', id)
      index('customer', cust, id)
      index('rule', rule, id)
      index('category', cat, id)
      index('type', kind, id)
      index('severity', sev, id)
      index('tier', tier, id)
      index('all', 'cases', id)
      redis.call('ZADD', base .. ':ix:opened', now, id)
      audit(case, {at = tonumber(now), actor = 'system', action = 'opened', finding_id = fid, rule = rule})
      opened = opened + 1
    end
    redis.call('RPUSH', case .. ':findings', body)
    redis.call('HSET', KEYS[2], fid, id)
    redis.call('HINCRBY', KEYS[5], rule, 1)
  end
end
if ARGV[3] ~= '' then
  local current = redis.call('GET', KEYS[4])
  local function parts(s) local a, b = string.match(s, '^(%d+)-(%d+)$'); return tonumber(a), tonumber(b) end
  local newer = true
  if current then
    local cm, cs = parts(current)
    local nm, ns = parts(ARGV[3])
    newer = nm > cm or (nm == cm and ns > cs)
  end
  if newer then redis.call('SET', KEYS[4], ARGV[3]) end
end
return {opened, joined}
"""

# The 看板's case counts in one read (a consistent snapshot; writes nothing).
# KEYS: ix:opened, then the status indexes in STATUSES order. ARGV: now (ms), then the age
# bounds of AGE_BUCKETS after the first (ms, ascending). Case numbers are given out in the
# order cases are opened, so "opened before T" is "number <= the last number opened before T",
# found in ix:opened (cases opened by one intake share a time: the highest number of that time,
# O(one intake's cases)); each age bucket is then a ZCOUNT by number on the open statuses' indexes.
# Returns the count of each status, then the open (open + in_progress) cases of each bucket.
BOARD_LUA = """
local now = tonumber(ARGV[1])
local result = {}
for i = 2, #KEYS do result[#result + 1] = redis.call('ZCARD', KEYS[i]) end
local upper = '+inf'
for i = 2, #ARGV + 1 do
  local lower = '-inf'
  if i <= #ARGV then  -- the highest number among the cases of the latest time at or before the edge
    local latest = redis.call('ZREVRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[i]), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
    local last = 0
    if latest[2] then  -- one intake opens many cases at one time; members order as text ('9' > '10')
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], latest[2], latest[2])) do
        if tonumber(id) > last then last = tonumber(id) end
      end
    end
    lower = '(' .. last
  end
  result[#result + 1] = redis.call('ZCOUNT', KEYS[2], lower, upper) + redis.call('ZCOUNT', KEYS[3], lower, upper)
  if lower == '-inf' then upper = lower else upper = string.sub(lower, 2) end
end
return result
"""

# The rules' precision, kept as the cases close and reopen (``CaseStore.precision``): per
# rule a hash ``prec:n:{rule}`` (resolved, confirmed, dismissed) and two sorted sets of its
# resolved cases, ``prec:first:{rule}`` and ``prec:closing:{rule}`` (score: ms from opening
# to the first action / to the resolution), whose middle members are the medians. (The
# rule comes last in each key, so no rule's name can be another's key.) ``tally`` adds
# (sign 1) or takes back (-1) a closed case as it stands; a case that is not closed counts
# nothing. ``prec:built`` says the tallies exist: ``TALLY_BUILD_LUA`` makes them once from
# the cases closed before this version, a few thousand case numbers per call (so Redis is
# never held for long), and ``APPLY_LUA`` keeps the tally of a case the build has passed
# (its number at most ``prec:upto``) or of any case once built; all are scripts, so no
# change falls between a build step and a mutation.
TALLY_LUA = (
    "local CONFIRMING = {"
    + ", ".join(f"{outcome} = true" for outcome in sorted(CONFIRMING))
    + "}\n"
    + """
local function prec(base, what, rule) return base .. ':prec:' .. what .. ':' .. rule end  -- what: n, first, closing
local function tally(base, case, id, sign)
  local f = redis.call('HMGET', case, 'status', 'outcome', 'rules', 'opened_at', 'first_action_at', 'closed_at')
  if f[1] ~= 'resolved' and f[1] ~= 'dismissed' then return end
  for _, rule in ipairs(cjson.decode(f[3])) do
    local p = prec(base, 'n', rule)
    if f[1] == 'dismissed' then
      redis.call('HINCRBY', p, 'dismissed', sign)
    else
      redis.call('HINCRBY', p, 'resolved', sign)
      if CONFIRMING[f[2]] then redis.call('HINCRBY', p, 'confirmed', sign) end
      for _, span in ipairs({{'first', f[5]}, {'closing', f[6]}}) do
        local z, at = prec(base, span[1], rule), tonumber(span[2])
        if at and sign > 0 then redis.call('ZADD', z, at - tonumber(f[4]), id) end
        if sign < 0 then redis.call('ZREM', z, id) end
      end
    end
  end
end
"""
)

# One mutation of one case, all or nothing.
# KEYS: case, audit, idempotency record, open slots.
# ARGV: expected version, idempotency record ('' = none), its ttl, slot op ('' | claim | release), slot, case id,
# base, then n fields, the fields (name, value)..., m audit entries..., then index moves (op, index)...
# Returns {1, ''} applied, {0, ''} version moved, {2, record} replayed, {3, holder} slot taken by another case.
APPLY_LUA = (
    TALLY_LUA
    + """
if ARGV[2] ~= '' then
  local prior = redis.call('GET', KEYS[3])
  if prior then return {2, prior} end
end
if (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[1] then return {0, ''} end
if ARGV[4] == 'claim' then
  local holder = redis.call('HGET', KEYS[4], ARGV[5])
  if holder and holder ~= ARGV[6] then return {3, holder} end
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
elseif ARGV[4] == 'release' then
  if redis.call('HGET', KEYS[4], ARGV[5]) == ARGV[6] then redis.call('HDEL', KEYS[4], ARGV[5]) end
end
local base = ARGV[7]
local a = 8
local n = tonumber(ARGV[a])
local moving = false  -- the status changes: the rules' precision tallies follow (once they exist)
for i = a + 1, a + 2 * n, 2 do if ARGV[i] == 'status' then moving = true end end
if moving and redis.call('EXISTS', base .. ':prec:built') == 0 then  -- the tallies are being made
  moving = tonumber(ARGV[6]) <= tonumber(redis.call('GET', base .. ':prec:upto') or '0')
end
if moving then tally(base, KEYS[1], ARGV[6], -1) end
for i = a + 1, a + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if moving then tally(base, KEYS[1], ARGV[6], 1) end
redis.call('HINCRBY', KEYS[1], 'v', 1)
a = a + 2 * n + 1
local m = tonumber(ARGV[a])
for i = a + 1, a + m do redis.call('RPUSH', KEYS[2], ARGV[i]) end
for i = a + m + 1, #ARGV, 2 do
  local key = base .. ':' .. ARGV[i + 1]
  if ARGV[i] == 'zadd' then redis.call('ZADD', key, ARGV[6], ARGV[6]) else redis.call('ZREM', key, ARGV[6]) end
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
return {1, ''}
"""
)

# One step of making the tallies: the closed cases numbered after ``prec:upto`` up to
# ARGV[2] more; returns the new ``upto``, or -1 once every case is tallied (``prec:built``).
# The first step drops whatever tallies there are, so deleting ``prec:built`` makes them
# again from the cases (docs/cases.md: after an API process of an older version changed
# cases while a newer one kept tallies).
TALLY_BUILD_LUA = (
    TALLY_LUA
    + """
local base = ARGV[1]
if redis.call('EXISTS', base .. ':prec:built') == 1 then return -1 end
local upto = tonumber(redis.call('GET', base .. ':prec:upto') or '-1')
if upto < 0 then  -- the first step (of all, or after prec:built was dropped to make them again): from nothing
  for _, rule in ipairs(redis.call('HKEYS', base .. ':rules')) do
    redis.call('DEL', prec(base, 'n', rule), prec(base, 'first', rule), prec(base, 'closing', rule))
  end
  upto = 0
end
local to = upto + tonumber(ARGV[2])
for _, status in ipairs({'resolved', 'dismissed'}) do
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', base .. ':ix:status:' .. status, '(' .. upto, to)) do
    tally(base, base .. ':case:' .. id, id, 1)
  end
end
if to >= tonumber(redis.call('GET', base .. ':seq') or '0') then
  redis.call('SET', base .. ':prec:built', 1)
  redis.call('DEL', base .. ':prec:upto')
  return -1
end
redis.call('SET', base .. ':prec:upto', to)
return to
"""
)

# Per rule: name, findings, cases, resolved, confirmed, dismissed, then for ``first`` and
# ``closing`` the two middle scores ('' when none). Read-only: O(rules * log n). (With
# ``TALLY_LUA`` before it for the key names.)
PRECISION_LUA = (
    TALLY_LUA
    + """
local base = ARGV[1]
local out = {}
local rules = redis.call('HGETALL', base .. ':rules')
for i = 1, #rules, 2 do
  local rule = rules[i]
  local c = redis.call('HMGET', prec(base, 'n', rule), 'resolved', 'confirmed', 'dismissed')
  local cases = redis.call('ZCARD', base .. ':ix:rule:' .. rule)
  local row = {rule, rules[i + 1], cases, c[1] or '0', c[2] or '0', c[3] or '0'}
  for _, span in ipairs({'first', 'closing'}) do
    local z = prec(base, span, rule)
    local n = redis.call('ZCARD', z)
    if n == 0 then
      row[#row + 1], row[#row + 2] = '', ''
    else
      row[#row + 1] = redis.call('ZRANGE', z, math.floor((n - 1) / 2), math.floor((n - 1) / 2), 'WITHSCORES')[2]
      row[#row + 1] = redis.call('ZRANGE', z, math.floor(n / 2), math.floor(n / 2), 'WITHSCORES')[2]
    end
  end
  out[#out + 1] = row
end
return out
"""
)


TALLY_BUILD_STEP = 5_000  # case numbers per build call: ~40 ms of Redis at 50,000 closed cases in 100,000


def _median_seconds(low: bytes, high: bytes) -> float | None:
    """The median of a sorted set's scores (ms) in seconds, from its middle two (equal when odd)."""
    if not low:
        return None
    return (int(low) / 1000 + int(high) / 1000) / 2


INDEXED = ("customer", "assignee", "rule", "status", "category", "severity", "tier", "type")


@dataclass(frozen=True, slots=True)
class CaseFilter:
    status: str | None = None
    assignee: str | None = None  # "-": unassigned
    rule: str | None = None
    category: str | None = None
    type: str | None = None
    customer: str | None = None
    severity: str | None = None
    tier: str | None = None
    min_age_ms: int | None = None
    max_age_ms: int | None = None

    @property
    def aged(self) -> bool:
        return self.min_age_ms is not None or self.max_age_ms is not None


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A mutating request's ``Idempotency-Key`` (scoped to the caller) and its fingerprint."""

    actor: str
    key: str
    fingerprint: str

    def scoped(self, suffix: str) -> Idempotency:
        return Idempotency(self.actor, f"{self.key}#{suffix}", self.fingerprint)


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).hexdigest()


@dataclass(frozen=True, slots=True)
class Stored:
    """A response stored under an idempotency key."""

    status: int
    body: Any


class CaseStore:
    def __init__(self, client: aioredis.Redis, keys: Keys, clock_ms: Callable[[], int] | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.base = keys.cases
        self.clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._intake = client.register_script(INTAKE_LUA)
        self._apply = client.register_script(APPLY_LUA)
        self._board = client.register_script(BOARD_LUA)
        self._tally_build = client.register_script(TALLY_BUILD_LUA)
        self._precision = client.register_script(PRECISION_LUA)

    def key(self, name: str) -> str:
        return f"{self.base}:{name}"

    def case_key(self, case_id: int) -> str:
        return self.key(f"case:{case_id}")

    def idem_key(self, idem: Idempotency) -> str:
        return self.key(f"idem:{idem.actor}:{idem.key}")

    # ---- intake

    async def intake(self, findings: Sequence[dict[str, Any]], cursor: str = "") -> tuple[int, int]:
        """Open or join cases for ``findings`` (alerts and recommendations; others are skipped)
        and move the cursor; returns (opened, joined). A finding taken before is skipped."""
        args: list[str | int] = [self.base, self.clock_ms(), cursor]
        for f in findings:
            kind, severity, tier = f.get("type"), str(f.get("severity")), f.get("tier")
            if kind not in CASE_TYPES or not f.get("id") or not f.get("customer_id"):
                continue
            rank = SEVERITIES.index(severity) if severity in SEVERITIES else 0
            tier_text = tier if isinstance(tier, str) else ""
            args += (f["id"], kind, f["customer_id"], f.get("category", ""), f.get("rule", ""), severity, rank)
            args += (tier_text, priority(severity, tier_text or None), orjson.dumps(f).decode())
        keys = [self.key("open"), self.key("by_finding"), self.key("seq"), self.key("cursor"), self.key("rules")]
        reply = cast(list[int], await self._intake(keys=keys, args=args))
        opened, joined = int(reply[0]), int(reply[1])
        if opened:
            telemetry.CASES_OPENED.inc(opened)
        if joined:
            telemetry.CASE_FINDINGS_JOINED.inc(joined)
        return opened, joined

    async def intake_feed(self, count: int = 500, block_ms: int | None = None) -> int:
        """Read the findings feed past the cursor (waiting up to ``block_ms``) and take
        them into cases; returns the entries read."""
        cursor = cast(bytes | None, await self.redis.get(self.key("cursor")))
        last = cursor.decode() if cursor else "0-0"
        replies = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
            await self.redis.xread({self.keys.feed: last}, count=count, block=block_ms),
        )
        entries = [entry for _, batch in replies or [] for entry in batch]
        if not entries:
            return 0
        if last != "0-0" and await self._gap(last, entries[0][0].decode()):
            telemetry.CASE_INTAKE_GAPS.inc()
            log.error("case intake: the feed was trimmed past the cursor %s: findings may be missing cases", last)
        findings = []
        for _, fields in entries:
            try:
                value = orjson.loads(fields.get(b"v", b""))
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                findings.append(value)
        await self.intake(findings, entries[-1][0].decode())
        return len(entries)

    async def _gap(self, cursor: str, first_read: str) -> bool:
        """The cursor's own entry is gone and the oldest kept one is later: trimmed unread."""
        found = cast(list[Any], await self.redis.xrange(self.keys.feed, min=cursor, max=cursor, count=1))
        return not found and first_read != cursor

    # ---- reads

    async def get(self, case_id: int) -> Case | None:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.case_key(case_id)))
        return Case.from_hash(raw) if raw else None

    async def many(self, ids: Sequence[int]) -> list[Case]:
        found: list[Case] = []
        for start in range(0, len(ids), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for case_id in ids[start : start + 500]:
                    pipe.hgetall(self.case_key(case_id))
                replies = await pipe.execute()
            found += [Case.from_hash(raw) for raw in replies if raw]
        return found

    async def trail(self, case_id: int) -> list[dict[str, Any]]:
        return [
            orjson.loads(e)
            for e in cast(list[bytes], await self.redis.lrange(f"{self.case_key(case_id)}:audit", 0, -1))
        ]

    async def findings(self, case_id: int, newest: int = 100) -> list[dict[str, Any]]:
        raw = cast(list[bytes], await self.redis.lrange(f"{self.case_key(case_id)}:findings", -newest, -1))
        return [orjson.loads(e) for e in reversed(raw)]

    async def search(self, wanted: CaseFilter, limit: int, offset: int) -> tuple[list[Case], int]:
        """Matching cases, newest first, and how many match in all."""
        indexes = [self.key(index(name, getattr(wanted, name))) for name in INDEXED if getattr(wanted, name)]
        if not indexes:
            indexes = [self.key(index("all", "cases"))]
        if len(indexes) == 1 and not wanted.aged:  # one index: read just the page
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zcard(indexes[0])
                pipe.zrevrange(indexes[0], offset, offset + limit - 1)
                total, page = await pipe.execute()
            return await self.many([int(m) for m in page]), int(total)
        if len(indexes) == 1:
            members = cast(list[bytes], await self.redis.zrevrange(indexes[0], 0, -1))
        else:
            members = list(reversed(cast(list[bytes], await self.redis.zinter(indexes))))
        ids = [int(m) for m in members]
        if wanted.aged:  # opened between now - max_age and now - min_age
            now = self.clock_ms()
            oldest = now - wanted.max_age_ms if wanted.max_age_ms is not None else "-inf"
            newest = now - wanted.min_age_ms if wanted.min_age_ms is not None else "+inf"
            within = cast(list[bytes], await self.redis.zrangebyscore(self.key("ix:opened"), oldest, newest))
            allowed = {int(m) for m in within}
            ids = [i for i in ids if i in allowed]
        return await self.many(ids[offset : offset + limit]), len(ids)

    async def precision(self) -> list[RulePrecision]:
        """Per rule, from the tallies its cases keep as they close (``TALLY_LUA``): one
        read-only call, whatever the number of closed cases (reading them all took 1.3 s
        at 50,000, every 30 s in each API process). The first call after an upgrade makes
        the tallies from the closed cases, once (``TALLY_BUILD_LUA``)."""
        if not await self.redis.exists(self.key("prec:built")):
            while int(await self._tally_build(args=[self.base, TALLY_BUILD_STEP])) >= 0:
                pass
            log.info("rule precision: tallies made from the cases closed before them")
        rows = []
        for raw in cast(list[list[Any]], await self._precision(args=[self.base])):
            rule, findings, cases, resolved, confirmed, dismissed = raw[:6]
            done = int(resolved)
            rows.append(
                RulePrecision(
                    rule=rule.decode(),
                    cases=int(cases),
                    findings=int(findings),
                    resolved=done,
                    confirmed=int(confirmed),
                    dismissed=int(dismissed),
                    precision=round(int(confirmed) / done, 4) if done else None,
                    median_first_action_seconds=_median_seconds(raw[6], raw[7]),
                    median_resolution_seconds=_median_seconds(raw[8], raw[9]),
                )
            )
        rows.sort(key=lambda row: row.rule)
        record_rule_precision(rows)
        return rows

    async def status_counts(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in STATUSES:
                pipe.zcard(self.key(index("status", status)))
            counts = await pipe.execute()
        return dict(zip(STATUSES, (int(c) for c in counts), strict=True))

    async def board(self) -> dict[str, Any]:
        """The 看板's case part: cases by status, and open cases (open or in progress) by age
        (``AGE_BUCKETS``, from when the case was opened: the API's clock, not event time).
        One read-only script over the indexes: O(log n), never a walk over the cases. An age
        edge is as exact as the clocks of the API processes that opened the cases agree."""
        statuses = [self.key(index("status", status)) for status in STATUSES]
        bounds = [bound for _, bound in AGE_BUCKETS[1:]]
        reply = cast(list[int], await self._board(keys=[self.key("ix:opened"), *statuses],
                                                  args=[self.clock_ms(), *bounds]))  # fmt: skip
        by_status = dict(zip(STATUSES, (int(n) for n in reply[: len(STATUSES)]), strict=True))
        ages = reply[len(STATUSES) :]  # newest bucket first, as AGE_BUCKETS
        return {
            "by_status": by_status,
            "open_by_age": [{"bucket": name, "count": int(n)} for (name, _), n in zip(AGE_BUCKETS, ages, strict=True)],
        }

    # ---- writes

    async def stored(self, idem: Idempotency) -> Stored | None:
        """The response stored for ``idem``; ``Refused`` (422) when the key came with another request."""
        raw = cast(bytes | None, await self.redis.get(self.idem_key(idem)))
        return self._replay(raw, idem) if raw is not None else None

    @staticmethod
    def _replay(raw: bytes, idem: Idempotency) -> Stored:
        record = orjson.loads(raw)
        if record["fingerprint"] != idem.fingerprint:
            raise Refused(422, "Idempotency-Key was already used for a different request")
        return Stored(int(record["status"]), record["body"])

    async def remember(self, idem: Idempotency, response: Stored) -> None:
        record = {"fingerprint": idem.fingerprint, "status": response.status, "body": response.body}
        await self.redis.set(self.idem_key(idem), orjson.dumps(record), ex=IDEMPOTENCY_SECONDS)

    async def act(
        self,
        case_id: int,
        actor: Actor,
        action: Action,
        assignable: frozenset[str],
        render: Callable[[Case], Any],
        idem: Idempotency | None = None,
    ) -> Stored:
        """Apply ``action`` atomically (retrying if the case moved meanwhile); the response
        (``render`` of the new case) is stored under ``idem`` in the same step."""
        for _ in range(20):
            if idem is not None:
                prior = await self.stored(idem)
                if prior is not None:
                    return prior
            case = await self.get(case_id)
            if case is None:
                raise Refused(404, f"no case {case_id}")
            change = decide(case, actor, action, self.clock_ms(), assignable)
            response = Stored(200, render(change.case))
            record = b""
            if idem is not None:
                record = orjson.dumps(
                    {"fingerprint": idem.fingerprint, "status": response.status, "body": response.body}
                )
            args: list[str | int | bytes] = [case.version, record, IDEMPOTENCY_SECONDS, change.slot, case.slot]
            args += [case.id, self.base, len(change.fields)]
            for name, value in change.fields.items():
                args += (name, value)
            args.append(len(change.audit))
            args += [orjson.dumps(entry) for entry in change.audit]
            for op, name in change.moves:
                args += (op, name)
            keys = [self.case_key(case_id), f"{self.case_key(case_id)}:audit", "", self.key("open")]
            keys[2] = self.idem_key(idem) if idem is not None else self.key("idem:-")
            outcome, detail = cast(list[Any], await self._apply(keys=keys, args=args))
            if outcome == 1:
                telemetry.CASE_ACTIONS.labels(type(action).__name__.lower()).inc()
                return response
            if outcome == 2 and idem is not None:
                return self._replay(detail, idem)
            if outcome == 3:
                holder = detail.decode() if isinstance(detail, bytes) else str(detail)
                raise Refused(409, f"case {holder} is already open for this customer and category")
        raise Refused(409, f"case {case_id} keeps changing; try again")


def record_rule_precision(rows: Iterable[RulePrecision]) -> None:
    """Per-rule outcome gauges (labels: the rule only, never a customer)."""
    nan = float("nan")
    for row in rows:
        telemetry.RULE_PRECISION.labels(row.rule).set(row.precision if row.precision is not None else nan)
        telemetry.RULE_RESOLVED.labels(row.rule).set(row.resolved)
        telemetry.RULE_CONFIRMED.labels(row.rule).set(row.confirmed)
        telemetry.RULE_CASES.labels(row.rule).set(row.cases)
        first, resolution = row.median_first_action_seconds, row.median_resolution_seconds
        telemetry.RULE_FIRST_ACTION.labels(row.rule).set(first if first is not None else nan)
        telemetry.RULE_RESOLUTION.labels(row.rule).set(resolution if resolution is not None else nan)

"""The cases in Redis: the intake that opens and joins them, the reads, and the one
script that applies what the rules (``cases.model.decide``) decided.

Every write is one Lua script (the scripts are the ``.lua`` files in ``cases/lua/``):
the intake (``intake.lua``: opens/joins cases for a batch of findings, closes or
annotates the cases of the findings retractions take back, and moves the feed cursor,
skipping a finding or a retracted finding it already took, so it is exactly-once per
finding id) and the mutation (``apply.lua``: compare-and-set on the case's version ``v``, the
new fields, the audit entries, the index moves and the ``Idempotency-Key`` record,
all or nothing). The rules' precision is kept as tallies while cases close
(``tally.lua``), read in one call (``precision.lua``) and made once from the cases
closed before the tallies existed (``tally_build.lua``).

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

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, NamedTuple, cast

import orjson
import redis.asyncio as aioredis

from cases.model import (
    AGE_BUCKETS,
    CASE_TYPES,
    CONFIRMING,
    MAX_COMMENTS,
    RETRACTED,
    SEVERITIES,
    STATUSES,
    Action,
    Actor,
    Case,
    Reason,
    Refused,
    RulePrecision,
    decide,
    index,
    priority,
)
from contact.routes import ContactConfig
from contact.store import live_tiers
from streams import telemetry
from streams.storage.keys import Keys

log = logging.getLogger(__name__)

IDEMPOTENCY_SECONDS = 24 * 3600
TALLY_BUILD_STEP = 5_000  # case numbers per build call: Redis is held for one step, never for every closed case


def _lua(name: str) -> str:
    return (files("cases") / "lua" / name).read_text(encoding="utf-8")


# The outcome of a case closed by a retraction, as the scripts write and skip it.
RETRACTED_LUA = f"local RETRACTED = '{RETRACTED}'\n"

# Opens or joins a case for each finding not taken before, takes back the findings that
# retractions name (closing or annotating their cases: ``cases.model.on_retraction``), and
# moves the feed cursor forward. KEYS: open slots, by-finding, sequence, cursor, rules,
# retracted. ARGV: base, now, cursor ('' = keep), then per finding 13 values: id, type,
# customer, category, rule, severity, rank, tier, priority, JSON, the id it retracts ('' =
# none: a finding), history ('1' | ''), queue (analyst | rm: a case routed to the RM stays there).
# Returns {opened, joined, closed, annotated, unmatched}.
INTAKE_LUA = RETRACTED_LUA + _lua("intake.lua")

# The 看板's case counts in one read (a consistent snapshot; writes nothing).
# KEYS: ix:opened, then the status indexes in STATUSES order. ARGV: now (ms), then the age
# bounds of AGE_BUCKETS after the first (ms, ascending). Case numbers are given out in the
# order cases are opened, so "opened before T" is "number <= the last number opened before T",
# found in ix:opened (cases opened by one intake share a time: the highest number of that time,
# O(one intake's cases)); each age bucket is then a ZCOUNT by number on the open statuses' indexes.
# Returns the count of each status, then the open (open + in_progress) cases of each bucket.
BOARD_LUA = _lua("board.lua")

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
# tally.lua is not a script on its own: it opens the three below, after the table of the
# confirming outcomes, written here from ``CONFIRMING`` (so the rules and the tallies agree).
TALLY_LUA = (
    RETRACTED_LUA
    + "local CONFIRMING = {"
    + ", ".join(f"{outcome} = true" for outcome in sorted(CONFIRMING))
    + "}\n"
    + _lua("tally.lua")
)

# One mutation of one case, all or nothing; the Idempotency-Key's record is read before anything else.
# KEYS: case, audit, idempotency record, open slots, comments.
# ARGV: expected version, idempotency record ('' = none), its ttl, slot op ('' | claim | release), slot, case id,
# base, the name the case must be unassigned or assigned to ('' = any: a comment by a supervisor), the most comments
# a case holds ('0' = not a comment: a state change), then n fields, the fields (name, value)..., m audit
# entries..., then index moves (op, index)... A comment is appended without the compare-and-set on the version
# (its audit entry also goes to the comments list, and ``comments`` counts them); a state change needs it.
# Returns {1, ''} applied, {0, ''} version moved, {2, record} replayed, {3, holder} slot taken by another case,
# {4, held} the case holds the most comments, {5, assignee} assigned to another since read, {6, ''} no case.
APPLY_LUA = TALLY_LUA + _lua("apply.lua")

# One step of making the tallies: the closed cases numbered after ``prec:upto`` up to
# ARGV[2] more; returns the new ``upto``, or -1 once every case is tallied (``prec:built``).
# The first step drops whatever tallies there are, so deleting ``prec:built`` makes them
# again from the cases (docs/cases.md: after an API process of an older version changed
# cases while a newer one kept tallies).
TALLY_BUILD_LUA = TALLY_LUA + _lua("tally_build.lua")

# Per rule: name, findings, cases, resolved, confirmed, dismissed, then for ``first`` and
# ``closing`` the two middle scores ('' when none). Read-only: O(rules * log n). (With
# ``TALLY_LUA`` before it for the key names.)
PRECISION_LUA = TALLY_LUA + _lua("precision.lua")


def case_from_hash(raw: Mapping[bytes, bytes]) -> Case:
    """A case from its Redis hash (as ``intake.lua`` and ``apply.lua`` write it)."""
    text = {k.decode(): v.decode() for k, v in raw.items()}

    def optional_int(name: str) -> int | None:
        return int(text[name]) if text.get(name) else None

    return Case(
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
        retracted=int(text.get("retracted") or 0),
        history=bool(text.get("history")),
        queue=text.get("queue") or "analyst",
    )


def _median_seconds(low: bytes, high: bytes) -> float | None:
    """The median of a sorted set's scores (ms) in seconds, from its middle two (equal when odd)."""
    if not low:
        return None
    return (int(low) / 1000 + int(high) / 1000) / 2


INDEXED = ("customer", "assignee", "rule", "status", "category", "severity", "tier", "type", "queue")


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
    queue: str | None = None
    min_age_ms: int | None = None
    max_age_ms: int | None = None

    @property
    def aged(self) -> bool:
        return self.min_age_ms is not None or self.max_age_ms is not None


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A mutating request's ``Idempotency-Key`` (scoped to the caller's token: its fingerprint, never
    the name it claims), the request's fingerprint, and the status its answer is kept with (the
    caller's to say: the store keeps it without reading it)."""

    scope: str
    key: str
    fingerprint: str
    status: int

    def scoped(self, suffix: str) -> Idempotency:
        """The key of one item of a bulk request. A space is no client key's character (they are
        visible ASCII), so ``K 46`` is no key a client could send, unlike ``K#46``."""
        return Idempotency(self.scope, f"{self.key} #{suffix}", self.fingerprint, self.status)


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).hexdigest()


class Taken(NamedTuple):
    """What one intake call did."""

    opened: int  # cases opened
    joined: int  # findings that joined an open case
    closed: int = 0  # cases closed by a retraction (outcome ``retracted``)
    annotated: int = 0  # cases a retraction annotated (left for the analyst)
    unmatched: int = 0  # retractions of a finding that opened or joined no case


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer kept under an idempotency key: the status its ``Idempotency`` gave, and the body."""

    status: int
    body: Any
    replayed: bool = True  # the answer kept the first time (False: this request made the change)


@dataclass(frozen=True, slots=True)
class Page:
    """The newest entries of a case's list before a cursor: ``before`` for the next (older) page, or None."""

    entries: list[dict[str, Any]]
    before: int | None
    total: int


class CaseStore:
    """``from_history``: the intake also opens cases for history findings (before the go-live,
    ``"history": true``; setting ``cases_from_history``), marked as history; else they open none.
    ``contact``: the contact table; the intake reads the live tiers of a batch's customers, stamps
    each case with its customer's live tier (the finding's own, null from the worker, when the
    tiers do not know them) and files a finding the table routes to ``rm`` in the ``rm`` queue."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys,
        clock_ms: Callable[[], int] | None = None,
        from_history: bool = False,
        max_comments: int = MAX_COMMENTS,
        contact: ContactConfig | None = None,
    ) -> None:
        self.redis = client
        self.contact = contact or ContactConfig()
        self.max_comments = max_comments
        self.keys = keys
        self.from_history = from_history
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
        return self.key(f"idem:{idem.scope}:{idem.key}")

    # ---- intake

    async def intake(self, findings: Sequence[dict[str, Any]], cursor: str = "") -> Taken:
        """Open or join cases for ``findings`` (alerts and recommendations; others are skipped),
        take back the findings retractions name, and move the cursor. A finding (or a retraction
        of a finding) taken before is skipped; a retraction never opens a case; a history finding
        opens none unless ``from_history``."""
        args: list[str | int] = [self.base, self.clock_ms(), cursor]
        customers = sorted({f["customer_id"] for f in findings if f.get("type") in CASE_TYPES
                            and isinstance(f.get("customer_id"), str) and f.get("retracts") is None})  # fmt: skip
        live = await live_tiers(self.redis, self.keys, customers)
        for f in findings:
            kind, severity, tier, retracts = f.get("type"), str(f.get("severity")), f.get("tier"), f.get("retracts")
            if kind not in CASE_TYPES or not f.get("id") or not f.get("customer_id"):
                continue
            if retracts is not None and not (isinstance(retracts, str) and retracts):
                continue  # names nothing it could take back
            history = f.get("history") is True
            if history and retracts is None and not self.from_history:
                continue
            rank = SEVERITIES.index(severity) if severity in SEVERITIES else 0
            tier_text = live.get(f["customer_id"]) or (tier if isinstance(tier, str) else "")
            queue = "rm" if self.contact.route(tier_text or None, str(f.get("category", ""))) == "rm" else "analyst"
            args += (f["id"], kind, f["customer_id"], f.get("category", ""), f.get("rule", ""), severity, rank)
            args += (tier_text, priority(severity, tier_text or None), orjson.dumps(f).decode())
            args += (retracts or "", "1" if history else "", queue)
        keys = [self.key("open"), self.key("by_finding"), self.key("seq"), self.key("cursor"), self.key("rules")]
        keys.append(self.key("retracted"))
        taken = Taken(*(int(n) for n in cast(list[int], await self._intake(keys=keys, args=args))))
        if taken.opened:
            telemetry.CASES_OPENED.inc(taken.opened)
        if taken.joined:
            telemetry.CASE_FINDINGS_JOINED.inc(taken.joined)
        for outcome in ("closed", "annotated", "unmatched"):
            if getattr(taken, outcome):
                telemetry.CASE_RETRACTIONS.labels(outcome).inc(getattr(taken, outcome))
        return taken

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
        return case_from_hash(raw) if raw else None

    async def many(self, ids: Sequence[int]) -> list[Case]:
        found: list[Case] = []
        for start in range(0, len(ids), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for case_id in ids[start : start + 500]:
                    pipe.hgetall(self.case_key(case_id))
                replies = await pipe.execute()
            found += [case_from_hash(raw) for raw in replies if raw]
        return found

    async def trail(self, case_id: int) -> list[dict[str, Any]]:
        """The whole audit trail, oldest first (the API reads it a page at a time: ``page``)."""
        return [
            orjson.loads(e)
            for e in cast(list[bytes], await self.redis.lrange(f"{self.case_key(case_id)}:audit", 0, -1))
        ]

    async def page(self, case_id: int, kind: str, newest: int, before: int | None = None) -> Page:
        """The newest ``newest`` entries of the case's ``kind`` list (``audit`` or ``comments``) before
        position ``before`` (None: the end), oldest first. The lists only grow, so a position is a
        stable cursor: the next page is ``before=page.before``."""
        key = f"{self.case_key(case_id)}:{kind}"
        total = int(await self.redis.llen(key))
        end = total if before is None else min(before, total)
        start = max(0, end - newest)
        raw = cast(list[bytes], await self.redis.lrange(key, start, end - 1)) if end > 0 else []
        return Page([orjson.loads(e) for e in raw], start if start > 0 else None, total)

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
        read-only call, whatever the number of closed cases (reading them all would cost
        time in proportion to them, every 30 s in each API process). The first call after an upgrade makes
        the tallies from the closed cases, once (``TALLY_BUILD_LUA``)."""
        if not await self.redis.exists(self.key("prec:built")):
            while int(await self._tally_build(args=[self.base, TALLY_BUILD_STEP])) >= 0:
                pass
            log.info("rule precision: tallies made from the cases closed before them")
        rows = []
        for raw in cast(list[list[Any]], await self._precision(args=[self.base])):
            rule, findings, cases, resolved, confirmed, dismissed = raw[:6]
            done = int(resolved) + int(raw[10])  # the resolved, and the dismissed as false positives
            rows.append(
                RulePrecision(
                    rule=rule.decode(),
                    cases=int(cases),
                    findings=int(findings),
                    resolved=int(resolved),
                    confirmed=int(confirmed),
                    dismissed=int(dismissed),
                    precision=round(int(confirmed) / done, 4) if done else None,
                    judged=done,
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
        """The answer kept for ``idem``; ``Refused`` (invalid) when the key came with another request."""
        raw = cast(bytes | None, await self.redis.get(self.idem_key(idem)))
        return self._replay(raw, idem) if raw is not None else None

    @staticmethod
    def _replay(raw: bytes, idem: Idempotency) -> Stored:
        record = orjson.loads(raw)
        if record["fingerprint"] != idem.fingerprint:
            raise Refused(Reason.INVALID, "Idempotency-Key was already used for a different request")
        return Stored(int(record["status"]), record["body"])

    async def remember(self, idem: Idempotency, body: Any) -> Stored:
        """Keep ``body`` as the answer to ``idem`` unless an answer is kept already (a concurrent
        retry's): the answer kept, which every retry then gives (``act`` keeps its own in the change's step)."""
        record = _record(idem, body)
        if await self.redis.set(self.idem_key(idem), record, ex=IDEMPOTENCY_SECONDS, nx=True):
            return Stored(idem.status, body, replayed=False)
        raw = cast(bytes | None, await self.redis.get(self.idem_key(idem)))
        return self._replay(raw, idem) if raw is not None else Stored(idem.status, body, replayed=False)

    async def act(
        self,
        case_id: int,
        actor: Actor,
        action: Action,
        assignable: frozenset[str],
        render: Callable[[Case], Any],
        idem: Idempotency | None = None,
    ) -> Any:
        """``act_once``'s body (the answer kept the first time, for a retry of ``idem``)."""
        return (await self.act_once(case_id, actor, action, assignable, render, idem)).body

    async def act_once(
        self,
        case_id: int,
        actor: Actor,
        action: Action,
        assignable: frozenset[str],
        render: Callable[[Case], Any],
        idem: Idempotency | None = None,
    ) -> Stored:
        """Apply ``action`` atomically (retrying if the case moved meanwhile) and answer ``render``
        of the new case, kept under ``idem`` in the same step; a retry of ``idem`` answers the
        body kept the first time (``replayed``) and changes nothing, whenever it comes: before the
        rules are asked, inside the script, and when the rules refuse (the case changed because of
        a concurrent retry that applied it). ``Refused`` when the rules refuse it."""
        try:
            return await self._act(case_id, actor, action, assignable, render, idem)
        except Refused:
            if idem is not None:  # a concurrent retry of the same key may have made the change
                prior = await self.stored(idem)
                if prior is not None:
                    return prior
            raise

    async def _act(
        self,
        case_id: int,
        actor: Actor,
        action: Action,
        assignable: frozenset[str],
        render: Callable[[Case], Any],
        idem: Idempotency | None,
    ) -> Stored:
        for _ in range(20):
            if idem is not None:
                prior = await self.stored(idem)
                if prior is not None:
                    return prior
            case = await self.get(case_id)
            if case is None:
                raise Refused(Reason.NOT_FOUND, f"no case {case_id}")
            change = decide(case, actor, action, self.clock_ms(), assignable)
            body = render(change.case)
            record = _record(idem, body) if idem is not None else b""
            commenting = change.comment is not None
            args: list[str | int | bytes] = [case.version, record, IDEMPOTENCY_SECONDS, change.slot, case.slot]
            args += [case.id, self.base, actor.name if commenting and actor.role == "analyst" else ""]
            args += [self.max_comments if commenting else 0, len(change.fields)]
            for name, value in change.fields.items():
                args += (name, value)
            args.append(len(change.audit))
            args += [orjson.dumps(entry) for entry in change.audit]
            for op, name in change.moves:
                args += (op, name)
            keys = [self.case_key(case_id), f"{self.case_key(case_id)}:audit", "", self.key("open")]
            keys[2] = self.idem_key(idem) if idem is not None else self.key("idem:-")
            keys.append(f"{self.case_key(case_id)}:comments")
            outcome, detail = cast(list[Any], await self._apply(keys=keys, args=args))
            said = detail.decode() if isinstance(detail, bytes) else str(detail)
            if outcome == 1:
                telemetry.CASE_ACTIONS.labels(type(action).__name__.lower()).inc()
                return Stored(idem.status if idem is not None else 0, body, replayed=False)
            if outcome == 2 and idem is not None:
                return self._replay(detail, idem)
            if outcome == 3:
                raise Refused(Reason.CONFLICT, f"case {said} is already open for this customer and category")
            if outcome == 4:
                raise Refused(Reason.CONFLICT, f"case {case_id} holds {said} comments, the most a case holds "
                                               "(FUNDFLOW_CASES_MAX_COMMENTS)")  # fmt: skip
            if outcome == 5:
                raise Refused(Reason.FORBIDDEN, f"case {case_id} is assigned to {said}; only they or a supervisor "
                                                "can comment on it")  # fmt: skip
            if outcome == 6:
                raise Refused(Reason.NOT_FOUND, f"no case {case_id}")
        raise Refused(Reason.BUSY, f"case {case_id} keeps changing; try again")


def _record(idem: Idempotency, body: Any) -> bytes:
    """What an idempotency key keeps (the fields in this order, as every version wrote them)."""
    return orjson.dumps({"fingerprint": idem.fingerprint, "status": idem.status, "body": body})


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

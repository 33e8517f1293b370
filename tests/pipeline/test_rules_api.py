"""Rule versions over HTTP (``streams.api.rules``) on a real Redis: the life of a version, four
eyes and roles on every endpoint (401 without a token, 403 for a role below the endpoint's and
for approving or rejecting one's own proposal), idempotency keys, and the shadow report's
numbers with the analysts' outcomes of the findings a version would drop."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from rules.config import RulesConfig
from rules.versions import fingerprint
from streams.api.rule_models import DiffOut, RuleAuditList, ShadowReport, TimelineList, VersionDetail, VersionList
from streams.api.rules import RULEBOOK
from streams.storage.keys import Keys
from tests.support.desk import PREFIX, Client, auth, finding, get, post, publish

CANDIDATE = "outflow:\n  large_external_amount: 80000\n"
OTHER = "collection:\n  min_amount: 8000\n"

# Every endpoint, and the lowest role it allows ("supervisor*": and not the version's author).
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("get", "/rules/versions", None, "viewer"),
    ("get", "/rules/versions/2", None, "viewer"),
    ("get", "/rules/diff?a=1&b=2", None, "viewer"),
    ("get", "/rules/timeline", None, "viewer"),
    ("get", "/rules/audit", None, "viewer"),
    ("get", "/rules/shadow/report?version=2", None, "viewer"),
    ("post", "/rules/versions", {"yaml": OTHER, "reason": "r"}, "analyst"),
    ("post", "/rules/versions/2/approve", {}, "supervisor*"),
    ("post", "/rules/versions/2/reject", {"reason": "no"}, "supervisor*"),
    ("post", "/rules/versions/2/promote", {"effective": None}, "supervisor"),
    ("post", "/rules/rollback", {}, "supervisor"),
    ("post", "/rules/shadow", {"version": 2}, "analyst"),
    ("post", "/rules/shadow/stop", {}, "analyst"),
]


async def bootstrapped(desk: Client) -> None:
    fp, text = fingerprint(RulesConfig())
    assert await desk.app[RULEBOOK].bootstrap(text, fp, 0)


async def test_a_version_proposed_approved_promoted_and_rolled_back_over_http(desk: Client) -> None:
    await bootstrapped(desk)
    made = VersionDetail.model_validate(
        await post(desk, "li", "/rules/versions", {"yaml": CANDIDATE, "reason": "fewer large-outflow alerts"})
    )
    assert (made.number, made.status, made.author, made.author_role, made.state) == (
        2, "proposed", "li.wei", "analyst", "never_in_force")  # fmt: skip
    assert made.diff == ["outflow.large_external_amount: 100000 -> 80000"] and made.yaml == CANDIDATE
    approved = VersionDetail.model_validate(await post(desk, "boss", "/rules/versions/2/approve", {}))
    assert (approved.status, approved.approver) == ("approved", "zhang")
    entry = await post(desk, "boss", "/rules/versions/2/promote", {"effective": "2000-01-01T00:00:00+08:00"})
    assert entry["version"] == 2 and entry["effective"] == "2000-01-01T00:00:00+08:00" and entry["by"] == "zhang"
    listed = VersionList.model_validate(await get(desk, "/rules/versions"))
    assert [(v.number, v.state) for v in listed.versions] == [(2, "in_force"), (1, "was_in_force")]
    assert listed.in_force == 2 and [e.version for e in listed.timeline] == [1, 2]
    diff = DiffOut.model_validate(await get(desk, "/rules/diff?a=1&b=2"))
    assert diff.lines == ["outflow.large_external_amount: 100000 -> 80000"]
    assert [row.path for row in diff.rows if row.changed] == ["outflow.large_external_amount"]
    assert len(diff.rows) > 50 and diff.b.yaml == CANDIDATE
    await post(desk, "plain", "/rules/rollback", {"effective": "2001-01-01T00:00:00Z"})
    timeline = TimelineList.model_validate(await get(desk, "/rules/timeline"))
    assert [e.version for e in timeline.timeline] == [1, 2, 1] and timeline.in_force == 1
    await post(desk, "li", "/rules/versions", {"yaml": OTHER, "reason": "r"})
    rejected = await post(desk, "boss", "/rules/versions/3/reject", {"reason": "too many collection alerts"})
    assert (rejected["status"], rejected["rejecter"], rejected["rejected_reason"]) == (
        "rejected", "zhang", "too many collection alerts")  # fmt: skip
    audit = RuleAuditList.model_validate(await get(desk, "/rules/audit"))
    assert [(a.action, a.actor, a.role, a.version) for a in reversed(audit.audit)] == [
        ("bootstrap", "deployment", "system", 1),
        ("propose", "li.wei", "analyst", 2),
        ("approve", "zhang", "supervisor", 2),
        ("promote", "zhang", "supervisor", 2),
        ("rollback", "token-5", "supervisor", 1),
        ("propose", "li.wei", "analyst", 3),
        ("reject", "zhang", "supervisor", 3),
    ]
    assert audit.audit[0].reason == "too many collection alerts"


async def test_every_endpoint_answers_401_without_a_token_and_403_below_its_role(desk: Client) -> None:
    await bootstrapped(desk)
    await post(desk, "boss", "/rules/versions", {"yaml": CANDIDATE, "reason": "the boss's own"})
    rank = {"viewer": 0, "analyst": 1, "supervisor": 2}
    people = {"viewer": "viewer", "analyst": "li", "supervisor": "boss"}
    for method, path, body, lowest in ENDPOINTS:
        data = orjson.dumps(body) if body is not None else None
        response = await desk.request(method, path, data=data)
        assert response.status == 401, (method, path)
        needed = lowest.rstrip("*")
        for role, who in people.items():
            if rank[role] >= rank[needed]:
                continue
            headers = {**auth(who), "Idempotency-Key": str(uuid.uuid4())}
            response = await desk.request(method, path, data=data, headers=headers)
            assert response.status == 403, (method, path, role, await response.text())
        if lowest.endswith("*"):  # four eyes: the boss proposed version 2
            response = await desk.request(method, path, data=data, headers=auth("boss"))
            assert response.status == 403, (method, path, await response.text())
            assert "four eyes" in (await response.json())["error"]
    versions = await get(desk, "/rules/versions")
    assert [(v["number"], v["status"]) for v in versions["versions"]] == [(2, "proposed"), (1, "approved")]
    actions = [a["action"] for a in (await get(desk, "/rules/audit"))["audit"]]
    assert actions == ["propose", "bootstrap"]  # nothing refused was written


async def test_refusals_and_malformed_requests(desk: Client) -> None:
    await bootstrapped(desk)
    bad = await post(desk, "li", "/rules/versions", {"yaml": "outflow:\n  streak_days: 1\n", "reason": "r"}, 422)
    assert bad["error"].startswith("proposal: line 2: outflow.streak_days")
    await post(desk, "li", "/rules/versions", {"yaml": CANDIDATE}, 400)
    await post(desk, "li", "/rules/versions", b"{", 400)
    await post(desk, "li", "/rules/versions", {"yaml": CANDIDATE, "reason": "r", "extra": 1}, 400)
    await post(desk, "boss", "/rules/versions/9/approve", {}, 404)
    await post(desk, "boss", "/rules/versions/x/approve", {}, 404)
    await get(desk, "/rules/versions/9", status=404)
    await get(desk, "/rules/diff?a=1", status=400)
    await get(desk, "/rules/diff?a=1&b=7", status=404)
    await get(desk, "/rules/audit?limit=0", status=400)
    await get(desk, "/rules/versions?x=1", status=400)
    await post(desk, "li", "/rules/versions", {"yaml": CANDIDATE, "reason": "r"})
    await post(desk, "boss", "/rules/versions/2/promote", {}, 409)  # not approved
    await post(desk, "boss", "/rules/versions/2/promote", {"effective": "2000-01-01T00:00:00"}, 400)  # no offset
    await post(desk, "li", "/rules/shadow", {"version": 1}, 409)  # in force
    await post(desk, "li", "/rules/shadow/stop", {}, 409)  # none
    await get(desk, "/rules/shadow/report", status=404)  # nothing ever shadowed
    await post(desk, "boss", "/rules/rollback", {}, 409)  # nothing to roll back to


async def test_an_idempotency_key_answers_a_retry_as_the_first_time(desk: Client) -> None:
    await bootstrapped(desk)
    body = {"yaml": CANDIDATE, "reason": "r"}
    first = await post(desk, "li", "/rules/versions", body, key="k1")
    headers = {**auth("li"), "Idempotency-Key": "k1"}
    response = await desk.post("/rules/versions", data=orjson.dumps(body), headers=headers)
    assert response.status == 200 and response.headers["Idempotent-Replayed"] == "true"
    assert await response.json() == first
    assert [v["number"] for v in (await get(desk, "/rules/versions"))["versions"]] == [2, 1]  # one proposal
    await post(desk, "li", "/rules/versions", {"yaml": OTHER, "reason": "r"}, 422, key="k1")  # another request
    refused = await post(desk, "li", "/rules/versions/2/approve", {}, 403, key="k2")
    assert refused == await post(desk, "li", "/rules/versions/2/approve", {}, 403, key="k2")


def records(version: int, run: str) -> list[dict[str, Any]]:
    """A shadow run's records: 3 shadow findings of large_external_outflow (one added), the live
    ones it drops (4 large_external_outflow of customers d1..d4, 1 fast_in_fast_out of d5), one
    changed, two suppressed pushes."""
    out: list[dict[str, Any]] = []

    def add(kind: str, customer: str, **more: Any) -> None:
        out.append({"id": f"{run}/r{len(out)}", "type": kind, "shadow_version": version, "run": run,
                    "customer_id": customer, "ts": f"1998-01-0{1 + len(out) % 9}T10:00:00+08:00", **more})  # fmt: skip

    for customer in ("k1", "k2", "a1"):
        add("finding", customer, finding={"id": f"S-{customer}", "rule": "large_external_outflow"})
    add("diff", "a1", rule="large_external_outflow", change="added", live_id=None, shadow_id="S-a1")
    add("diff", "k2", rule="large_external_outflow", change="changed", live_id="L-k2", shadow_id="S-k2")
    for customer in ("d1", "d2", "d3", "d4"):
        add("diff", customer, rule="large_external_outflow", change="removed", live_id=f"L-{customer}", shadow_id=None)
    add("diff", "d5", rule="fast_in_fast_out", change="removed", live_id="L-d5", shadow_id=None)
    add("suppressed", "k1", rule="push_collection", why="cap_day")
    add("suppressed", "k2", rule="push_collection", why="cap_day")
    return out


async def test_the_shadow_report_counts_and_joins_the_analysts_outcomes(desk: Client) -> None:
    await bootstrapped(desk)
    await post(desk, "li", "/rules/versions", {"yaml": CANDIDATE, "reason": "r"})
    await post(desk, "li", "/rules/shadow", {"version": 2})
    # the live findings the candidate drops, taken into cases as the workers publish them
    live = []
    for customer in ("d1", "d2", "d3", "d5"):  # d4's finding never reached the desk
        made = finding(customer, rule="fast_in_fast_out" if customer == "d5" else "large_external_outflow")
        made["id"] = f"L-{customer}"
        live.append(made)
    await publish(desk, *live)
    cases = {c["customer_id"]: c["id"] for c in (await get(desk, "/cases"))["cases"]}
    for customer, outcome in (("d1", "false_positive"), ("d2", "false_positive"), ("d5", "false_positive")):
        await post(desk, "boss", f"/cases/{cases[customer]}/transition", {"to": "dismissed", "outcome": outcome})
    await post(desk, "boss", f"/cases/{cases['d3']}/transition", {"to": "resolved", "outcome": "confirmed_outflow"})
    book = desk.app[RULEBOOK]
    shadow = await book.shadow()
    assert shadow is not None
    run = shadow.run
    assert run == f"2@{shadow.started_us + book.grace_us}"  # it judges from its start plus the grace
    earlier = records(2, "2@1")[:4]  # an earlier run of the same version: never added to this one
    await book.redis.hset(Keys(PREFIX).shadow_records(2), mapping={r["id"]: orjson.dumps(r)
                                                                   for r in records(2, run) + earlier})  # fmt: skip

    report = ShadowReport.model_validate(await get(desk, "/rules/shadow/report"))  # the running one
    assert report.running and report.version == 2 and report.records == len(records(2, run)) and report.run == run
    assert [(r.run, r.records) for r in report.runs] == [(run, len(records(2, run))), ("2@1", 4)]
    rows = {row.rule: row for row in report.rules}
    outflow = rows["large_external_outflow"]
    assert (outflow.shadow, outflow.added, outflow.removed, outflow.changed, outflow.live) == (3, 1, 4, 1, 6)
    assert (outflow.removed_false_positive, outflow.removed_confirmed) == (2, 1)
    fast = rows["fast_in_fast_out"]
    assert (fast.shadow, fast.removed, fast.live, fast.removed_false_positive) == (0, 1, 1, 1)
    assert report.removed_cases.model_dump() == {"removed": 5, "with_case": 4, "false_positive": 3, "confirmed": 1,
                                                 "other": 0, "open": 0, "no_case": 1}  # fmt: skip
    assert report.summary.startswith("version 2 drops 5 findings and adds 1; of the 5 dropped, 4 are in cases: "
                                     "3 dismissed as false positives, 1 confirmed")  # fmt: skip
    by_customer = {c.customer_id: (c.added, c.removed, c.changed) for c in report.customers}
    assert by_customer == {"a1": (1, 0, 0), "k2": (0, 0, 1), "d1": (0, 1, 0), "d2": (0, 1, 0), "d3": (0, 1, 0),
                           "d4": (0, 1, 0), "d5": (0, 1, 0)}  # fmt: skip
    assert [(s.rule, s.why, s.count) for s in report.suppressed] == [("push_collection", "cap_day", 2)]
    joined = {f.live_id: (f.case_id, f.outcome, f.verdict) for f in report.removed_findings}
    assert joined["L-d1"] == (cases["d1"], "false_positive", "false_positive")
    assert joined["L-d3"] == (cases["d3"], "confirmed_outflow", "confirmed")
    assert joined["L-d4"] == (None, None, "no_case")
    await post(desk, "li", "/rules/shadow/stop", {})
    again = ShadowReport.model_validate(await get(desk, "/rules/shadow/report"))  # the last one shadowed
    assert not again.running and again.rules == report.rules and again.run == run
    older = ShadowReport.model_validate(await get(desk, "/rules/shadow/report?version=2&run=2@1"))
    assert (older.records, older.running, [(r.rule, r.shadow, r.added) for r in older.rules]) == (
        4, False, [("large_external_outflow", 3, 1)])  # fmt: skip
    await get(desk, "/rules/shadow/report?version=2&run=2@7", status=404)
    assert (await get(desk, "/rules/shadow/report?version=1"))["records"] == 0

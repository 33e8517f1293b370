"""The analyst's desk on a real Redis through the real API: findings published to
the feed open or join cases, roles and transitions are enforced, every change
is idempotent and audited, and a fresh API over the same Redis sees it all."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from aiohttp.test_utils import TestClient, TestServer

from cases.people import token_fingerprint
from streams.api.case_models import BulkReply, CaseDetail, CaseList, CaseOut, RulesPrecision, WhoAmI
from streams.api.cases import CASES
from streams.api.server import create_api
from streams.local.servers import free_port
from streams.settings import Settings
from streams.storage.keys import Keys
from tests.support.api import seed
from tests.support.desk import PREFIX, SETTINGS, Client, auth, finding, get, post, publish


async def case_of(client: Client, customer: str, **filters: str) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in {"customer": customer, **filters}.items())
    listed = CaseList.model_validate(await get(client, f"/cases?{query}"))
    assert listed.total == 1, listed
    return listed.cases[0].model_dump()


async def test_a_second_finding_joins_the_open_case_of_its_customer_and_family(desk: Client) -> None:
    first, second = finding("C1"), finding("C1", rule="net_outflow_streak", severity="high", tier="I")
    await publish(desk, first, second, finding("C1", rule="low_collection", category="collection"))
    await publish(desk, finding("C1", rule="sweep_offer", category="sweep", kind="recommendation"))
    await publish(desk, finding("C1", rule="push_x", category="sweep", kind="push"), finding("C2"))
    await publish(desk, first)  # the feed repeats an entry (crash between publish and confirm): no change
    everything = CaseList.model_validate(await get(desk, "/cases"))
    assert everything.total == 4  # C1 outflow, C1 collection, C1 sweep recommendation, C2 outflow
    outflow = await case_of(desk, "C1", category="outflow_risk")
    assert outflow["count"] == 2 and outflow["rules"] == ["large_external_outflow", "net_outflow_streak"]
    assert outflow["severity"] == "high" and outflow["tier"] == "I" and outflow["priority"] == 1
    assert outflow["status"] == "open" and outflow["assignee"] is None
    for query, total in (("severity=high", 1), ("severity=medium", 0), ("tier=I", 1), ("tier=III", 0)):  # indexes moved
        listed = CaseList.model_validate(await get(desk, f"/cases?customer=C1&category=outflow_risk&{query}"))
        assert listed.total == total, query
    detail = CaseDetail.model_validate(await get(desk, f"/cases/{outflow['id']}"))
    assert [f.id for f in detail.findings] == [second["id"], first["id"]]
    assert [(e.actor, e.action) for e in detail.audit] == [("system", "opened"), ("system", "finding_added")]
    assert (await case_of(desk, "C1", type="recommendation"))["category"] == "sweep"
    # closed, the next finding of the family opens a new case
    await post(desk, "li", f"/cases/{outflow['id']}/transition", {"to": "dismissed", "outcome": "not_actionable",
                                                                 "note": "known customer"})  # fmt: skip
    await publish(desk, finding("C1"))
    listed = CaseList.model_validate(await get(desk, "/cases?customer=C1&category=outflow_risk"))
    assert [(c.status, c.count) for c in listed.cases] == [("open", 1), ("dismissed", 2)]


async def test_every_alert_of_the_real_pipeline_is_in_a_case(redis_url: str, desk: Client) -> None:
    processor = await seed(redis_url, SETTINGS)
    await processor.store.redis.aclose()
    while await desk.app[CASES].intake_feed():
        pass
    entries = cast(list[Any], await desk.app[CASES].redis.xrange(Keys(PREFIX).feed))
    published = {orjson.loads(fields[b"v"])["id"]: orjson.loads(fields[b"v"]) for _, fields in entries}
    alerts = [f for f in published.values() if f["type"] == "alert"]
    assert alerts
    cases = CaseList.model_validate(await get(desk, "/cases?type=alert&limit=1000"))
    assert sum(c.count for c in cases.cases) == len(alerts)
    assert len(cases.cases) == len({(f["customer_id"], f["category"]) for f in alerts})


async def test_whoami_names_the_caller_and_role(desk: Client) -> None:
    assert WhoAmI.model_validate(await get(desk, "/whoami", "li")) == WhoAmI(
        name="li.wei", role="analyst", assignable=["li.wei", "token-5", "wang", "zhang"]
    )
    assert (await get(desk, "/whoami", "viewer"))["role"] == "viewer"
    assert (await get(desk, "/whoami", "plain"))["name"] == "token-5"
    assert (await desk.get("/whoami")).status == 401


async def test_a_viewer_changes_nothing(desk: Client) -> None:
    await publish(desk, finding("C1"))
    case = await case_of(desk, "C1")
    before = await get(desk, f"/cases/{case['id']}")
    attempts = [
        (f"/cases/{case['id']}/assign", {"assignee": "kan"}),
        (f"/cases/{case['id']}/comment", {"text": "hello"}),
        (f"/cases/{case['id']}/transition", {"to": "in_progress"}),
        (f"/cases/{case['id']}/transition", {"to": "dismissed", "outcome": "duplicate"}),
        ("/cases/bulk/assign", {"ids": [case["id"]], "assignee": "li.wei"}),
        ("/cases/bulk/dismiss", {"ids": [case["id"]], "reason": "duplicate"}),
    ]
    for path, body in attempts:
        assert "viewer cannot" in (await post(desk, "viewer", path, body, 403))["error"], path
    for path, body in attempts[4:]:  # bulk actions are a supervisor's
        assert "analyst cannot" in (await post(desk, "li", path, body, 403))["error"], path
    assert await get(desk, f"/cases/{case['id']}") == before


async def test_an_analyst_works_a_case_and_the_trail_says_who_did_what(desk: Client) -> None:
    await publish(desk, finding("C1"), finding("C2", category="collection", rule="low_collection"))
    case, other = (await case_of(desk, "C1"))["id"], (await case_of(desk, "C2"))["id"]
    started = CaseOut.model_validate(await post(desk, "li", f"/cases/{case}/transition", {"to": "in_progress"}))
    assert started.status == "in_progress" and started.assignee == "li.wei" and started.first_action_at
    for path, body in ((f"/cases/{case}/comment", {"text": "mine now"}),
                       (f"/cases/{case}/transition", {"to": "resolved", "outcome": "false_positive"}),
                       (f"/cases/{case}/assign", {"assignee": "wang"})):  # fmt: skip
        assert "assigned to li.wei" in (await post(desk, "wang", path, body, 403))["error"]
    await post(desk, "li", f"/cases/{case}/comment", {"text": "called the customer"})
    assert "must be one of" in (await post(desk, "li", f"/cases/{case}/transition",
                                           {"to": "resolved", "outcome": "funds_left"}, 422))["error"]  # fmt: skip
    done = await post(desk, "li", f"/cases/{case}/transition", {"to": "resolved", "outcome": "retained_after_contact"})
    assert done["status"] == "resolved" and done["outcome"] == "retained_after_contact" and done["closed_at"]
    await post(desk, "li", f"/cases/{case}/comment", {"text": "late note"})  # notes after the fact are fine
    assert "supervisor" in (await post(desk, "li", f"/cases/{case}/transition",
                                       {"to": "open", "reason": "oops"}, 403))["error"]  # fmt: skip
    assert "reason" in (await post(desk, "boss", f"/cases/{case}/transition", {"to": "open"}, 422))["error"]
    await post(desk, "boss", f"/cases/{case}/transition", {"to": "open", "reason": "money moved after all"})
    await post(desk, "boss", f"/cases/{case}/assign", {"assignee": "wang"})
    detail = CaseDetail.model_validate(await get(desk, f"/cases/{case}"))
    trail = [(e.actor, e.action, e.field, e.from_, e.to) for e in detail.audit]
    assert trail == [
        ("system", "opened", None, None, None),
        ("li.wei", "assign", "assignee", None, "li.wei"),
        ("li.wei", "transition", "status", "open", "in_progress"),
        ("li.wei", "comment", None, None, None),
        ("li.wei", "transition", "status", "in_progress", "resolved"),
        ("li.wei", "comment", None, None, None),
        ("zhang", "transition", "status", "resolved", "open"),
        ("zhang", "assign", "assignee", "li.wei", "wang"),
    ]
    assert detail.audit[4].model_extra == {"role": "analyst", "outcome": "retained_after_contact", "note": None}
    assert detail.audit[6].model_extra is not None
    assert detail.audit[6].model_extra["reason"] == "money moved after all"
    assert detail.audit[6].model_extra["outcome_was"] == "retained_after_contact"
    assert [c.text for c in detail.comments] == ["called the customer", "late note"]
    assert detail.case.status == "open" and detail.case.outcome is None and detail.case.assignee == "wang"
    # an analyst takes an unassigned case for themselves, never for someone else
    assert "only to themselves" in (await post(desk, "li", f"/cases/{other}/assign", {"assignee": "wang"},
                                               403))["error"]  # fmt: skip
    assert (await post(desk, "li", f"/cases/{other}/assign", {"assignee": "li.wei"}))["assignee"] == "li.wei"
    # a plain (legacy) token is a supervisor
    assert (await post(desk, "plain", f"/cases/{other}/assign", {"assignee": None}))["assignee"] is None
    assert CaseDetail.model_validate(await get(desk, f"/cases/{other}")).audit[-1].actor == "token-5"


async def test_a_retried_click_changes_nothing_twice(desk: Client) -> None:
    await publish(desk, finding("C1"))
    case = (await case_of(desk, "C1"))["id"]
    path, key = f"/cases/{case}/comment", "click-1"
    headers = {**auth("li"), "Idempotency-Key": key}
    first = await desk.post(path, data=b'{"text": "called"}', headers=headers)
    again = await desk.post(path, data=b'{"text": "called"}', headers=headers)
    assert first.status == again.status == 200
    assert await first.json() == await again.json()
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    # the kept answer, as every version writes and replays it: fingerprint, the HTTP layer's status, body
    store = desk.app[CASES]
    kept = await store.redis.get(store.key(f"idem:{token_fingerprint(auth('li')['Authorization'][7:])}:click-1"))
    assert list(orjson.loads(kept)) == ["fingerprint", "status", "body"] and orjson.loads(kept)["status"] == 200
    assert orjson.loads(kept)["body"] == await first.json()
    assert "different request" in (await post(desk, "li", path, {"text": "other"}, 422, key=key))["error"]
    await post(desk, "wang", path, {"text": "me too"}, key=key)  # another caller's key is their own
    missing = await desk.post(path, data=b'{"text": "x"}', headers=auth("li"))
    assert missing.status == 400 and "Idempotency-Key" in (await missing.json())["error"]
    # the replay answers the first result even after the case moved on
    resolve = {"to": "resolved", "outcome": "false_positive"}
    done = await post(desk, "li", f"/cases/{case}/transition", resolve, key="resolve-1")
    assert await post(desk, "li", f"/cases/{case}/transition", resolve, key="resolve-1") == done
    await post(desk, "li", f"/cases/{case}/transition", resolve, 409)
    detail = CaseDetail.model_validate(await get(desk, f"/cases/{case}"))
    assert [(c.actor, c.text) for c in detail.comments] == [("li.wei", "called"), ("wang", "me too")]
    assert [e.action for e in detail.audit].count("transition") == 1


async def test_filters(desk: Client) -> None:
    await publish(
        desk,
        finding("C1", severity="high", tier="I"),
        finding("C2", severity="low", tier="IV"),
        finding("C3", rule="low_collection", category="collection"),
        finding("C4", rule="sweep_offer", category="sweep", kind="recommendation", severity="info", tier=None),
    )
    ids = {c: (await case_of(desk, c))["id"] for c in ("C1", "C2", "C3", "C4")}
    await post(desk, "li", f"/cases/{ids['C1']}/transition", {"to": "in_progress"})
    await post(desk, "boss", f"/cases/{ids['C2']}/assign", {"assignee": "wang"})

    async def customers(query: str) -> list[str]:
        listed = CaseList.model_validate(await get(desk, f"/cases?{query}"))
        assert listed.count == len(listed.cases) <= listed.total
        return sorted(c.customer_id for c in listed.cases)

    assert await customers("") == ["C1", "C2", "C3", "C4"]
    assert await customers("status=in_progress") == ["C1"]
    assert await customers("status=open") == ["C2", "C3", "C4"]
    assert await customers("assignee=wang") == ["C2"]
    assert await customers("assignee=-") == ["C3", "C4"]
    assert await customers("assignee=-&type=alert") == ["C3"]
    assert await customers("rule=low_collection") == ["C3"]
    assert await customers("category=outflow_risk&status=open") == ["C2"]
    assert await customers("severity=high") == ["C1"]
    assert await customers("tier=IV") == ["C2"]
    assert await customers("customer=C4") == ["C4"]
    assert await customers("type=recommendation") == ["C4"]
    assert await customers("max_age=1h") == ["C1", "C2", "C3", "C4"]
    assert await customers("min_age=1h") == []
    store = desk.app[CASES]
    real = store.clock_ms
    store.clock_ms = lambda: real() + 2 * 3_600_000
    assert await customers("min_age=90m&status=open") == ["C2", "C3", "C4"]
    assert await customers("max_age=1h") == []
    store.clock_ms = real
    page = CaseList.model_validate(await get(desk, "/cases?limit=2&offset=1"))
    assert [c.id for c in page.cases] == [ids["C3"], ids["C2"]] and page.total == 4  # newest first
    for query, says in (("status=closed", "status must be one of"), ("severity=urgent", "severity"),
                        ("tier=V", "tier"), ("min_age=3", "unit"), ("limit=0", "limit"), ("offset=-1", "offset"),
                        ("assignee=a%20b", "assignee"), ("colour=red", "unknown query parameter 'colour'"),
                        ("category=food", "category")):  # fmt: skip
        assert says in (await get(desk, f"/cases?{query}", status=400))["error"], query


async def test_bulk_assign_and_dismiss(desk: Client) -> None:
    await publish(desk, finding("C1"), finding("C2"), finding("C3"))
    ids = [(await case_of(desk, c))["id"] for c in ("C1", "C2", "C3")]
    await post(desk, "li", f"/cases/{ids[2]}/transition", {"to": "dismissed", "outcome": "duplicate"})
    body = {"ids": [ids[0], ids[1], ids[2], 999], "assignee": "li.wei"}
    reply = BulkReply.model_validate(await post(desk, "boss", "/cases/bulk/assign", body, key="bulk-1"))
    assert [(r.id, r.status) for r in reply.results] == [(ids[0], 200), (ids[1], 200), (ids[2], 409), (999, 404)]
    assert (reply.done, reply.refused) == (2, 2)
    assert await post(desk, "boss", "/cases/bulk/assign", body, key="bulk-1") == reply.model_dump()
    assert (await case_of(desk, "C1"))["assignee"] == "li.wei"
    dismissed = BulkReply.model_validate(await post(desk, "boss", "/cases/bulk/dismiss",
                                                    {"ids": ids[:2], "reason": "not_actionable",
                                                     "note": "campaign noise"}))  # fmt: skip
    assert dismissed.done == 2 and all(r.case and r.case.status == "dismissed" for r in dismissed.results)
    assert CaseList.model_validate(await get(desk, "/cases?status=dismissed")).total == 3
    detail = CaseDetail.model_validate(await get(desk, f"/cases/{ids[0]}"))
    assert [(e.actor, e.action) for e in detail.audit][-2:] == [("zhang", "assign"), ("zhang", "transition")]
    await post(desk, "boss", "/cases/bulk/dismiss", {"ids": [], "reason": "duplicate"}, 400)
    await post(desk, "boss", "/cases/bulk/dismiss", {"ids": list(range(1, 502)), "reason": "duplicate"}, 400)


async def test_bad_input_is_a_clear_4xx(desk: Client) -> None:
    await publish(desk, finding("C1"))
    case = (await case_of(desk, "C1"))["id"]
    cases = [
        (f"/cases/{case}/comment", b"not json", 400, "JSON"),
        (f"/cases/{case}/comment", b"[1]", 400, "body"),
        (f"/cases/{case}/comment", b"\xff\xfe", 400, "JSON"),
        (f"/cases/{case}/comment", b"", 400, "JSON"),
        (f"/cases/{case}/comment", {"text": None}, 400, "text"),
        (f"/cases/{case}/comment", {"text": "x" * 5000}, 400, "text"),
        (f"/cases/{case}/comment", {"text": ""}, 400, "text"),
        (f"/cases/{case}/comment", {"text": "x", "colour": 1}, 400, "colour"),
        (f"/cases/{case}/transition", {"to": "closed"}, 400, "to"),
        (f"/cases/{case}/transition", {"to": "resolved"}, 422, "outcome"),
        (f"/cases/{case}/transition", {"to": "resolved", "outcome": "other"}, 422, "note"),
        (f"/cases/{case}/assign", {"assignee": "nobody"}, 422, "unknown assignee"),
        (f"/cases/{case}/assign", {"assignee": "no body"}, 400, "assignee"),
        (f"/cases/{case}/assign", {}, 400, "assignee"),
        ("/cases/999/comment", {"text": "x"}, 404, "no case 999"),
        ("/cases/abc/comment", {"text": "x"}, 404, "no case 'abc'"),
        ("/cases/bulk/assign", {"ids": ["x"], "assignee": None}, 400, "ids"),
        ("/cases/\u00b2/comment", {"text": "x"}, 404, "no case"),  # str.isdigit() takes "²", int() does not
        ("/cases/bulk/dismiss", b'{"ids": [100000000000000000000], "reason": "duplicate"}', 400, "ids"),  # past 64 bits
        ("/cases/bulk/assign", {"ids": [2**63], "assignee": None}, 400, "ids"),
    ]
    for path, body, status, says in cases:
        assert says in (await post(desk, "boss", path, body, status))["error"], (path, body)
    assert "no case 999" in (await get(desk, "/cases/999", status=404))["error"]
    assert "no case" in (await get(desk, "/cases/-1", status=404))["error"]
    assert "no case" in (await get(desk, "/cases/\u00b2", status=404))["error"]
    for name in ("limit", "offset"):
        for text in ("\u00b2", "\u0663", "-1", "1.0", "99999999999999999999999"):
            assert name in (await get(desk, f"/cases?{name}={text}", status=400))["error"], (name, text)
    assert "min_age" in (await get(desk, "/cases?min_age=\u0663h", status=400))["error"]  # an Arabic-Indic 3


async def test_a_closed_case_is_not_reopened_over_an_open_one(desk: Client) -> None:
    await publish(desk, finding("C1"))
    old = (await case_of(desk, "C1"))["id"]
    await post(desk, "li", f"/cases/{old}/transition", {"to": "resolved", "outcome": "false_positive"})
    await publish(desk, finding("C1"))
    says = (await post(desk, "boss", f"/cases/{old}/transition", {"to": "open", "reason": "x"}, 409))["error"]
    assert "already open for this customer" in says
    assert (await get(desk, f"/cases/{old}"))["case"]["status"] == "resolved"


async def test_cases_survive_a_new_api_process(redis_url: str, desk: Client) -> None:
    await publish(desk, finding("C1"))
    case = (await case_of(desk, "C1"))["id"]
    await post(desk, "li", f"/cases/{case}/comment", {"text": "before the restart"}, key="k-1")
    before = await get(desk, f"/cases/{case}")
    again = create_api(SETTINGS, redis_url, f"127.0.0.1:{free_port()}")
    async with TestClient(TestServer(again)) as fresh:
        assert await get(fresh, f"/cases/{case}") == before
        replay = await post(fresh, "li", f"/cases/{case}/comment", {"text": "before the restart"}, key="k-1")
        assert replay["id"] == case
        await publish(fresh, finding("C1"))  # the intake resumes from its stored cursor: joins, once
        assert (await get(fresh, f"/cases/{case}"))["case"]["count"] == 2
        assert len((await get(fresh, f"/cases/{case}"))["comments"]) == 1


async def test_outcomes_become_rule_precision(desk: Client) -> None:
    await publish(desk, *(finding(f"C{i}") for i in range(4)), finding("C9", rule="low_collection",
                                                                       category="collection"))  # fmt: skip
    outcomes = ["confirmed_outflow", "retained_after_contact", "false_positive"]
    for i, outcome in enumerate(outcomes):
        case = (await case_of(desk, f"C{i}"))["id"]
        await post(desk, "li", f"/cases/{case}/transition", {"to": "resolved", "outcome": outcome})
    dismissal = {"to": "dismissed", "outcome": "duplicate"}
    await post(desk, "li", f"/cases/{(await case_of(desk, 'C3'))['id']}/transition", dismissal)
    report = RulesPrecision.model_validate(await get(desk, "/rules/precision"))
    rows = {r.rule: r for r in report.rules}
    big = rows["large_external_outflow"]
    assert (big.cases, big.findings, big.resolved, big.confirmed, big.dismissed) == (4, 4, 3, 2, 1)
    assert big.precision == 0.6667 and big.median_first_action_seconds is not None
    assert big.median_resolution_seconds is not None and big.median_resolution_seconds >= 0
    assert rows["low_collection"].precision is None and rows["low_collection"].cases == 1
    assert report.cases_by_status == {"open": 1, "in_progress": 0, "resolved": 3, "dismissed": 1}
    assert "retained_after_contact" in report.confirming and "false_positive" not in report.confirming
    metrics = (await (await desk.get("/metrics", headers=auth("viewer"))).text()).splitlines()
    assert 'fundflow_rule_precision{rule="large_external_outflow"} 0.6667' in metrics
    assert 'fundflow_rule_resolved_cases{rule="large_external_outflow"} 3.0' in metrics
    assert not [line for line in metrics if "fundflow_rule" in line and "C0" in line]


async def test_cases_work_on_redis_cluster(cluster_url: str) -> None:
    """Every case script keeps to the one slot of ``{cases}``: a cluster refuses anything else."""
    settings = Settings(**{**SETTINGS.model_dump(), "redis_cluster": True})
    app = create_api(settings, cluster_url, f"127.0.0.1:{free_port()}")
    async with TestClient(TestServer(app)) as client:
        await publish(client, finding("K1"), finding("K1", rule="net_outflow_streak"), finding("K2"))
        case = await case_of(client, "K1", status="open")
        assert case["count"] == 2
        await post(client, "li", f"/cases/{case['id']}/comment", {"text": "on a cluster"}, key="c-1")
        await post(client, "li", f"/cases/{case['id']}/comment", {"text": "on a cluster"}, key="c-1")
        await post(client, "li", f"/cases/{case['id']}/transition", {"to": "resolved", "outcome": "confirmed_outflow"})
        other = (await case_of(client, "K2"))["id"]
        await post(client, "boss", "/cases/bulk/dismiss", {"ids": [other], "reason": "duplicate"})
        detail = CaseDetail.model_validate(await get(client, f"/cases/{case['id']}"))
        assert [c.text for c in detail.comments] == ["on a cluster"] and detail.case.status == "resolved"
        report = RulesPrecision.model_validate(await get(client, "/rules/precision"))
        assert {r.rule: r.precision for r in report.rules}["large_external_outflow"] == 1.0


async def test_concurrent_intakes_and_clicks_apply_once(desk: Client) -> None:
    """Several API replicas taking the same feed, two analysts grabbing the same case at once."""
    store = desk.app[CASES]
    findings = [finding(f"C{i % 7}", rule=f"rule_{i % 3}") for i in range(60)]
    await asyncio.gather(*(store.intake(findings) for _ in range(5)))
    listed = CaseList.model_validate(await get(desk, "/cases?limit=100"))
    assert listed.total == 7 and sum(c.count for c in listed.cases) == 60
    case = listed.cases[0].id
    takes = await asyncio.gather(
        *(
            desk.post(f"/cases/{case}/assign", json={"assignee": name}, headers={**auth(who), "Idempotency-Key": who})
            for who, name in (("li", "li.wei"), ("wang", "wang"))
        )
    )
    assert sorted(r.status for r in takes) == [200, 403]
    detail = CaseDetail.model_validate(await get(desk, f"/cases/{case}"))
    assert [e.action for e in detail.audit].count("assign") == 1
    comments = [{"text": f"note {i}"} for i in range(10)]
    await asyncio.gather(*(post(desk, "boss", f"/cases/{case}/comment", c, key=f"same-{i % 2}-{c['text'][-1]}")
                           for i, c in enumerate(comments * 2)))  # fmt: skip
    detail = CaseDetail.model_validate(await get(desk, f"/cases/{case}"))
    assert sorted(c.text for c in detail.comments) == sorted(c["text"] for c in comments)

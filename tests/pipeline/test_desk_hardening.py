"""Issue 30, the desk's rows: identities registered, not assumed; one key, one answer under
concurrency; bounded reads; comments that never conflict; every error JSON; strict bodies;
dismissals with a reason. Real API (in process), real Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from cases import people
from cases.people import token_fingerprint
from streams.api.case_models import CaseDetail, RulesPrecision
from streams.api.cases import CASES
from streams.api.roles import principals
from streams.api.server import create_api
from streams.clients import connect
from streams.errors import ConfigError
from streams.local.servers import free_port
from streams.settings import ApiToken, Settings
from streams.storage.keys import Keys
from tests.support.desk import PEOPLE, PREFIX, SETTINGS, Client, auth, finding, get, post, publish


async def _cases(desk: Client, *customers: str) -> list[int]:
    await publish(desk, *(finding(c) for c in customers))
    found = (await get(desk, "/cases?limit=1000"))["cases"]
    return sorted(c["id"] for c in found if c["customer_id"] in customers)


async def _raw_post(desk: Client, who: str, path: str, body: bytes, key: str) -> tuple[int, bytes, str | None]:
    response = await desk.post(path, data=body, headers={**auth(who), "Idempotency-Key": key})
    return response.status, await response.read(), response.headers.get("Idempotent-Replayed")


# ---- one key, one answer -------------------------------------------------------------


async def test_twenty_concurrent_retries_of_a_bulk_assign_answer_the_same_bytes(desk: Client) -> None:
    ids = await _cases(desk, *(f"B{i}" for i in range(5)))
    body = orjson.dumps({"ids": ids, "assignee": "wang"})
    answers = await asyncio.gather(*(_raw_post(desk, "boss", "/cases/bulk/assign", body, "K") for _ in range(20)))
    assert {(status, raw) for status, raw, _ in answers} == {answers[0][:2]}  # byte for byte
    reply = orjson.loads(answers[0][1])
    assert reply["done"] == 5 and {r["status"] for r in reply["results"]} == {200}
    assert sorted(replayed or "" for *_, replayed in answers) == [""] + ["true"] * 19
    trail = (await get(desk, f"/cases/{ids[0]}"))["audit"]
    assert [e["action"] for e in trail].count("assign") == 1


async def test_twenty_concurrent_retries_of_one_change_answer_the_same_bytes(desk: Client) -> None:
    (case,) = await _cases(desk, "R1")
    body = orjson.dumps({"to": "dismissed", "outcome": "duplicate"})
    path = f"/cases/{case}/transition"
    answers = await asyncio.gather(*(_raw_post(desk, "li", path, body, "once") for _ in range(20)))
    assert {(status, raw) for status, raw, _ in answers} == {answers[0][:2]} and answers[0][0] == 200
    assert sorted(replayed or "" for *_, replayed in answers) == [""] + ["true"] * 19


async def test_a_bulk_items_key_is_no_key_a_client_can_send(desk: Client) -> None:
    a, b = await _cases(desk, "D1", "D2")
    await post(desk, "boss", "/cases/bulk/assign", {"ids": [a], "assignee": "wang"}, key="K")
    # the client's own K#<id> is a key of its own, not the bulk item's: it changes the case
    mine = await post(desk, "boss", f"/cases/{a}/assign", {"assignee": "li.wei"}, key=f"K#{a}")
    assert mine["assignee"] == "li.wei"
    await post(desk, "boss", f"/cases/{b}/assign", {"assignee": "wang"}, 400, key=f"K #{b}")  # no space in a key


async def test_a_key_belongs_to_a_token_not_to_the_name_it_claims(redis_url: str) -> None:
    twin = ApiToken(token=SecretStr("t-li-twin-0123456789"), role="analyst", name="li.wei")
    settings = SETTINGS.model_copy(update={"api_tokens": (*SETTINGS.api_tokens, twin)})
    async with TestClient(TestServer(create_api(settings, redis_url, f"127.0.0.1:{free_port()}"))) as desk:
        (case,) = await _cases(desk, "S1")
        await post(desk, "li", f"/cases/{case}/comment", {"text": "mine"}, key="k1")
        other = {"Authorization": "Bearer t-li-twin-0123456789", "Idempotency-Key": "k1"}
        response = await desk.post(f"/cases/{case}/comment", data=b'{"text": "mine"}', headers=other)
        assert response.status == 200 and "Idempotent-Replayed" not in response.headers  # its own change
        assert [c["text"] for c in (await get(desk, f"/cases/{case}"))["comments"]] == ["mine", "mine"]


# ---- identities are registered -----------------------------------------------------------


async def test_tokens_claiming_a_registered_name_with_another_token_or_role_are_refused(redis_url: str) -> None:
    redis = connect(redis_url)
    base = Keys(PREFIX).cases

    async def check(settings: Settings) -> bool:
        return await people.check(redis, base, [(p.token, p) for _, p in principals(settings)])

    try:
        assert await check(SETTINGS) is True  # the first start registers its people (the bootstrap)
        assert await check(SETTINGS) is False  # and starts again as they are
        impostor = SecretStr("impostor-0123456789")
        for name, role, why in (("zhang", "analyst", "registered as supervisor"), ("li.wei", "analyst", "not one of"),
                                ("newcomer", "analyst", "who is not registered")):  # fmt: skip
            token = ApiToken(token=impostor, role=role, name=name)
            with pytest.raises(ConfigError, match=f"a token claims {name}.*{why}"):
                await check(Settings(key_prefix=PREFIX, api_tokens=(token,)))
        with pytest.raises(ConfigError, match="a token claims token-5, but it is not one of"):  # another plain token
            await check(Settings(key_prefix=PREFIX, api_tokens=(*SETTINGS.api_tokens[:4], impostor)))
        await people.add(redis, base, "newcomer", "analyst", token_fingerprint("impostor-0123456789"), by="zhang")
        with pytest.raises(ConfigError, match="registered as analyst, not supervisor"):
            await people.add(redis, base, "newcomer", "supervisor", token_fingerprint("x" * 16), by="zhang")
        with pytest.raises(ConfigError, match="not a name a person may have"):
            await people.add(redis, base, "system", "analyst", token_fingerprint("x" * 16), by="zhang")
        newcomer = ApiToken(token=impostor, role="analyst", name="newcomer")
        assert await check(Settings(key_prefix=PREFIX, api_tokens=(newcomer,))) is False  # registered now
        log = [orjson.loads(e) for e in await redis.lrange(f"{base}:people:log", 0, -1)]
        assert log[0]["by_system"] is True and log[-1]["by"] == "zhang" and log[-1]["name"] == "newcomer"
    finally:
        await redis.aclose()


async def test_the_intakes_entries_are_marked_by_the_product(desk: Client) -> None:
    (case,) = await _cases(desk, "M1")
    await post(desk, "li", f"/cases/{case}/comment", {"text": "system"})
    trail = (await get(desk, f"/cases/{case}"))["audit"]
    assert [(e["actor"], e.get("by_system")) for e in trail] == [("system", True), ("li.wei", None)]


# ---- bounded reads, comments without conflicts ----------------------------------------------


async def test_ten_thousand_comments_read_a_page_at_a_time(desk: Client) -> None:
    (case,) = await _cases(desk, "P1")
    store = desk.app[CASES]
    key = store.case_key(case)
    async with store.redis.pipeline(transaction=False) as pipe:
        for i in range(10_000):
            entry = orjson.dumps({"at": 1_700_000_000_000 + i, "actor": "li.wei", "role": "analyst",
                                  "action": "comment", "text": f"c{i} " + "x" * 200})  # fmt: skip
            pipe.rpush(f"{key}:audit", entry)
            pipe.rpush(f"{key}:comments", entry)
        pipe.hset(key, "comments", 10_000)
        await pipe.execute()
    response = await desk.get(f"/cases/{case}", headers=auth("viewer"))
    raw = await response.read()
    assert response.status == 200 and len(raw) < 64_000, len(raw)
    detail = CaseDetail.model_validate_json(raw)
    assert [c.text[:6] for c in detail.comments][-1] == "c9999 " and len(detail.comments) == 50
    assert detail.comments_page.total == 10_000 and detail.comments_page.before == 9_950
    older = await get(desk, f"/cases/{case}?comments_before=9950&audit_before=10&limit=10")
    assert older["comments"][-1]["text"].startswith("c9949 ") and older["comments_page"]["before"] == 9_940
    assert older["audit_page"]["before"] is None and len(older["audit"]) == 10
    await get(desk, f"/cases/{case}?limit=51", status=400)
    refused = await post(desk, "li", f"/cases/{case}/comment", {"text": "one more"}, 409)
    assert "holds 10000 comments, the most a case holds" in refused["error"]


async def test_two_hundred_concurrent_comments_and_a_transition_all_succeed(desk: Client) -> None:
    """Comments append without the case's compare-and-set, so 200 at once, with a state change
    among them, are all accepted: none is refused as a conflict."""
    (case,) = await _cases(desk, "N1")

    async def comment(i: int) -> tuple[int, bytes]:
        response = await desk.post(f"/cases/{case}/comment", data=orjson.dumps({"text": f"n{i}"}),
                                   headers={**auth("boss"), "Idempotency-Key": str(uuid.uuid4())})  # fmt: skip
        return response.status, await response.read()

    transition = post(desk, "boss", f"/cases/{case}/transition", {"to": "in_progress"})
    *answers, _ = await asyncio.gather(*(comment(i) for i in range(200)), transition)
    assert [answer for answer in answers if answer[0] != 200] == []
    detail = await get(desk, f"/cases/{case}")
    assert detail["comments_page"]["total"] == 200 and detail["case"]["status"] == "in_progress"


# ---- smaller ---------------------------------------------------------------------------------


async def test_every_error_body_is_json(desk: Client) -> None:
    (case,) = await _cases(desk, "E1")
    big = await desk.post(f"/cases/{case}/comment", data=b'{"text": "' + b"x" * 70_000 + b'"}',
                          headers={**auth("li"), "Idempotency-Key": "big"})  # fmt: skip
    assert big.status == 413 and "error" in await big.json()
    wrong = await desk.put(f"/cases/{case}/comment", headers=auth("li"))
    assert wrong.status == 405 and "POST" in (await wrong.json())["error"] and "POST" in wrong.headers["Allow"]
    missing = await desk.get("/no/such/path", headers=auth("li"))
    assert missing.status == 404 and "error" in await missing.json()


@pytest.mark.parametrize("ids", [["1"], [True], [1.0]])
async def test_an_id_is_an_integer(desk: Client, ids: list[Any]) -> None:
    await _cases(desk, "I1")
    await post(desk, "boss", "/cases/bulk/assign", {"ids": ids, "assignee": "wang"}, 400)


async def test_a_dismissal_gives_a_reason_and_only_a_false_positive_counts(desk: Client) -> None:
    a, b, c = await _cases(desk, "F1", "F2", "F3")
    refused = await post(desk, "li", f"/cases/{a}/transition", {"to": "dismissed"}, 422)
    assert "a dismissal needs a reason" in refused["error"]
    await post(desk, "li", f"/cases/{a}/transition", {"to": "dismissed", "outcome": "duplicate"})
    await post(desk, "li", f"/cases/{b}/transition", {"to": "dismissed", "outcome": "false_positive"})
    await post(desk, "li", f"/cases/{c}/transition", {"to": "resolved", "outcome": "confirmed_outflow"})
    rows = {r.rule: r for r in RulesPrecision.model_validate(await get(desk, "/rules/precision")).rules}
    row = rows["large_external_outflow"]
    assert (row.resolved, row.dismissed, row.judged, row.precision) == (1, 2, 2, 0.5)
    viewer = await post(desk, "viewer", f"/cases/{a}/comment", {"text": "x"}, 403)
    assert viewer["error"].startswith("a viewer cannot")
    other = await post(desk, "wang", f"/cases/{c}/transition", {"to": "open", "reason": "x"}, 403)
    assert "supervisor" in other["error"]
    assert PEOPLE["li"][0]  # the analyst's refusal reads "an analyst"
    analyst = await post(desk, "li", "/cases/bulk/assign", {"ids": [a], "assignee": None}, 403)
    assert analyst["error"].startswith("an analyst cannot")


async def test_a_refusal_is_the_keys_answer_even_after_the_case_changed(desk: Client) -> None:
    """The first outcome answers every retry of a key, a refusal too: a retry that comes after the
    case changed (so that the same request would now go through) gets the refusal again."""
    (case,) = await _cases(desk, "RF1")
    await post(desk, "boss", f"/cases/{case}/assign", {"assignee": "wang"})
    body = orjson.dumps({"to": "dismissed", "outcome": "duplicate"})
    path = f"/cases/{case}/transition"
    first = await _raw_post(desk, "li", path, body, "k1")  # wang's case: li may not
    assert first[0] == 403 and b"error" in first[1] and first[2] is None
    await post(desk, "boss", f"/cases/{case}/assign", {"assignee": "li.wei"})  # now li could...
    again = await _raw_post(desk, "li", path, body, "k1")
    assert again[:2] == first[:2] and again[2] == "true"  # ...but the key's first answer stands
    assert (await _raw_post(desk, "li", path, body, "k2"))[0] == 200  # a new key is a new request

"""``GET /board`` on a real Redis through the real API: who may read it, its parameters,
its shape (the OpenAPI schema), the cases part (status and age, from the indexes) and
the tiers part (ZCOUNT between the cut points, moves this week)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from cases.model import AGE_BUCKETS, HOUR_MS
from rules.contribution import tier_of
from streams.api.board import tiles
from streams.api.board_models import Board
from streams.api.cases import CASES
from streams.api.server import create_api
from streams.local.servers import free_port
from streams.storage.keys import Keys
from streams.tiers import all_contributions, read_cuts
from tests.support.api import seed
from tests.support.desk import PREFIX, SETTINGS, finding, get, post, publish

Client = TestClient[Any, Any]
NOW_MS = 1_900_000_000_000


async def test_every_role_reads_the_board_and_nobody_without_a_token(desk: Client) -> None:
    for who in ("viewer", "li", "boss", "plain"):
        Board.model_validate(await get(desk, "/board", who))
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = await desk.get("/board", headers=headers)
        assert response.status == 401
        assert (await response.json()) == {"error": "missing or wrong bearer token"}


async def test_bad_parameters_are_a_400_that_says_what_is_accepted(desk: Client) -> None:
    for query, says in (
        ("day=1998-13-01", "day must be a calendar day YYYY-MM-DD"),
        ("day=1998-02-30", "day must be a calendar day"),
        ("day=19981231", "day must be a calendar day"),
        ("day=1969-12-31", "years 1970..2100"),
        ("day=１９９８-01-01", "day must be"),
        ("top=101", "top must be an integer 0..100"),
        ("top=-1", "top must be an integer 0..100"),
        ("top=x", "top must be"),
        ("dya=1998-12-31", "unknown query parameter; accepted: day, top"),
    ):
        body = await get(desk, f"/board?{query}", status=400)
        assert says in body["error"], query
        assert "dya" not in body["error"] and "x" not in body["error"].split(";")[0]  # never echoed
    Board.model_validate(await get(desk, "/board?day=1998-12-31&top=0"))


async def test_cases_by_status_and_open_cases_by_age(desk: Client) -> None:
    store = desk.app[CASES]
    ages_h = {"C-new": 0.5, "C-2h": 2, "C-10h": 10, "C-2d": 48, "C-5d": 120, "C-10d": 240, "C-30d": 720}
    for customer, hours in sorted(ages_h.items(), key=lambda kv: -kv[1]):  # opened oldest first, as in life
        store.clock_ms = lambda hours=hours: int(NOW_MS - hours * HOUR_MS)
        await publish(desk, finding(customer))
    store.clock_ms = lambda: NOW_MS
    board = Board.model_validate(await get(desk, "/board"))
    assert board.cases.by_status == {"open": 7, "in_progress": 0, "resolved": 0, "dismissed": 0}
    assert board.display == tiles(board.model_dump()["flows"], SETTINGS.currency)  # the tiles for people
    assert [a.bucket for a in board.cases.open_by_age] == [name for name, _ in AGE_BUCKETS]
    assert [a.count for a in board.cases.open_by_age] == [1, 1, 1, 1, 1, 2]

    def case_id(customer: str) -> int:
        return next(i for i, c in enumerate(sorted(ages_h, key=lambda k: -ages_h[k]), start=1) if c == customer)

    # a viewer changes nothing (403) and the board says so
    await post(desk, "viewer", f"/cases/{case_id('C-2h')}/transition", {"to": "in_progress"}, status=403)
    assert (await get(desk, "/board"))["cases"] == board.model_dump()["cases"]
    # in progress is still open work; resolved and dismissed leave the age buckets
    await post(desk, "li", f"/cases/{case_id('C-2h')}/transition", {"to": "in_progress"})
    dismissal = {"to": "dismissed", "outcome": "not_actionable", "note": "known"}
    await post(desk, "li", f"/cases/{case_id('C-10d')}/transition", dismissal)
    await post(desk, "li", f"/cases/{case_id('C-new')}/transition", {"to": "resolved", "outcome": "false_positive"})
    after = Board.model_validate(await get(desk, "/board"))
    assert after.cases.by_status == {"open": 4, "in_progress": 1, "resolved": 1, "dismissed": 1}
    assert [a.count for a in after.cases.open_by_age] == [0, 1, 1, 1, 1, 1]
    # three hours later: a case moves to the next bucket when its age crosses an edge
    store.clock_ms = lambda: NOW_MS + 3 * HOUR_MS
    later = Board.model_validate(await get(desk, "/board"))
    assert [a.count for a in later.cases.open_by_age] == [0, 0, 2, 1, 1, 1]  # 2h -> 5h joins 10h -> 13h


async def test_cases_opened_together_are_aged_together(desk: Client) -> None:
    """One intake opens many cases at one time; ``ix:opened`` orders ties as text ("9" > "10"),
    which must not split them across an age edge."""
    store = desk.app[CASES]
    store.clock_ms = lambda: NOW_MS - 2 * HOUR_MS
    await publish(desk, *(finding(f"OLD{n}") for n in range(12)))  # cases 1..12, one time
    store.clock_ms = lambda: NOW_MS - HOUR_MS // 6
    await publish(desk, finding("NEW1"), finding("NEW2"))  # cases 13, 14
    store.clock_ms = lambda: NOW_MS
    board = Board.model_validate(await get(desk, "/board"))
    assert [a.count for a in board.cases.open_by_age] == [2, 12, 0, 0, 0, 0]


async def test_the_tier_part_counts_between_the_cut_points(redis_url: str) -> None:
    processor = await seed(redis_url, SETTINGS)  # the real pipeline's state, then a tier rebuild
    try:
        app = create_api(SETTINGS, redis_url, f"127.0.0.1:{free_port()}")
        async with TestClient(TestServer(app)) as client:
            board = Board.model_validate(await get(client, "/board"))
            keys = Keys(PREFIX)
            cuts, info = await read_cuts(processor.store.redis, keys)
            values = await all_contributions(processor.store.redis, keys)
            expected = {"I": 0, "II": 0, "III": 0, "IV": 0}
            for value in values.values():
                expected[tier_of(value, cuts)] += 1
            assert board.tiers.distribution == expected and sum(expected.values()) == len(values) > 4
            assert board.tiers.moved_this_week == 0 and board.tiers.week is not None
            assert board.tiers.refreshed_at == info["refreshed_at"]
            # the workers' aggregates come through as streams.board reads them
            assert board.day is not None and board.latest is not None and board.latest.startswith(board.day)
            assert Decimal(board.flows.total.inflow) > 0 and board.findings.last_30d
            assert len(board.findings.by_day) == 30 and board.findings.by_day[-1].day == board.day
            assert (await get(client, "/board?top=0"))["top_net_outflow"] == []
            other = Board.model_validate(await get(client, "/board?day=1971-01-01"))
            assert other.day == "1971-01-01" and other.flows.total.inflow == "0.00"
            # a move recorded in the week of the refresh shows up
            for cid in ("C0001", "C0002"):
                await processor.store.redis.sadd(keys.tier_shard_of(cid, f"moved:{board.tiers.week}"), cid)
            assert (await get(client, "/board", "li"))["tiers"]["moved_this_week"] == 2
            document = await get(client, "/openapi.json")
            assert "/board" in document["paths"] and "Board" in document["components"]["schemas"]
    finally:
        await processor.store.redis.aclose()


async def test_an_empty_bank_has_an_empty_board(desk: Client) -> None:
    board = Board.model_validate(await get(desk, "/board"))
    assert board.cases.by_status == dict.fromkeys(("open", "in_progress", "resolved", "dismissed"), 0)
    assert all(a.count == 0 for a in board.cases.open_by_age)
    assert board.tiers.distribution == {"I": 0, "II": 0, "III": 0, "IV": 0}
    assert board.tiers.week is None and board.tiers.moved_this_week == 0

"""The 看板 in a real browser (headless Chromium, Playwright) against the real API on a
real port and a real Redis holding what the real pipeline made of the shipped Berka
data: every chart draws, and a case an analyst resolves moves the board's counts at
its next refresh. ``FUNDFLOW_UPDATE_SCREENSHOT=1`` refreshes ``docs/board.png``.

Berka records dates only (the converter puts each day's transactions at 09:00 in their
balance order); here each customer's day is moved to one hour between 08:00 and 17:00
(deterministically, order kept) so that the hourly chart shows a business day.
"""

from __future__ import annotations

import datetime as dt
import time
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from cases.model import HOUR_MS
from cases.store import CaseFilter, CaseStore
from streams.api.cases import CASES
from streams.api.server import create_api
from streams.clients import connect
from streams.deadletter import RawRecord
from streams.pipeline import BatchProcessor
from streams.rulestep import build_step
from streams.settings import ApiToken, Settings, rates, state_config, thresholds
from streams.storage.keys import Keys
from streams.storage.snapshot import load_all
from streams.storage.store import StateStore
from streams.tiers import TierBook, rebuild
from streams.tools.berka import berka_lines
from streams.topics import LOANS, TRANSACTIONS
from tests.support.browser import CHROMIUM, FLAGS, screenshot, serve
from tests.support.fakes import Sink

pytestmark = pytest.mark.browser

SETTINGS = Settings(
    key_prefix="board",
    bank_tz="Europe/Prague",  # where the Berka bank was
    api_tokens=(
        ApiToken(token=SecretStr("t-boss-0123456789"), role="supervisor", name="zhang"),
        ApiToken(token=SecretStr("t-li-0123456789ab"), role="analyst", name="li.wei"),
        ApiToken(token=SecretStr("t-view-0123456789"), role="viewer", name="kan"),
    ),
)
LAST_DAY = "1994-03-11"  # a busy ordinary Friday of the shipped slice (month ends are mostly interest and fees)
WEEK_STARTS = "1994-03-07"  # tiers are rebuilt before it, refreshed after: the moves of that week


def berka_events() -> list[dict[str, Any]]:
    """The shipped Berka events up to ``LAST_DAY``, each customer's day at one business hour."""
    events = []
    for line in berka_lines(None, SETTINGS.zone):
        event = orjson.loads(line)
        day = event.get("ts", "")[:10]
        if day > LAST_DAY:
            continue
        if "txn_id" in event:
            hour = 8 + zlib.crc32(f"{event['customer_id']}|{day}".encode()) % 10
            ts = dt.datetime.fromisoformat(event["ts"])
            event["ts"] = ts.replace(hour=hour).isoformat()
        events.append(event)
    return events


def raw(events: list[dict[str, Any]], first: int) -> list[RawRecord]:
    return [
        RawRecord(
            LOANS if "loan_id" in e else TRANSACTIONS, 0, first + i, str(e["customer_id"]).encode(), orjson.dumps(e), 0
        )
        for i, e in enumerate(events)
    ]


async def load_berka(redis_url: str, settings: Settings) -> None:
    """The real pipeline over the slice (rules on), tiers rebuilt before the last week and
    refreshed after it, as a worker does."""
    store = StateStore(connect(redis_url), Keys(settings.key_prefix))
    try:
        processor = BatchProcessor(store, build_step(settings), Sink(), zone=settings.zone)
        events = berka_events()
        before = [e for e in events if e["ts"][:10] < WEEK_STARTS]
        week = [e for e in events if e["ts"][:10] >= WEEK_STARTS]
        for start in range(0, len(before), 500):
            await processor.process(raw(before[start : start + 500], start))
        book = TierBook(store.redis, store.keys, state_config(settings), thresholds(settings), rates(settings))
        await rebuild(store.redis, store.keys, await load_all(store), book)
        for start in range(0, len(week), 500):
            await processor.process(raw(week[start : start + 500], len(before) + start))
        book.changed(await load_all(store))
        await book.refresh()
    finally:
        await store.redis.aclose()


async def take_cases(redis_url: str) -> None:
    """The findings into cases, opened over the past ten days (oldest first) as an API's
    intake running all along would have (before the API starts: its own intake then finds
    nothing left)."""
    now = int(time.time() * 1000)
    opened_at = now - 10 * 24 * HOUR_MS
    store = CaseStore(connect(redis_url), Keys(SETTINGS.key_prefix), clock_ms=lambda: opened_at)
    try:
        backlog = int(await store.redis.xlen(store.keys.feed))
        step = 10 * 24 * HOUR_MS // max(1, backlog // 5)
        while await store.intake_feed(count=5):
            opened_at = min(now - HOUR_MS // 4, opened_at + step)
    finally:
        await store.redis.aclose()


async def _text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).text_content())


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's package)")
async def test_the_board_draws_every_chart_and_moves_when_a_case_is_resolved(redis_url: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    await load_berka(redis_url, SETTINGS)
    await take_cases(redis_url)
    app = create_api(SETTINGS, redis_url, "")
    runner, port = await serve(app)
    try:
        errors: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await (await browser.new_context(viewport={"width": 1600, "height": 1000})).new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{port}/console/board.html?every=1")
            await expect(page.locator("#token-box")).to_be_visible()  # no token yet: it asks
            await page.fill("#token", "t-view-0123456789")
            await page.click("#token-form button")
            await expect(page.locator("#refreshed")).to_have_class("on")
            await expect(page.locator("#asof")).to_contain_text(LAST_DAY)
            await expect(page.locator("#hourly rect.in")).to_have_count(24)
            await expect(page.locator("#hourly rect.out")).to_have_count(24)
            assert len(str(await page.locator("#hourly polyline").get_attribute("points")).split()) == 24
            assert await page.locator("#kinds g[data-row]").count() >= 3
            await expect(page.locator("#extint rect.ext")).to_have_count(3)  # inflow, outflow, legend
            assert (await _text(page, "#share-text")).endswith("%")
            assert await page.locator("#rules-30d g[data-row]").count() >= 2
            await expect(page.locator("#by-day rect.alert")).to_have_count(30)
            await expect(page.locator("#rate rect")).to_have_count(11)
            await expect(page.locator("#tiers rect")).to_have_count(4)
            await expect(page.locator("#case-age rect")).to_have_count(6)
            assert await page.locator("#top g[data-row]").count() >= 5
            for tile in ("inflow", "outflow", "net", "share", "open", "moved"):
                assert (await _text(page, f"#kpi-{tile}")) != "—", tile
            assert int(await _text(page, "#kpi-moved")) > 0

            # an analyst resolves a case: the board counts move at the next refresh
            open_before = int(await _text(page, "#kpi-open"))
            resolved = page.locator('#case-status text.n[data-status="resolved"]')
            await expect(resolved).to_have_text("0")
            case = (await app[CASES].search(CaseFilter(status="open", category="outflow_risk"), 1, 0))[0][0]
            analyst = await (await browser.new_context()).new_page()
            analyst.on("pageerror", lambda exc: errors.append(str(exc)))
            await analyst.goto(f"http://127.0.0.1:{port}/console/desk.html")
            await analyst.fill("#token", "t-li-0123456789ab")
            await analyst.click("#token-form button")
            await analyst.click(f'#cases tr[data-case="{case.id}"]')
            await analyst.select_option("#a-outcome", "confirmed_outflow")
            await analyst.click("#resolve-form button")
            await expect(analyst.locator("#k-status")).to_have_text("已结案 resolved")
            await expect(resolved).to_have_text("1")
            await expect(page.locator("#kpi-open")).to_have_text(str(open_before - 1))
            await screenshot(page, tmp_path / "board.png")
            assert errors == []
            await browser.close()
    finally:
        await runner.cleanup()

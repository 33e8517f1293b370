"""The web console in a real browser: Debian's headless Chromium driven by
Playwright, against the real API on a real port and a real Redis.

The page loads and asks for the token, the alert feed fills, a finding the
pipeline commits while the page is open appears live, and the customer page
draws the balance chart. ``FUNDFLOW_UPDATE_SCREENSHOT=1`` refreshes
``docs/console.png``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.api.server import create_api
from streams.settings import Settings
from tests.support.api import PREFIX, records, seed
from tests.support.browser import CHROMIUM, FLAGS, screenshot, serve
from tests.support.drain import CUSTOMERS, drain_events

pytestmark = pytest.mark.browser

@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's package)")
async def test_console_shows_live_alerts_and_a_customer_chart(redis_url: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    settings = Settings(key_prefix=PREFIX, api_tokens=(SecretStr("console-token-0123456"),))
    processor = await seed(redis_url, settings)
    runner, port = await serve(create_api(settings, redis_url, ""))
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://127.0.0.1:{port}/")
            # no token yet: the console asks for one
            await expect(page.locator("#token-box")).to_be_visible()
            await page.fill("#token", "console-token-0123456")
            await page.click("#token-form button")
            feed = page.locator("#feed li.alert")
            await expect(feed.first).to_be_visible()
            before = await feed.count()
            assert before > 0
            await expect(page.locator("#live")).to_have_text("● live")
            await expect(page.locator("#tiers .bar")).to_have_count(4)

            # a finding committed now shows up without a reload
            newest = CUSTOMERS[-1]
            await processor.process(records(drain_events()[-2:], first_offset=20_000))
            fresh = page.locator(f'#feed li.alert.fresh a[data-customer="{newest}"]')
            await expect(fresh.first).to_be_visible(timeout=10_000)
            assert await feed.count() > before

            # the customer page: KPIs, the balance chart, the customer's alerts
            await fresh.first.click()
            await expect(page.locator("#c-id")).to_have_text(newest)
            await expect(page.locator('#c-kpis [data-field="balance"]')).to_have_text("10,000.00")  # rules/fmt.py
            points = await page.locator("#chart polyline").get_attribute("points")
            assert points is not None and len(points.split()) >= 1
            await expect(page.locator("#c-alerts li.alert").first).to_be_visible()
            rules = await page.locator("#c-alerts li.alert").evaluate_all("els => els.map(e => e.dataset.rule)")
            assert "large_external_outflow" in rules

            # another customer with a longer history: the chart has one point per kept day
            await page.fill("#lookup-id", "C0001")
            await page.click("#lookup button")
            await expect(page.locator("#c-id")).to_have_text("C0001")
            points = await page.locator("#chart polyline").get_attribute("points")
            assert points is not None and len(points.split()) > 10
            await screenshot(page, tmp_path / "console.png")
            assert errors == []
            await browser.close()
    finally:
        await runner.cleanup()
        await processor.store.redis.aclose()

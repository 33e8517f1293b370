"""Routes and consent in the case desk, in a real browser against the real API and Redis: a
relationship manager finds the Tier I collection opportunity in the RM queue, with its
evidence, and records the customer's opt-out; a viewer sees the consent but has no control
to change it, and the API refuses it the change anyway."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from streams.api.cases import CASES
from streams.api.server import create_api
from streams.settings import ApiToken, Settings
from tests.support.browser import CHROMIUM, FLAGS, Served, open_page, serve
from tests.support.contact import set_tiers
from tests.support.desk import finding, publish

pytestmark = pytest.mark.browser

DESK = "/console/desk.html"

SETTINGS = Settings(
    key_prefix="desk",
    api_tokens=(
        ApiToken(token=SecretStr("t-rm-0123456789abc"), role="analyst", name="rm.chen"),
        ApiToken(token=SecretStr("t-view-0123456789"), role="viewer", name="kan"),
    ),
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's package)")
async def test_an_rm_finds_the_tier_one_task_and_a_viewer_cannot_record_consent(redis_url: str) -> None:
    from playwright.async_api import async_playwright, expect

    app = create_api(SETTINGS, redis_url, "")
    runner, port = await serve(app)
    try:
        await set_tiers(app[CASES].redis, "desk", {"C1": "I", "C2": "III"})
        task = finding("C1", "collection_opportunity", "collection", "medium", tier=None)
        task["evidence"] = {"amount": "80000.00", "usual_inflow_multiple": "1.5", "retention_days_avg_90d": "4.2"}
        await publish(Served(app), task, finding("C2", "collection_opportunity", "collection", tier=None))  # type: ignore[arg-type]
        errors: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

            rm = await open_page(browser, port, DESK, "t-rm-0123456789abc", errors)
            await expect(rm.locator("#me")).to_have_text("rm.chen · analyst")
            await rm.select_option("#f-queue", "rm")
            await expect(rm.locator("#cases tbody tr")).to_have_count(1)
            row = rm.locator("#cases tbody tr")
            await expect(row).to_contain_text("C1 (I)")
            await expect(row.locator(".tag.rm")).to_have_count(1)
            await row.click()
            await expect(rm.locator("#k-findings li")).to_contain_text(["amount: 80000.00"])
            await expect(rm.locator("#k-findings .evidence")).to_contain_text(["retention_days_avg_90d: 4.2"])
            await rm.select_option("#c-channel", "sms")
            await rm.fill("#c-reason", "customer asked in branch")
            await rm.click("#consent-form button")
            await expect(rm.locator("#contact-state")).to_contain_text("sms opt_out")
            await expect(rm.locator("#k-contact ol.audit li")).to_contain_text(["rm.chen"])

            viewer = await open_page(browser, port, DESK, "t-view-0123456789", errors)
            await expect(viewer.locator("#me")).to_have_text("kan · viewer")
            await viewer.click('#cases tbody tr:has-text("C1")')
            await expect(viewer.locator("#contact-state")).to_contain_text("sms opt_out")
            await expect(viewer.locator("#consent-form")).to_have_count(0)
            await expect(viewer.locator("#complaint-form")).to_have_count(0)
            status = await viewer.evaluate(
                """async () => (await fetch("/contact/C1/consent", {method: "POST",
                     headers: {"Authorization": "Bearer t-view-0123456789", "Content-Type": "application/json"},
                     body: JSON.stringify({channel: "sms", status: "opt_in", reason: "x"})})).status"""
            )
            assert status == 403
            assert errors == []
            await browser.close()
    finally:
        await runner.cleanup()

"""The rule versions page in a real browser (headless Chromium, Playwright) against the real
API on a real port and a real Redis: an analyst proposes a version, a supervisor sees it in
the history, approves it, promotes it and rolls it back, and compares it side by side with
version 1; the supervisor's own proposal offers them no approval (four eyes); the shadow
report shows; and a viewer sees the history and the comparison with no control to propose,
approve, roll back or shadow. ``FUNDFLOW_UPDATE_SCREENSHOT=1`` refreshes ``docs/rules.png``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from rules.config import RulesConfig
from rules.versions import fingerprint
from streams.api.rules import RULEBOOK
from streams.api.server import create_api
from streams.settings import ApiToken, Settings
from tests.support.browser import CHROMIUM, FLAGS, open_page, screenshot, serve

pytestmark = pytest.mark.browser

SETTINGS = Settings(
    key_prefix="rulespage",
    api_tokens=(
        ApiToken(token=SecretStr("t-boss-0123456789"), role="supervisor", name="zhang"),
        ApiToken(token=SecretStr("t-li-0123456789ab"), role="analyst", name="li.wei"),
        ApiToken(token=SecretStr("t-view-0123456789"), role="viewer", name="kan"),
    ),
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's package)")
async def test_history_side_by_side_and_what_each_role_may_do(redis_url: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    app = create_api(SETTINGS, redis_url, "")
    fp, text = fingerprint(RulesConfig())
    await app[RULEBOOK].bootstrap(text, fp, time.time_ns() // 1000 - 86_400_000_000)  # the deployment, a day ago
    runner, port = await serve(app)
    try:
        errors: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

            li = await open_page(browser, port, "/console/rules.html", "t-li-0123456789ab", errors)
            await expect(li.locator("#me")).to_have_text("li.wei · analyst")
            await expect(li.locator('#versions tr[data-version="1"]')).to_contain_text("生效中 in force")
            await li.fill("#p-yaml", "outflow:\n  large_external_amount: 80000\n")
            await li.fill("#p-reason", "fewer large-outflow alerts")
            await li.click("#propose-form button")
            await expect(li.locator("#v-number")).to_have_text("2")
            await expect(li.locator("#v-diff li")).to_have_text(["outflow.large_external_amount: 100000 -> 80000"])
            await expect(li.locator("#a-approve")).to_have_count(0)  # an analyst approves nothing

            boss = await open_page(browser, port, "/console/rules.html", "t-boss-0123456789", errors)
            await expect(boss.locator("#versions tbody tr")).to_have_count(2)
            await boss.click('#versions tr[data-version="2"]')
            await expect(boss.locator("#v-status")).to_have_text("待审批 proposed")
            await boss.click("#a-approve")
            await expect(boss.locator("#v-status")).to_have_text("已批准 approved")
            await boss.fill("#a-effective", "2000-01-01T00:00:00+08:00")
            await boss.click("#promote-form button")
            await expect(boss.locator('#versions tr[data-version="2"]')).to_contain_text("生效中 in force")
            await expect(boss.locator("#timeline li")).to_have_count(2)
            await boss.fill("#rb-effective", "2001-01-01T00:00:00Z")
            await boss.click("#rollback-form button")
            await expect(boss.locator("#timeline li")).to_have_count(3)
            await expect(boss.locator('#versions tr[data-version="1"]')).to_contain_text("生效中 in force")
            await boss.select_option("#cmp-a", "1")
            await boss.select_option("#cmp-b", "2")
            await boss.click("#compare-form button")
            changed = boss.locator("#compare tbody tr.changed")
            await expect(changed).to_have_count(1)
            await expect(changed.locator("td")).to_have_text(["outflow.large_external_amount", "100000", "80000"])
            await boss.uncheck("#cmp-changed")
            await expect(boss.locator("#compare tbody tr")).not_to_have_count(1)  # every setting, side by side
            await boss.fill("#p-yaml", "collection:\n  min_amount: 8000\n")
            await boss.fill("#p-reason", "mine")
            await boss.click("#propose-form button")
            await expect(boss.locator("#v-number")).to_have_text("3")
            await expect(boss.locator("#v-actions button")).to_have_text(["影子运行 Shadow"])  # four eyes: no approval
            await boss.click("#a-shadow")
            await expect(boss.locator('#versions tr[data-version="3"] .tag.shadow')).to_be_visible()
            running = "version 3 drops 0 findings and adds 0 (running 运行中)"
            await expect(boss.locator("#r-summary")).to_have_text(running)

            viewer = await open_page(browser, port, "/console/rules.html", "t-view-0123456789", errors)
            await expect(viewer.locator("#me")).to_have_text("kan · viewer")
            await expect(viewer.locator("#versions tbody tr")).to_have_count(3)
            await expect(viewer.locator("#propose-box")).to_be_hidden()
            await expect(viewer.locator("#rollback-form")).to_be_hidden()
            for number in ("3", "2"):
                await viewer.click(f'#versions tr[data-version="{number}"]')
                await expect(viewer.locator("#v-number")).to_have_text(number)
                await expect(viewer.locator("#v-actions > *")).to_have_count(0)
            await viewer.select_option("#cmp-a", "1")
            await viewer.select_option("#cmp-b", "3")
            await viewer.click("#compare-form button")
            await expect(viewer.locator("#compare tbody tr.changed td").first).to_have_text("collection.min_amount")
            await expect(viewer.locator("#audit li")).to_have_count(7)  # + a promotion and a rollback
            await expect(viewer.locator("#r-summary")).to_contain_text("version 3 drops 0 findings")
            await boss.click('#versions tr[data-version="2"]')
            await expect(boss.locator("#v-number")).to_have_text("2")
            await boss.check("#cmp-changed")
            await expect(boss.locator("#compare tbody tr")).to_have_count(1)
            await screenshot(boss, tmp_path / "rules.png")
            assert errors == []
            await browser.close()
    finally:
        await runner.cleanup()

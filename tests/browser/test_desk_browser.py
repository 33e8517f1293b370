"""The case desk in a real browser (headless Chromium, Playwright) against the real
API on a real port and a real Redis: a supervisor assigns two cases, an analyst
works one to ``retained_after_contact`` and dismisses the other, a viewer sees
both and is offered no action, and the rule precision and the 看板's case counts (a
viewer's board page, left open through it all) move.
``FUNDFLOW_UPDATE_SCREENSHOT=1`` refreshes ``docs/desk.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from cases.store import CaseFilter
from streams.api.cases import CASES
from streams.api.server import create_api
from streams.settings import ApiToken, Settings
from tests.support.browser import CHROMIUM, FLAGS, Served, open_page, screenshot, serve
from tests.support.desk import finding, publish

pytestmark = pytest.mark.browser

SETTINGS = Settings(
    key_prefix="desk",
    api_tokens=(
        ApiToken(token=SecretStr("t-boss-0123456789"), role="supervisor", name="zhang"),
        ApiToken(token=SecretStr("t-li-0123456789ab"), role="analyst", name="li.wei"),
        ApiToken(token=SecretStr("t-view-0123456789"), role="viewer", name="kan"),
    ),
)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test installs Debian's package)")
async def test_supervisor_assigns_analyst_works_viewer_watches(redis_url: str, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    app = create_api(SETTINGS, redis_url, "")
    runner, port = await serve(app)
    try:
        await publish(Served(app), finding("C1", severity="high", tier="I"), finding("C2"))  # type: ignore[arg-type]
        first, second = [c.id for c in (await app[CASES].search(CaseFilter(), 10, 0))[0]][::-1]
        errors: list[str] = []
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)

            boss = await open_page(browser, port, "/console/desk.html", "t-boss-0123456789", errors)
            await expect(boss.locator("#me")).to_have_text("zhang · supervisor")
            await expect(boss.locator("#bulk")).to_be_visible()
            for case in (first, second):
                await boss.click(f'#cases tr[data-case="{case}"]')
                await expect(boss.locator("#k-id")).to_have_text(str(case))
                await boss.select_option("#a-assignee", "li.wei")
                await boss.click("#assign-form button")
                await expect(boss.locator(f'#cases tr[data-case="{case}"] td.assignee')).to_have_text("li.wei")

            # the viewer's 看板, open on the wall through what follows (refreshed every second)
            wall = await (await browser.new_context(viewport={"width": 1600, "height": 1000})).new_page()
            wall.on("pageerror", lambda exc: errors.append(str(exc)))
            await wall.goto(f"http://127.0.0.1:{port}/console/board.html?every=1")
            await wall.fill("#token", "t-view-0123456789")
            await wall.click("#token-form button")

            def counted(status: str) -> Any:
                return wall.locator(f'#case-status text.n[data-status="{status}"]')

            await expect(wall.locator("#kpi-open")).to_have_text("2")
            await expect(counted("open")).to_have_text("2")
            for status in ("in_progress", "resolved", "dismissed"):
                await expect(counted(status)).to_have_text("0")

            li = await open_page(browser, port, "/console/desk.html", "t-li-0123456789ab", errors)
            await expect(li.locator("#me")).to_have_text("li.wei · analyst")
            await expect(li.locator("#bulk")).to_be_hidden()
            await li.select_option("#f-assignee", "@me")
            await expect(li.locator("#cases tbody tr")).to_have_count(2)
            await li.click(f'#cases tr[data-case="{first}"]')
            await li.click("#a-start")
            await expect(li.locator("#k-status")).to_have_text("处理中 in progress")
            await li.fill("#a-comment", "called the customer, money stays")
            await li.click("#comment-form button")
            # (before the comment the list holds one "no comments" line: wait for the comment itself,
            # or the outcome below is picked in a form the comment's re-render then replaces)
            await expect(li.locator("#k-comments li")).to_contain_text(["called the customer, money stays"])
            await li.select_option("#a-outcome", "retained_after_contact")
            await expect(counted("in_progress")).to_have_text("1")
            await li.click("#resolve-form button")
            await expect(li.locator("#k-status")).to_have_text("已结案 resolved")
            await expect(li.locator("#k-meta")).to_contain_text("outcome retained_after_contact")
            await expect(wall.locator("#kpi-open")).to_have_text("1")
            await expect(li.locator("#actions button")).to_have_count(1)  # only commenting is left
            await li.click(f'#cases tr[data-case="{second}"]')
            await expect(li.locator("#k-id")).to_have_text(str(second))
            await li.click("#a-dismiss")
            await expect(li.locator("#k-status")).to_have_text("已忽略 dismissed")
            precision = li.locator('#precision tr[data-rule="large_external_outflow"] td.precision')
            await expect(precision).to_have_text("100.0% (1/1)")
            await expect(wall.locator("#kpi-open")).to_have_text("0")
            for status, count in (("open", "0"), ("in_progress", "0"), ("resolved", "1"), ("dismissed", "1")):
                await expect(counted(status)).to_have_text(count)

            viewer = await open_page(browser, port, "/console/desk.html", "t-view-0123456789", errors)
            await expect(viewer.locator("#me")).to_have_text("kan · viewer")
            await viewer.select_option("#f-status", "")
            await expect(viewer.locator("#cases tbody tr")).to_have_count(2)
            await expect(viewer.locator("#bulk")).to_be_hidden()
            await expect(viewer.locator("#cases input[type=checkbox]")).to_have_count(0)
            await viewer.click(f'#cases tr[data-case="{first}"]')
            await expect(viewer.locator("#k-audit li")).to_have_count(5)  # opened, assign, start, comment, resolve
            await expect(viewer.locator("#actions > *")).to_have_count(0)
            await expect(viewer.locator('#precision tr[data-rule="large_external_outflow"] td.precision')).to_have_text(
                "100.0% (1/1)"
            )
            await boss.reload()
            await boss.select_option("#f-status", "")
            await boss.click(f'#cases tr[data-case="{first}"]')
            await expect(boss.locator("#k-audit li")).to_have_count(5)
            await screenshot(boss, tmp_path / "desk.png")
            assert errors == []
            await browser.close()
    finally:
        await runner.cleanup()

"""Headless Chromium for the browser tests: where it is, its flags, serving an app, screenshots."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from streams.local.servers import free_port
from tests.support import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """``app`` served on a free local port for the browser; ``runner.cleanup()`` stops it."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def screenshot(page: Any, shot: Path) -> None:
    """A full-page screenshot; with ``FUNDFLOW_UPDATE_SCREENSHOT=1`` also kept in docs/."""
    await page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("FUNDFLOW_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / shot.name)


class Served:
    """Enough of a test client for ``tests.support.desk.publish``: the running app."""

    def __init__(self, app: web.Application) -> None:
        self.app = app


async def open_page(browser: Any, port: int, path: str, token: str, errors: list[str]) -> Any:
    """A fresh page of ``path`` signed in with ``token``; page errors are collected in ``errors``."""
    page = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{port}{path}")
    await page.fill("#token", token)
    await page.click("#token-form button")
    return page

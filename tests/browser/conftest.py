"""The browser layer: headless Chromium (Playwright) against the real API on a real port and a
real Redis. Every test here is marked ``browser`` (``-m "not browser"`` leaves them out)."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.browser)

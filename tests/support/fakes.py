"""Test doubles shared by the test layers. Only for what never crosses a process
boundary: servers are always real (``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from streams.errors import TransientError
from streams.pipeline import Message


class Sink:
    """An emitter that records what was published; can fail on demand: ``fail_times``
    transient broker errors first, or ``crash`` like a process killed before publishing."""

    def __init__(self, fail_times: int = 0, crash: bool = False) -> None:
        self.sent: list[Message] = []
        self.fail_times = fail_times
        self.crash = crash

    async def send_all(self, messages: Sequence[Message]) -> None:
        if self.crash:
            raise RuntimeError("process killed before publishing")
        if self.fail_times:
            self.fail_times -= 1
            raise TransientError("broker unavailable")
        self.sent.extend(messages)

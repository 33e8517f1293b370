"""A one-line progress bar for the long-running tools (replay, backtest, tune, bench)."""

from __future__ import annotations

import sys


class Progress:
    """A one-line progress bar on stderr (a terminal) or periodic lines (a log)."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total = total
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last_line = -1

    def __call__(self, done: int) -> None:
        if self.total:
            share = min(done / self.total, 1.0)
            bar = "#" * int(share * 30)
            text = f"{self.label} [{bar:<30}] {done}/{self.total} ({share:.0%})"
        else:
            text = f"{self.label} {done}"
        if self.tty:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)
        elif done // 10000 != self._last_line:
            self._last_line = done // 10000
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)

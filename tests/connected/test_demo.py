"""``make demo`` end to end: the embedded stack, a worker, the API and console,
the real Berka replay; numbers move within a minute and keep moving after the
last record (the replay starts over with a new generation of the customers, the
calendar moved on); Ctrl-C stops everything and leaves no process behind."""

from __future__ import annotations

import json
import lzma
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.tools.berka import SHIPPED_BERKA
from tests.support.processes import _alive, children_of

pytestmark = [pytest.mark.slow, pytest.mark.connected]

ROOT = Path(__file__).resolve().parents[2]


def small_berka(tmp_path: Path, rows: int) -> tuple[Path, int]:
    """The first ``rows`` transactions of the shipped data, uncompressed (``--berka DIR``)."""
    berka = tmp_path / "berka"
    berka.mkdir()
    trans = lzma.decompress((SHIPPED_BERKA / "trans.asc.xz").read_bytes()).splitlines(keepends=True)
    (berka / "trans.asc").write_bytes(b"".join(trans[: rows + 1]))
    return berka, rows


def test_demo_shows_live_numbers_keeps_replaying_serves_the_console_and_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
    env["FUNDFLOW_VAR_DIR"] = str(tmp_path)
    berka, per_loop = small_berka(tmp_path, 1500)
    demo = subprocess.Popen(
        [sys.executable, "-m", "streams.cli.main", "demo", "--berka", str(berka), "--rate", "1000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    seen: list[str] = []
    console = None
    processed = 0
    started = time.monotonic()
    descendants: set[int] = set()
    try:
        # past the last record of the first loop: the demo goes on with the second
        while time.monotonic() - started < 150 and processed <= per_loop + 200:
            line = demo.stdout.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(r"web console: (http://\S+)", line):
                console = match.group(1)
            if match := re.search(r"processed (\d+)", line):
                processed = int(match.group(1))
        assert processed > per_loop + 200, "".join(seen[-30:])
        seen += [demo.stdout.readline() for _ in range(3)]  # the rest of that screen
        loops = [int(m.group(1)) for line in seen if (m := re.match(r"loop (\d+) ", line))]
        assert loops and max(loops) >= 2, "".join(seen[-30:])
        # a later loop is a new generation of the data's customers (replay.generation)
        assert any(re.search(r"a new generation: ids ~[1-9]", line) for line in seen), "".join(seen[-30:])
        assert any("日均余额" in line for line in seen)
        assert console is not None
        # the first screen says in one line where the console is and how to stop
        assert any(console in line and "Ctrl-C" in line for line in seen[:12]), "".join(seen[:12])
        with urllib.request.urlopen(console, timeout=10) as page:
            assert b"FundFlow" in page.read()
        with urllib.request.urlopen(console + "alerts?limit=5", timeout=10) as response:
            assert "alerts" in json.loads(response.read())
        descendants = children_of(demo.pid)
        assert len(descendants) >= 4  # broker, Redis, worker, API
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            tail, _ = demo.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            tail, _ = demo.communicate()
    assert demo.returncode == 0, tail[-2000:]
    assert "stopped." in tail
    deadline = time.monotonic() + 15
    alive = descendants
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in descendants if _alive(pid)}
        time.sleep(0.2)
    assert not alive, f"left running: {alive}"

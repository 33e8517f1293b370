"""Every long-running process stops when asked: SIGTERM or SIGINT -> a one-line message,
exit status 0 within STOP_BOUND seconds, whether or not Kafka and Redis still answer,
and nothing it started is left behind (``streams.stopping``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.local.servers import Stack, free_port
from streams.settings import Settings
from tests.connected.test_demo import children_of
from tests.eventgen import lines, transactions

pytestmark = [pytest.mark.slow, pytest.mark.connected]

STOP_BOUND = 10.0


@pytest.fixture
def own_stack(tmp_path: Path) -> Iterator[Stack]:
    """A broker and a Redis of this test alone: the tests kill them."""
    with Stack(Settings(kafka_bootstrap=None, redis_url=None, var_dir=tmp_path / "stack")) as stack:
        yield stack


class Process:
    """``fundflow ARGS`` in its own session, output to a log; killed at the end of the test."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FUNDFLOW_")}
        clean.update(env)
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "streams.cli.main", *args],
                cwd=log.parent,  # (Faust makes an {app_id}-data folder in its cwd)
                env=clean,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, marker: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.text():
            assert self.popen.poll() is None, self.text()[-3000:]
            assert time.monotonic() < deadline, f"no {marker!r} in {timeout}s: {self.text()[-3000:]}"
            time.sleep(0.2)

    def wait_ready(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen.poll() is None, self.text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"not ready in {timeout}s: {self.text()[-3000:]}")

    def assert_stops(self, signum: int = signal.SIGTERM) -> None:
        """Signalled, it exits 0 within the bound, says so in one line, and leaves nothing."""
        children = children_of(self.popen.pid)
        started = time.monotonic()
        self.popen.send_signal(signum)
        try:
            code = self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = -9
        seconds = time.monotonic() - started
        text = self.text()
        assert code == 0 and seconds <= STOP_BOUND, f"exit {code} after {seconds:.1f}s:\n{text[-3000:]}"
        name = signal.Signals(signum).name
        assert f"stopping on {name}" in text, text[-2000:]
        time.sleep(0.5)
        assert not {pid for pid in children if Path(f"/proc/{pid}").exists()}, "a child was left behind"

    def close(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.close()


def events_file(tmp_path: Path, customers: int = 50, per_customer: int = 200) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines(transactions(customers, per_customer))) + b"\n")
    return path


def kill(server: object) -> None:
    assert server is not None
    server.kill()  # type: ignore[attr-defined]


def ready_worker(stack: Stack, tmp_path: Path, processes: list[Process]) -> Process:
    port = free_port()
    worker = Process(["worker", "--web-port", str(port)], stack.env(), tmp_path / "worker.log")
    processes.append(worker)
    worker.wait_ready(port)
    return worker


@pytest.mark.parametrize("dead", ["broker", "redis"])
def test_worker_stops_on_sigterm_after_its_server_went_away(
    own_stack: Stack, tmp_path: Path, processes: list[Process], dead: str
) -> None:
    worker = ready_worker(own_stack, tmp_path, processes)
    # traffic in flight when the server goes: batches half done, offsets not yet committed
    replay = Process(["replay", str(events_file(tmp_path)), "--rate", "1000"], own_stack.env(), tmp_path / "r.log")
    processes.append(replay)
    time.sleep(3)
    kill(own_stack.broker if dead == "broker" else own_stack.redis)
    time.sleep(4)  # well inside its reconnect / coordinator / Redis retries
    assert worker.popen.poll() is None, worker.text()
    worker.assert_stops(signal.SIGTERM)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_worker_stops_on_a_signal_with_its_servers_up(
    own_stack: Stack, tmp_path: Path, processes: list[Process], signum: int
) -> None:
    worker = ready_worker(own_stack, tmp_path, processes)
    worker.assert_stops(signum)


def test_api_stops_on_sigterm_with_both_servers_down(
    own_stack: Stack, tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    api = Process(["api", "--demo", "--port", str(port)], own_stack.env(), tmp_path / "api.log")
    processes.append(api)
    api.wait_for("console on")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
    kill(own_stack.broker)
    kill(own_stack.redis)
    time.sleep(1)
    api.assert_stops(signal.SIGTERM)


def test_webhook_relay_stops_on_sigterm_with_the_broker_gone(
    own_stack: Stack, tmp_path: Path, processes: list[Process]
) -> None:
    env = {**own_stack.env(), "FUNDFLOW_WEBHOOK_SECRET": "s3cret"}
    relay = Process(["alerts", "webhook", "--url", "http://127.0.0.1:9/hook"], env, tmp_path / "relay.log")
    processes.append(relay)
    relay.wait_for("relaying")
    time.sleep(3)  # joined its group
    kill(own_stack.broker)
    time.sleep(3)
    relay.assert_stops(signal.SIGTERM)


def test_alerts_tail_stops_on_sigterm_with_the_broker_gone(
    own_stack: Stack, tmp_path: Path, processes: list[Process]
) -> None:
    tail = Process(["alerts", "tail", "--json"], own_stack.env(), tmp_path / "tail.log")
    processes.append(tail)
    time.sleep(5)  # subscribed and waiting for findings
    assert tail.popen.poll() is None, tail.text()
    kill(own_stack.broker)
    time.sleep(3)
    tail.assert_stops(signal.SIGTERM)


def test_replay_stops_on_sigterm_with_no_broker(own_stack: Stack, tmp_path: Path, processes: list[Process]) -> None:
    replay = Process(["replay", str(events_file(tmp_path)), "--rate", "200"], own_stack.env(), tmp_path / "r.log")
    processes.append(replay)
    time.sleep(6)
    kill(own_stack.broker)
    time.sleep(2)
    assert replay.popen.poll() is None, replay.text()
    replay.assert_stops(signal.SIGTERM)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stack_stops_on_a_signal_and_takes_its_servers(tmp_path: Path, processes: list[Process], signum: int) -> None:
    stack = Process(["stack"], {"FUNDFLOW_VAR_DIR": str(tmp_path)}, tmp_path / "stack.log")
    processes.append(stack)
    stack.wait_for("# export")
    assert len(children_of(stack.popen.pid)) >= 2
    stack.assert_stops(signum)


def test_demo_stops_on_sigterm_with_its_broker_gone(tmp_path: Path, processes: list[Process]) -> None:
    demo = Process(["demo", "--rate", "300"], {"FUNDFLOW_VAR_DIR": str(tmp_path)}, tmp_path / "demo.log")
    processes.append(demo)
    demo.wait_for("web console", timeout=120)
    time.sleep(4)
    tansu = [pid for pid in children_of(demo.popen.pid) if b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(tansu) == 1
    os.kill(tansu[0], signal.SIGKILL)
    time.sleep(2)
    demo.assert_stops(signal.SIGTERM)


def test_a_second_signal_exits_at_once(own_stack: Stack, tmp_path: Path, processes: list[Process]) -> None:
    """With Redis gone the first SIGTERM starts a stop that only the watchdog ends; a second one ends it now."""
    worker = ready_worker(own_stack, tmp_path, processes)
    replay = Process(["replay", str(events_file(tmp_path, 20, 50)), "--rate", "500"], own_stack.env(), tmp_path / "r")
    processes.append(replay)
    time.sleep(3)
    kill(own_stack.redis)
    time.sleep(3)
    worker.popen.send_signal(signal.SIGTERM)
    time.sleep(1)
    started = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    assert time.monotonic() - started < 3
    assert "second SIGTERM, exiting now" in worker.text()

"""Every long-running process stops when asked: SIGTERM or SIGINT -> a one-line message,
exit status 0 within STOP_BOUND seconds, whether or not Kafka and Redis still answer,
and nothing it started is left behind (``streams.stopping``).

No test sleeps a fixed time: each waits for what it needs to be true (events applied, a
connection to the broker open, the process's reaction to a server's loss in its log or in its
sockets) and fails with the process's output if that does not happen in time."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from streams.local.servers import Stack, free_port
from tests.support.eventgen import lines, transactions
from tests.support.processes import Process, applied, children_of, kill, port_of

pytestmark = [pytest.mark.slow, pytest.mark.connected]


def events_file(tmp_path: Path, customers: int = 50, per_customer: int = 200) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines(transactions(customers, per_customer))) + b"\n")
    return path


def ready_worker(stack: Stack, tmp_path: Path, processes: list[Process]) -> Process:
    port = free_port()
    worker = Process(["worker", "--web-port", str(port)], stack.env(), tmp_path / "worker.log")
    processes.append(worker)
    worker.wait_ready(port)
    return worker


def busy_worker(stack: Stack, tmp_path: Path, processes: list[Process], events: Path, rate: int) -> Process:
    """A ready worker with a replay feeding it: batches in flight, offsets not all committed."""
    worker = ready_worker(stack, tmp_path, processes)
    processes.append(Process(["replay", str(events), "--rate", str(rate)], stack.env(), tmp_path / "r.log"))
    worker.wait_until(lambda: applied(stack.redis_url) > 0, "applying events")
    return worker


@pytest.mark.parametrize("dead", ["broker", "redis"])
def test_worker_stops_on_sigterm_after_its_server_went_away(
    own_stack: Stack, tmp_path: Path, processes: list[Process], dead: str
) -> None:
    worker = busy_worker(own_stack, tmp_path, processes, events_file(tmp_path), rate=1000)
    kill(own_stack.broker if dead == "broker" else own_stack.redis)
    # inside its reconnect / coordinator retries (aiokafka's "Connect call failed"), or its Redis retries
    worker.wait_for("will be retried" if dead == "redis" else "Connect call failed", timeout=30)
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
    kill(own_stack.broker)  # each returns once its server process is gone
    kill(own_stack.redis)
    api.assert_stops(signal.SIGTERM)


def test_webhook_relay_stops_on_sigterm_with_the_broker_gone(
    own_stack: Stack, tmp_path: Path, processes: list[Process]
) -> None:
    env = {**own_stack.env(), "FUNDFLOW_WEBHOOK_SECRET": "s3cret"}
    relay = Process(["alerts", "webhook", "--url", "http://127.0.0.1:9/hook"], env, tmp_path / "relay.log")
    processes.append(relay)
    broker = port_of(own_stack.kafka_bootstrap)
    relay.wait_for("relaying")
    relay.wait_until(lambda: relay.connected_to(broker), "connected to the broker")
    kill(own_stack.broker)
    relay.wait_until(lambda: relay.let_go_of(broker), "done with its broker connections", timeout=30)
    relay.assert_stops(signal.SIGTERM)


def test_alerts_tail_stops_on_sigterm_with_the_broker_gone(
    own_stack: Stack, tmp_path: Path, processes: list[Process]
) -> None:
    tail = Process(["alerts", "tail", "--json"], own_stack.env(), tmp_path / "tail.log")
    processes.append(tail)
    broker = port_of(own_stack.kafka_bootstrap)
    tail.wait_until(lambda: tail.connected_to(broker), "subscribed (connected to the broker)")
    kill(own_stack.broker)
    tail.wait_until(lambda: tail.let_go_of(broker), "done with its broker connections", timeout=30)
    tail.assert_stops(signal.SIGTERM)


def test_replay_stops_on_sigterm_with_no_broker(own_stack: Stack, tmp_path: Path, processes: list[Process]) -> None:
    replay = Process(["replay", str(events_file(tmp_path)), "--rate", "200"], own_stack.env(), tmp_path / "r.log")
    processes.append(replay)
    broker = port_of(own_stack.kafka_bootstrap)
    replay.wait_until(lambda: replay.connected_to(broker), "sending (connected to the broker)")
    kill(own_stack.broker)
    replay.wait_until(lambda: replay.let_go_of(broker), "done with its broker connections", timeout=30)
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
    broker = port_of(re.findall(r"FUNDFLOW_KAFKA_BOOTSTRAP=(\S+)", demo.text())[0])
    demo.wait_until(lambda: demo.connected_to(broker), "running against its broker")
    tansu = [pid for pid in children_of(demo.popen.pid) if b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(tansu) == 1
    os.kill(tansu[0], signal.SIGKILL)
    demo.wait_until(lambda: demo.let_go_of(broker), "done with its broker connections", timeout=30)
    demo.assert_stops(signal.SIGTERM)


def test_a_second_signal_exits_at_once(own_stack: Stack, tmp_path: Path, processes: list[Process]) -> None:
    """With Redis gone the first SIGTERM starts a stop that only the watchdog ends; a second one ends it now.
    The feed lasts 20 s, so a batch is still coming when Redis goes: one of 2 s had been
    worked off whole before the kill once, with four test processes on two cores, and
    nothing was left to retry."""
    worker = busy_worker(own_stack, tmp_path, processes, events_file(tmp_path, 20, 500), rate=500)
    kill(own_stack.redis)
    worker.wait_for("will be retried", timeout=30)
    worker.popen.send_signal(signal.SIGTERM)
    worker.wait_for("stopping on SIGTERM")
    started = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0
    assert time.monotonic() - started < 3
    assert "second SIGTERM, exiting now" in worker.text()

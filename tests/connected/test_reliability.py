"""Nothing lost, nothing twice: real worker processes killed, added, starved of Redis.

Every scenario runs the embedded broker and Redis with real ``fundflow
worker`` processes and compares the final state (the ``state.jsonl`` format,
as of the largest event time) byte for byte with an undisturbed application
of the same events, and the findings published downstream with the
undisturbed ones. Described in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rules.board import Board, BoardDelta, collection_bucket
from rules.events import LoanEvent, TransactionEvent
from rules.state import CustomerState, Outcome, to_us
from streams.local.orchestra import read_topic
from streams.pipeline import outbox_message
from streams.rulestep import build_step
from streams.topics import DLQ
from tests.support import eventgen, malformed
from tests.support.scenario import (
    LAST_DEAD_REASONS,
    Scenario,
    http_get,
    settings_for,
    snapshot_bytes,
    wait_retrying,
)

pytestmark = [pytest.mark.slow, pytest.mark.connected]

@pytest.fixture(scope="module")
def workload() -> list[bytes]:
    return eventgen.lines(eventgen.transactions(customers=40, per_customer=100, seed=11))


@pytest.fixture(scope="module")
def undisturbed(workload: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, bytes]]:
    """The pure step over the events in order: the state and findings any run must end with."""
    settings = settings_for(tmp_path_factory.mktemp("ref"))
    step = build_step(settings)
    states: dict[str, CustomerState] = {}
    findings: dict[str, bytes] = {}
    for line in workload:
        obj = orjson.loads(line)
        event: TransactionEvent | LoanEvent = (
            LoanEvent.model_validate(obj) if "loan_id" in obj else TransactionEvent.model_validate(obj)
        )
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        outcome, entries = step(state, event)
        assert outcome is Outcome.APPLIED
        for entry in entries:
            _, _, value = outbox_message(entry)
            findings[orjson.loads(value)["id"]] = value
    return snapshot_bytes(list(states.values()), settings, workload), findings


@pytest.fixture(scope="module")
def undisturbed_board(workload: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Board:
    """The 看板's cells one application of the events in order gives (the pure step)."""
    settings = settings_for(tmp_path_factory.mktemp("ref-board"))
    step = build_step(settings)
    states: dict[str, CustomerState] = {}
    board = Board()
    for line in workload:
        event = TransactionEvent.model_validate(orjson.loads(line))
        state = states.setdefault(event.customer_id, CustomerState(event.customer_id))
        _, entries = step(state, event)
        delta = BoardDelta()
        delta.add_transaction(event, to_us(event.ts), settings.zone)
        for entry in entries:
            delta.add_finding(orjson.loads(outbox_message(entry)[2]))
        board.add(event.customer_id, delta)
    for state in states.values():
        board.count(collection_bucket(state))
    return board


def assert_same_outcome(
    result: tuple[bytes, list[str], int], undisturbed: tuple[bytes, dict[str, bytes]], *, exact_once: bool
) -> None:
    state, ids, dead = result
    expected_state, expected_findings = undisturbed
    assert state == expected_state
    assert dead == 0, LAST_DEAD_REASONS.most_common(5)
    assert set(ids) == set(expected_findings)
    if exact_once:
        assert len(ids) == len(set(ids)), "a finding id was published twice"


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with Scenario(tmp_path) as running:
        yield running


def test_kill_9_mid_stream_and_restart(
    scenario: Scenario,
    workload: list[bytes],
    undisturbed: tuple[bytes, dict[str, bytes]],
    undisturbed_board: Board,
) -> None:
    first = scenario.run.start_worker()
    producer = scenario.produce_in_background(workload, rate=1500)
    scenario.wait_applied(len(workload) // 4)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert scenario.changelogs() > 0  # the next worker must replay what the killed one logged
    second = scenario.run.start_worker()
    scenario.wait_applied(len(workload) // 2)
    second.send_signal(signal.SIGKILL)
    second.wait()
    scenario.run.start_worker()
    assert producer.wait(timeout=60) == 0
    # Findings committed by a killed worker but not yet confirmed may be published again
    # (same id: downstream drops it); the id set and the state must be exactly the same.
    assert_same_outcome(scenario.finish(workload), undisturbed, exact_once=False)
    scenario.assert_board(undisturbed_board)


def test_a_killed_workers_changelogs_are_folded_by_the_new_owner_with_no_new_event(
    scenario: Scenario, workload: list[bytes], undisturbed: tuple[bytes, dict[str, bytes]]
) -> None:
    """A worker killed with customers' changelogs in Redis (it would fold them only after an
    hour) leaves them to the worker that takes its partitions over, which folds them once
    they are quiet, although no event for those customers ever comes again (issue 30)."""
    asyncio.run(scenario.produce(workload))
    first = scenario.run.start_worker(FUNDFLOW_FOLD_AFTER_SECONDS="3600")
    asyncio.run(scenario.run.wait_caught_up(len(workload), 120))
    left = scenario.changelogs()
    assert left > 0
    first.send_signal(signal.SIGKILL)
    first.wait()
    heir = scenario.run.start_worker(FUNDFLOW_FOLD_AFTER_SECONDS="2")
    deadline = time.monotonic() + 60
    while scenario.changelogs() > 0:
        assert heir.poll() is None and time.monotonic() < deadline, f"{scenario.changelogs()} of {left} logs left"
        time.sleep(0.5)
    assert_same_outcome(scenario.finish(workload), undisturbed, exact_once=False)


def test_crash_between_state_write_and_offset_commit(
    scenario: Scenario,
    workload: list[bytes],
    undisturbed: tuple[bytes, dict[str, bytes]],
    undisturbed_board: Board,
) -> None:
    """The worker dies right after a state commit, before publishing and before its
    offsets are committed: the batch is redelivered and must change nothing."""
    asyncio.run(scenario.produce(workload))
    doomed = scenario.run.start_worker(FUNDFLOW_CRASH_AFTER_COMMITS="3")
    assert doomed.wait(timeout=60) == 137
    scenario.run.workers.remove(doomed)  # it died on purpose
    assert 0 < scenario.applied_total() < len(workload)
    scenario.run.start_worker()
    result = scenario.finish(workload)
    assert scenario.applied_total() == len(workload), "an event was applied twice or never"
    assert_same_outcome(result, undisturbed, exact_once=False)
    scenario.assert_board(undisturbed_board)  # the 看板 moved with the commits, once each


def test_scale_out_then_stop_the_first_worker(
    scenario: Scenario, workload: list[bytes], undisturbed: tuple[bytes, dict[str, bytes]]
) -> None:
    first = scenario.run.start_worker()
    producer = scenario.produce_in_background(workload, rate=600)
    scenario.wait_applied(len(workload) // 5)
    scenario.run.start_worker()
    scenario.wait_applied(len(workload) // 2)
    scenario.run.stop_worker(first)  # SIGTERM: a clean leave, its partitions move over
    assert first.returncode is not None
    assert producer.wait(timeout=60) == 0
    assert_same_outcome(scenario.finish(workload), undisturbed, exact_once=True)
    assert scenario.applied_total() == len(workload)


def test_redis_outage_backs_off_and_resumes(
    tmp_path: Path, workload: list[bytes], undisturbed: tuple[bytes, dict[str, bytes]]
) -> None:
    with Scenario(tmp_path, persistent_redis=True) as scenario:
        assert scenario.run.stack is not None and scenario.run.stack.redis is not None
        scenario.run.start_worker()
        producer = scenario.produce_in_background(workload, rate=1000)
        scenario.wait_applied(len(workload) // 4)
        valkey = scenario.run.stack.redis
        valkey.stop()
        port = scenario.run.web_ports[0]
        wait_retrying(port)  # the worker meets the outage and backs off, and stays up
        scenario.run.check_workers()
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and body["checks"]["redis"].startswith("unreachable"), body
        assert body["checks"]["kafka"] == "ok"
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert 'fundflow_dependency_up{dependency="redis"} 0.0' in metrics
        valkey.start()
        deadline = time.monotonic() + 15
        while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "worker not ready again after Redis came back"
            time.sleep(0.5)
        assert producer.wait(timeout=60) == 0
        result = scenario.finish(workload)
        assert_same_outcome(result, undisturbed, exact_once=False)
        assert scenario.applied_total() == len(workload)
        log = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("worker-*.log"))
        assert "will be retried" in log


def test_malformed_records_at_scale_are_dead_lettered_and_never_stop_the_stream(
    scenario: Scenario, workload: list[bytes], undisturbed: tuple[bytes, dict[str, bytes]]
) -> None:
    bad = malformed.corrupt(workload, 1500)
    conflicts = [raw for category, raw in bad if category == "conflicting_duplicate"]
    others = [raw for category, raw in bad if category != "conflicting_duplicate"]
    mixed: list[bytes] = []
    step = max(len(workload) // len(others), 1)
    for i, line in enumerate(workload):
        mixed.append(line)
        if i % step == 0 and others:
            mixed.append(others.pop())
    mixed += others + conflicts  # a conflicting duplicate arrives after the event it contradicts
    scenario.run.start_worker()
    asyncio.run(scenario.produce(mixed))
    state, ids, dead = scenario.finish(workload, produced=len(mixed))
    scenario.run.check_workers()
    assert state == undisturbed[0]
    assert set(ids) == set(undisturbed[1])
    assert dead == len(bad)
    letters = [orjson.loads(v) for v in asyncio.run(read_topic(scenario.settings, scenario.run.bootstrap, DLQ))]
    assert all(letter["reason"] and letter["error"] for letter in letters)
    reasons = [letter["reason"] for letter in letters]
    # Flagged, never applied: a conflict, or (older than the dedup horizon) too late to tell.
    flagged = reasons.count("duplicate_txn_id_conflict") + reasons.count("too_late_to_deduplicate")
    assert flagged == len(conflicts)
    assert reasons.count("duplicate_txn_id_conflict") > len(conflicts) // 2
    assert scenario.applied_total() == len(workload)


def test_broker_loss_keeps_state_and_a_resend_changes_nothing(
    scenario: Scenario,
    workload: list[bytes],
    undisturbed: tuple[bytes, dict[str, bytes]],
    undisturbed_board: Board,
) -> None:
    """The embedded broker keeps nothing across a restart (docs/reliability.md): what
    the product promises is that Redis state survives and re-sending the source
    is safe — every event already applied is a no-op, nothing fires twice."""
    from streams.clients import ensure_topics
    from streams.topics import all_topics

    assert scenario.run.stack is not None and scenario.run.stack.broker is not None
    worker = scenario.run.start_worker()
    asyncio.run(scenario.produce(workload))
    before = scenario.finish(workload)
    assert_same_outcome(before, undisturbed, exact_once=True)
    scenario.run.stop_worker(worker, kill=True)
    scenario.run.workers.remove(worker)
    scenario.run.stack.broker.restart()  # empty: no topics, no offsets
    asyncio.run(ensure_topics(scenario.run.bootstrap, all_topics(scenario.settings.partitions), scenario.settings))
    scenario.run.start_worker()
    asyncio.run(scenario.produce(workload))  # the source re-sends everything
    state, ids, dead = scenario.finish(workload)
    assert state == undisturbed[0]
    assert ids == [], "a re-sent event fired a finding again"
    scenario.assert_board(undisturbed_board)  # a replay of everything moves no aggregate
    # Events older than the dedup horizon (120 days before the customer's newest event)
    # whose txn_id the state no longer remembers cannot be told from new ones: they are
    # dead-lettered, never applied twice (an id still remembered is a plain repeat).
    horizon = scenario.settings.dedup_horizon_days * 86_400_000_000
    newest: dict[str, int] = {}
    for line in workload:
        obj = orjson.loads(line)
        newest[obj["customer_id"]] = max(newest.get(obj["customer_id"], 0), ts_us(obj))
    remembered = scenario.remembered_ids()
    too_old = sum(
        1
        for line in workload
        if ts_us(o := orjson.loads(line)) < newest[o["customer_id"]] - horizon and o["txn_id"] not in remembered
    )
    letters = [orjson.loads(v) for v in asyncio.run(read_topic(scenario.settings, scenario.run.bootstrap, DLQ))]
    assert dead == too_old > 0
    assert {letter["reason"] for letter in letters} == {"too_late_to_deduplicate"}
    assert scenario.applied_total() == len(workload)


def ts_us(obj: dict[str, Any]) -> int:
    import datetime as dt

    return to_us(dt.datetime.fromisoformat(obj["ts"]))

"""The same movements as JSON and as camt.053 converted by ``fundflow convert camt``, each run
through ``fundflow backtest`` (the real pipeline: broker, workers, Redis), give the same
``state.jsonl``: the camt adapter feeds the monitor exactly what core banking's JSON would.

The Berka movements carry no reversals; the unit tests (tests/unit/test_camt.py) cover reversals
field by field, and tests/connected/test_reversals_connected.py their effect on the pipeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest

from streams.tools.berka import berka_lines
from tests.support.backtests import backtests
from tests.support.camtgen import BANK_BIC, statement

pytestmark = pytest.mark.connected

ROOT = Path(__file__).resolve().parents[2]
MOVEMENTS = 2000


def test_camt_and_json_of_the_same_movements_give_the_same_state(tmp_path: Path) -> None:
    zone = ZoneInfo("Asia/Shanghai")
    movements = [o for o in map(orjson.loads, berka_lines(None, zone)) if "txn_id" in o][:MOVEMENTS]
    # Berka's movements carry no currency (the deployment's); a camt entry always names one: CNY,
    # the deployment's default, on both sides (the amounts have 2 decimals in both).
    movements = [{**m, "currency": "CNY"} for m in movements]
    # A camt entry carries no ledger balance after it (only the statement's balances do), so the
    # converted events have no balance_after: the JSON side goes without it too.
    movements = [{k: v for k, v in m.items() if k != "balance_after"} for m in movements]
    as_json = tmp_path / "movements.jsonl"
    as_json.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in movements))
    camt = tmp_path / "statement.xml"
    camt.write_bytes(statement(movements, version="08"))
    converted = tmp_path / "from-camt.jsonl"
    conversion = subprocess.run(
        [sys.executable, "-m", "streams.cli.main", "convert", "camt", str(camt), "--out", str(converted),
         "--bank-bic", BANK_BIC, "--zone", "Asia/Shanghai"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert conversion.returncode == 0, conversion.stderr
    assert f"{MOVEMENTS} events" in conversion.stdout and "refused 0" in conversion.stdout, conversion.stdout
    assert len(converted.read_bytes().splitlines()) == MOVEMENTS

    first, second = backtests((as_json, tmp_path / "json"), (converted, tmp_path / "camt"))
    ours, theirs = ((run / "state.jsonl").read_bytes().splitlines() for run in (first, second))
    assert len(ours) == len({m["customer_id"] for m in movements}) > 0
    assert sorted(ours) == sorted(theirs)
    for run in (first, second):
        assert (run / "dlq.jsonl").read_bytes() == b"", "no movement may be dead-lettered"

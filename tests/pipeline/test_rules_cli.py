"""The rule versions from the command line (``streams.cli.versions``), run in this process
(``main``, as ``tests/pipeline/test_webhook.py`` does) against a real Redis: who acts is
``--as NAME`` with the role the people registry gives NAME, four eyes hold as in the API,
a refusal or a bad argument is one line, and ``fundflow tune --propose`` proposes its
suggestion."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from cases.people import add
from rules.config import RulesConfig
from rules.versions import fingerprint
from streams.cli.main import main
from streams.clients import connect
from streams.storage.keys import Keys
from streams.storage.rulebook import Rulebook
from tests.support.tuning import history, write

PREFIX = "rcli"
FP = "0" * 32


def setup(redis_url: str) -> None:
    async def go() -> None:
        client = connect(redis_url)
        try:
            for name, role in (("li.wei", "analyst"), ("zhang", "supervisor"), ("chen", "supervisor"),
                               ("kan", "viewer")):  # fmt: skip
                await add(client, Keys(PREFIX).cases, name, role, FP, "test")  # type: ignore[arg-type]
            fp, text = fingerprint(RulesConfig())
            await Rulebook(client, Keys(PREFIX)).bootstrap(text, fp, 0)
        finally:
            await client.aclose()

    asyncio.run(go())


def run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str, *args: str, code: int = 0
) -> str:
    """``fundflow ARGS`` in this process; its stdout (or, when it fails, its one line of stderr)."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("FUNDFLOW_")]:
            patch.delenv(name)
        patch.setenv("FUNDFLOW_REDIS_URL", redis_url)
        patch.setenv("FUNDFLOW_KEY_PREFIX", PREFIX)
        got = main(list(args))
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    if code:
        assert len(err.strip().splitlines()) == 1 and err.startswith("fundflow: error:"), err
        return err
    return out


def test_a_version_from_proposal_to_rollback_on_the_command_line(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup(redis_url)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("outflow:\n  large_external_amount: 80000\n", encoding="utf-8")

    def fundflow(*args: str, code: int = 0) -> str:
        return run(monkeypatch, capsys, redis_url, *args, code=code)

    said = fundflow("rules", "propose", str(candidate), "--reason", "fewer alerts", "--as", "li.wei")
    assert said.startswith("version 2 proposed from") and "outflow.large_external_amount: 100000 -> 80000" in said
    assert "refused (forbidden)" in fundflow("rules", "propose", str(candidate), "--reason", "r", "--as", "kan", code=1)
    assert "not in the people registry" in fundflow("rules", "approve", "2", "--as", "nobody", code=1)
    missing = str(tmp_path / "missing.yaml")
    assert "cannot read" in fundflow("rules", "propose", missing, "--reason", "r", "--as", "li.wei", code=1)
    assert "refused (forbidden)" in fundflow("rules", "approve", "2", "--as", "li.wei", code=1)
    assert "approved by zhang" in fundflow("rules", "approve", "2", "--as", "zhang")
    assert "refused (conflict)" in fundflow("rules", "approve", "2", "--as", "chen", code=1)
    promoted = fundflow("rules", "promote", "2", "--at", "1998-01-01T00:00:00+08:00", "--as", "chen")
    assert promoted.startswith("version 2 in force from 1997-12-31T16:00:00+00:00")
    assert "--at '1998-01-01'" in fundflow("rules", "promote", "2", "--at", "1998-01-01", "--as", "chen", code=1)
    assert fundflow("rules", "diff", "1", "2").splitlines() == ["outflow.large_external_amount: 100000 -> 80000"]
    assert "refused (not_found)" in fundflow("rules", "diff", "1", "9", code=1)
    table = fundflow("rules", "history").splitlines()
    assert table[1].split()[:3] == ["2", "approved", "now"] and "fewer alerts" in table[1]
    assert table[2].split()[:2] == ["1", "approved"]
    assert fundflow("rules", "rollback", "--at", "1999-01-01T00:00:00Z", "--as", "zhang").startswith(
        "rolled back: version 1 in force from 1999-01-01T00:00:00+00:00")  # fmt: skip
    fundflow("rules", "propose", str(candidate), "--reason", "again", "--as", "zhang")  # (v2's rules are not in force)
    assert "version 3 runs in shadow" in fundflow("shadow", "start", "3", "--as", "li.wei")
    report = json.loads(fundflow("shadow", "report", "--json"))
    assert (report["version"], report["running"], report["records"]) == (3, True, 0)
    assert report["summary"] == "version 3 drops 0 findings and adds 0"
    assert "stopped by li.wei" in fundflow("shadow", "stop", "--as", "li.wei")
    assert fundflow("shadow", "report", "3").startswith("version 3 drops 0 findings and adds 0\n")
    assert "refused (conflict)" in fundflow("shadow", "stop", "--as", "li.wei", code=1)
    assert "rejected by chen" in fundflow("rules", "reject", "3", "--reason", "not now", "--as", "chen")
    versions = json.loads(fundflow("rules", "history", "--json"))
    assert [v["status"] for v in versions["versions"]] == ["approved", "approved", "rejected"]
    assert [a["action"] for a in versions["audit"]][:3] == ["reject", "shadow_stop", "shadow_start"]
    assert "(see `fundflow rules approve --help`)" in fundflow("rules", "approve", "x", "--as", "z", code=2)


def test_tune_proposes_its_suggestion(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup(redis_url)
    events = write(tmp_path / "events.jsonl", history(8))
    out = tmp_path / "out"
    args = ("tune", str(events), "--out", str(out), "--no-cases")
    assert "--propose needs --as NAME" in run(monkeypatch, capsys, redis_url, *args, "--propose", code=2)
    said = run(monkeypatch, capsys, redis_url, *args, "--propose", "--as", "li.wei")
    proposed = next(line for line in said.splitlines() if line.startswith("version 2 proposed"))
    assert str(out / "rules.yaml") in proposed

    async def stored() -> str:
        client = connect(redis_url)
        try:
            version = await Rulebook(client, Keys(PREFIX)).version(2)
            assert version is not None and version.author == "li.wei" and version.reason.startswith("fundflow tune")
            return version.yaml
        finally:
            await client.aclose()

    assert asyncio.run(stored()) == (out / "rules.yaml").read_text(encoding="utf-8")

"""rules.yaml: validated; it gives a deployment its first version, and a file changed later is
never applied (rules change through versions), only said."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from rules.config import RULE_NAMES, RulesConfig, RulesConfigError, check_rules, load_rules, parse_rules
from streams import telemetry
from streams.errors import ConfigError
from streams.rulestep import RulesProvider, Timeline, build_step, fingerprint, rules_at_start
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_file_is_valid_and_equals_the_defaults() -> None:
    assert load_rules(ROOT / "deploy" / "rules.yaml") == RulesConfig()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("outflow: [1, 2", "not valid YAML"),
        ("- a\n- b", "top level must be a mapping"),
        ("outflow:\n  streak_days: one", "outflow.streak_days"),
        ("outflow:\n  streak_days: 1", "outflow.streak_days"),
        ("collection:\n  max_collection_rate: 1.5", "collection.max_collection_rate"),
        ("sweep:\n  min_amount: NaN", "sweep.min_amount"),
        ("marketing:\n  per_day: -1", "marketing.per_day"),
        ("surprise: true", "surprise"),
        ("outflow:\n  typo_threshold: 3", "outflow.typo_threshold"),
        ("marketing:\n  quiet_start: '25:00'", "marketing.quiet_start"),
        ("", "empty file"),
        ("# only a comment\n", "empty file"),
        ("version: 99", "line 1: version: unsupported version 99"),
        ("disabled: [fast_in_fast_out_typo]", "line 1: disabled.0: unknown rule 'fast_in_fast_out_typo'"),
        ("version: 1\ndisabled:\n  - churn_drift\n  - nope", "line 4: disabled.1: unknown rule 'nope'"),
        ("outflow:\n  streak_days: 5\noutflow:\n  streak_days: 6", "line 3: outflow: written twice (first on line 1)"),
        ("outflow:\n  streak_days: 5\n  streak_days: 6", "line 3: outflow.streak_days: written twice"),
        ("outflow:\n  typo_threshold: 3", "line 2: outflow.typo_threshold: unknown key"),
        ("marketing:\n  campaigns:\n    swep: x", "line 3: marketing.campaigns.swep"),
    ],
)
def test_invalid_files_are_rejected_with_one_clear_line(text: str, fragment: str) -> None:
    with pytest.raises(RulesConfigError) as caught:
        parse_rules(text, "rules.yaml")
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_a_changed_file_is_never_applied_and_says_so_once_in_a_gauge(tmp_path: Path) -> None:
    """A running system changes rules only through versions (docs/rules-lifecycle.md): the file
    gives version 1, and a file that differs from the version in force later is not applied
    (``fundflow_rules_file_ignored`` is 1 while it differs, or cannot be read)."""
    path = tmp_path / "rules.yaml"
    path.write_text("outflow:\n  streak_days: 7\n")
    now = [0.0]
    provider = RulesProvider(path, check_every_seconds=1.0, clock=lambda: now[0])
    ignored = telemetry.RULES_FILE_IGNORED
    assert provider.current().outflow.streak_days == 7 and ignored._value.get() == 0

    path.write_text("outflow:\n  streak_days: 9\n")
    os.utime(path, (1, 1))
    now[0] = 2.0
    assert provider.current().outflow.streak_days == 7 and ignored._value.get() == 1  # not applied

    path.write_text("outflow:\n  streak_days: [broken\n")
    os.utime(path, (2, 2))
    now[0] = 4.0
    assert provider.current().outflow.streak_days == 7 and ignored._value.get() == 1

    path.unlink()
    now[0] = 6.0
    assert provider.current().outflow.streak_days == 7 and ignored._value.get() == 1

    path.write_text("outflow:\n  streak_days: 7\n")
    os.utime(path, (3, 3))
    now[0] = 8.0
    assert provider.current().outflow.streak_days == 7 and ignored._value.get() == 0  # the file agrees again

    promoted = RulesConfig.model_validate({"outflow": {"streak_days": 9}})
    provider.follow(Timeline.fixed(promoted))  # a version promoted: the step runs under it
    now[0] = 10.0
    assert provider.current() is promoted and ignored._value.get() == 1  # and the file is now the odd one


def test_a_bad_file_at_start_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("outflow: {streak_days: zero}")
    with pytest.raises(RulesConfigError):
        RulesProvider(path)


def test_every_problem_has_its_own_line_in_file_order() -> None:
    text = "version: 2\noutflow:\n  streak_days: x\n  nope: 1\ndisabled: [churn_drift, typo]\n"
    config, problems = check_rules(text)
    assert config is None
    assert [p.split(":", 1)[0] for p in problems] == ["line 1", "line 3", "line 4", "line 5"]
    with pytest.raises(RulesConfigError) as caught:
        parse_rules(text, "r.yaml")
    assert str(caught.value).startswith("r.yaml: line 1: version") and "3 more" in str(caught.value)
    assert caught.value.problems == [f"r.yaml: {p}" for p in problems]


def test_every_rule_the_engine_emits_can_be_disabled() -> None:
    """``disabled`` refuses names outside RULE_NAMES: it must hold every name a finding can carry."""
    source = (ROOT / "rules" / "engine.py").read_text()
    emitted = set(re.findall(r'(?:\.emit\(|_due_finding\(\s*j,\s*entry,\s*when,)\s*"(\w+)"', source))
    emitted |= {f"push_{source}" for source in re.findall(r'\.push\(\w+, "(\w+)"\)', source)}
    assert emitted == RULE_NAMES


def test_stored_rules_are_read_as_written() -> None:
    """Rules once in force (their JSON in Redis) replay even if a file would be refused now."""
    stored = RulesConfig.model_validate({"disabled": ["an_old_typo"]})
    assert RulesConfig.model_validate_json(fingerprint(stored)[1]).disabled == {"an_old_typo"}


def test_a_missing_file_at_start_is_an_error_unless_defaults_are_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no rules file at .*FUNDFLOW_RULES_FILE=defaults"):
        rules_at_start(Settings(rules_file=tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="no rules file"):
        build_step(Settings(rules_file=tmp_path / "missing.yaml"))
    assert build_step(Settings(rules_file=Path("defaults"))).provider.config == RulesConfig()


def test_a_bad_file_at_start_runs_on_the_fallback_when_given_one(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 7\n")
    last_good = RulesConfig.model_validate({"outflow": {"streak_days": 5}})
    now = [0.0]
    provider = RulesProvider(path, check_every_seconds=1.0, clock=lambda: now[0], fallback=last_good)
    assert provider.current() is last_good and telemetry.RULES_RELOAD_REJECTED._value.get() == 1
    assert provider.on_fallback  # (until the worker follows the versions in Redis: VersionFollower)
    path.write_text("outflow:\n  streak_days: 6\n")
    os.utime(path, (1, 1))
    now[0] = 2.0
    assert provider.current() is last_good  # a good file now: still not applied, only said
    assert telemetry.RULES_FILE_IGNORED._value.get() == 1

"""rules.yaml: validated, hot-reloaded, and a bad file never replaces the last good one."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from rules.config import RulesConfig, RulesConfigError, load_rules, parse_rules
from streams.rulestep import RulesProvider

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
    ],
)
def test_invalid_files_are_rejected_with_one_clear_line(text: str, fragment: str) -> None:
    with pytest.raises(RulesConfigError) as caught:
        parse_rules(text, "rules.yaml")
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_hot_reload_takes_effect_and_a_bad_file_keeps_the_last_good(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("outflow:\n  streak_days: 7\n")
    now = [0.0]
    provider = RulesProvider(path, check_every_seconds=1.0, clock=lambda: now[0])
    assert provider.current().outflow.streak_days == 7

    path.write_text("outflow:\n  streak_days: 9\n")
    os.utime(path, (1, 1))
    assert provider.current().outflow.streak_days == 7  # not checked again yet
    now[0] = 2.0
    assert provider.current().outflow.streak_days == 9

    path.write_text("outflow:\n  streak_days: [broken\n")
    os.utime(path, (2, 2))
    now[0] = 4.0
    assert provider.current().outflow.streak_days == 9  # rejected: the last good stays

    path.unlink()
    now[0] = 6.0
    assert provider.current().outflow.streak_days == 9  # unreadable: the last good stays

    path.write_text("collection:\n  min_amount: 1234.5\n")
    os.utime(path, (3, 3))
    now[0] = 8.0
    assert provider.current().collection.min_amount == Decimal("1234.5")


def test_a_bad_file_at_start_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("outflow: {streak_days: zero}")
    with pytest.raises(RulesConfigError):
        RulesProvider(path)

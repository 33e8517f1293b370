"""The fingerprint a changelog entry names its rules by (``streams.rulestep.fingerprint``)
is the same in every process for the same rules: a replay in another process finds them."""

from __future__ import annotations

import os
import subprocess
import sys

from rules.config import RulesConfig, parse_rules
from streams.rulestep import RulesProvider, RulesStep, fingerprint
from streams.settings import Settings, state_config

RULES = """
disabled: [churn_drift, ledger_drift, fast_in_fast_out, large_external_outflow]
escalate_tiers: ["I", "II", "III"]
marketing:
  opt_out: [c1, c2, c3, c4, c5, c6, c7, c8]
"""

PROGRAM = f"""
from rules.config import parse_rules
from streams.rulestep import fingerprint
print(fingerprint(parse_rules({RULES!r}, "x"))[0])
"""


def test_the_same_rules_have_one_fingerprint_whatever_the_hash_seed() -> None:
    seen = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
        seen.add(out.stdout.strip())
    assert seen == {fingerprint(parse_rules(RULES, "x"))[0]}


def test_stored_rules_are_learned_under_their_fingerprint() -> None:
    rules = parse_rules(RULES, "x")
    fp, text = fingerprint(rules)
    assert RulesConfig.model_validate_json(text) == rules
    assert fingerprint(RulesConfig())[0] != fp
    reader = RulesStep(state_config(Settings()), RulesProvider(None))
    assert reader.replay_step(fp) is None
    assert reader.learn(text) == fp and reader.replay_step(fp) is not None

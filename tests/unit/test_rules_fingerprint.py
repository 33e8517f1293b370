"""The fingerprint a changelog entry names its rules by (``streams.rulestep.fingerprint``)
is the same in every process for the same rules: a replay in another process finds them."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from rules.config import RulesConfig
from streams.rulestep import RulesProvider, RulesStep, fingerprint
from streams.settings import Settings, state_config

# Sets, whose iteration order follows the hash seed. ``escalate_tiers`` and ``marketing.opt_out``
# are refused in a rules file since consent and routing moved to delivery (docs/contact.md), but
# rules stored by an earlier version still carry them, and their replay must find them.
RULES = """
disabled: [churn_drift, ledger_drift, fast_in_fast_out, large_external_outflow]
escalate_tiers: ["I", "II", "III"]
marketing:
  opt_out: [c1, c2, c3, c4, c5, c6, c7, c8]
"""

PROGRAM = f"""
import yaml
from rules.config import RulesConfig
from streams.rulestep import fingerprint
print(fingerprint(RulesConfig.model_validate(yaml.safe_load({RULES!r})))[0])
"""


def stored_rules() -> RulesConfig:
    """The rules as an earlier version stored them (read as stored rules are: not strictly)."""
    return RulesConfig.model_validate(yaml.safe_load(RULES))


def test_the_same_rules_have_one_fingerprint_whatever_the_hash_seed() -> None:
    seen = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
        seen.add(out.stdout.strip())
    assert seen == {fingerprint(stored_rules())[0]}


def test_stored_rules_are_learned_under_their_fingerprint() -> None:
    rules = stored_rules()
    fp, text = fingerprint(rules)
    assert RulesConfig.model_validate_json(text) == rules
    assert fingerprint(RulesConfig())[0] != fp
    reader = RulesStep(state_config(Settings()), RulesProvider(None))
    assert reader.replay_step(fp) is None
    assert reader.learn(text) == fp and reader.replay_step(fp) is not None

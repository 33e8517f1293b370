"""``fundflow rules check FILE``: the worker's validation of a rules file, offline.

The same reading as a worker's at start-up and at reload (``rules.config.check_rules``):
one line per problem, with its line in the file, and exit 1; a good file gets one line
with what a worker would run under (its fingerprint is what ``{p}:rules:current`` names
once a worker loads it).
"""

from __future__ import annotations

from pathlib import Path

import click

from rules.config import check_rules
from streams.errors import ConfigError
from streams.rulestep import fingerprint


def check_rules_file(path: Path) -> int:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    config, problems = check_rules(text)
    for problem in problems:
        click.echo(f"{path}: {problem}")
    if config is None or problems:
        return 1
    disabled = ", ".join(sorted(config.disabled)) or "none"
    click.echo(f"{path}: ok: version {config.version}, disabled: {disabled}, fingerprint {fingerprint(config)[0]}")
    return 0

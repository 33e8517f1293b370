"""``fundflow rules propose|approve|reject|promote|rollback|history|diff`` and
``fundflow shadow start|stop|report``: the rule versions from the command line.

The CLI runs as an operator on a server that reaches the deployment's Redis
(``FUNDFLOW_REDIS_URL``), so it does not present a token: a change names who makes
it with ``--as NAME``, and NAME must be registered in the people registry
(``fundflow people add``, ``cases.people``); the role is the one registered there, never
one the command line claims. The versions' rules (``rules.versions``) then apply as
they do to the API: an analyst or supervisor proposes, a different supervisor approves,
a supervisor promotes, and the audit records NAME. The reads need no name.

``fundflow shadow`` is shared with the history shadow (``fundflow shadow EVENTS.jsonl
--rules CAND --out DIR``, ``streams.cli.main``): ``start``, ``stop`` and ``report`` are
commands of that group; any other first argument is a file of history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

# (only click above: `fundflow --help` stays fast; each command imports what it uses)

T = TypeVar("T")
AS = click.option("--as", "who", required=True, metavar="NAME", help="who acts: a name in the people registry")


def now_us() -> int:
    return time.time_ns() // 1000


def parse_instant(text: str) -> int:
    """An RFC 3339 instant with its offset, in µs since the epoch (``ConfigError`` in one line)."""
    from streams.errors import ConfigError

    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--at {text!r}: not an RFC 3339 time (e.g. 2026-12-05T18:00:00+08:00)") from None
    if when.tzinfo is None:
        raise ConfigError(f"--at {text!r}: give its offset (e.g. +08:00 or Z): event time is an instant")
    return (when - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def run(body: Callable[[Any, Any], Awaitable[T]]) -> T:
    """``body(rulebook, case_store)`` against the deployment's Redis; a refusal is one line."""
    from cases.store import CaseStore
    from rules.versions import RuleRefusal
    from streams.api.rules import grace_us
    from streams.clients import connect
    from streams.errors import ConfigError
    from streams.settings import Settings
    from streams.storage.keys import Keys
    from streams.storage.rulebook import Rulebook

    config = Settings()
    if not config.redis_url:
        raise ConfigError("FUNDFLOW_REDIS_URL not set: point at your servers, or run `fundflow stack` "
                          "and export the lines it prints")  # fmt: skip

    async def go() -> T:
        client = connect(config.redis_url or "", config.redis_cluster)
        keys = Keys(config.key_prefix)
        try:
            return await body(Rulebook(client, keys, grace_us(config)), CaseStore(client, keys))
        except RuleRefusal as exc:
            raise ConfigError(f"refused ({exc.code.value}): {exc.message}") from None
        finally:
            await client.aclose()

    return asyncio.run(go())


async def role_of(book: Any, name: str) -> str:
    """The role the people registry gives ``name`` (``ConfigError`` when it is not registered)."""
    from cases.people import registry
    from streams.errors import ConfigError

    person = (await registry(book.redis, book.keys.cases)).get(name)
    if person is None:
        raise ConfigError(f"{name} is not in the people registry: a supervisor runs "
                          f"`fundflow people add {name} --role ROLE --token-fingerprint F --by THEM`")  # fmt: skip
    return str(person["role"])


def iso(us: int | None) -> str:
    if us is None:
        return "-"
    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)).isoformat(timespec="seconds")


def propose_text(text: str, reason: str, who: str, source: str) -> int:
    """Propose the rules of ``text`` as ``who``; prints the new version and what it changes."""

    async def body(book: Any, _: Any) -> Any:
        return await book.propose(text, who, await role_of(book, who), reason, now_us())

    version = run(body)
    click.echo(f"version {version.number} proposed from {source} by {who} ({version.author_role}), "
               f"fingerprint {version.fingerprint}; a supervisor other than {who} approves it:"
               f" `fundflow rules approve {version.number} --as NAME`")  # fmt: skip
    for line in version.diff or ("(no setting differs from the version in force)",):
        click.echo(f"  {line}")
    return 0


def read_text(path: Path) -> str:
    from streams.errors import ConfigError

    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def add_version_commands(rules_group: click.Group, shadow_group: click.Group) -> None:
    """Register the version commands on ``fundflow rules`` and the live shadow's on ``fundflow shadow``."""
    for command in (propose, approve, reject, promote, rollback, history, diff):
        rules_group.add_command(command)
    for command in (shadow_start, shadow_stop, shadow_report_command):
        shadow_group.add_command(command)


@click.command("propose", help="propose the rules of FILE as a new version (four eyes: another supervisor approves)")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--reason", required=True, help="why: kept with the version and in the audit")
@AS
def propose(file: Path, reason: str, who: str) -> int:
    return propose_text(read_text(file), reason, who, str(file))


@click.command("approve", help="approve version N (a supervisor who did not propose it)")
@click.argument("number", type=click.IntRange(min=1))
@AS
def approve(number: int, who: str) -> int:
    async def body(book: Any, _: Any) -> Any:
        return await book.approve(number, who, await role_of(book, who), now_us())

    version = run(body)
    click.echo(f"version {version.number} approved by {who}; `fundflow rules promote {number} --as NAME` puts it "
               "in force")  # fmt: skip
    return 0


@click.command("reject", help="reject version N (a supervisor who did not propose it)")
@click.argument("number", type=click.IntRange(min=1))
@click.option("--reason", required=True)
@AS
def reject(number: int, reason: str, who: str) -> int:
    async def body(book: Any, _: Any) -> Any:
        return await book.reject(number, who, await role_of(book, who), reason, now_us())

    run(body)
    click.echo(f"version {number} rejected by {who}")
    return 0


AT = click.option("--at", "at", metavar="ISO", help="event time it takes effect from (default: now + the grace)")


@click.command("promote", help="put approved version N in force from an event-time instant (a supervisor)")
@click.argument("number", type=click.IntRange(min=1))
@AT
@AS
def promote(number: int, at: str | None, who: str) -> int:
    effective = parse_instant(at) if at is not None else None

    async def body(book: Any, _: Any) -> Any:
        return await book.promote(number, who, await role_of(book, who), now_us(), effective)

    entry = run(body)
    click.echo(f"version {entry.version} in force from {iso(entry.effective_us)} (event time), promoted by {who}")
    return 0


@click.command("rollback", help="promote again the version in force before the last promoted one (a supervisor)")
@AT
@AS
def rollback(at: str | None, who: str) -> int:
    effective = parse_instant(at) if at is not None else None

    async def body(book: Any, _: Any) -> Any:
        return await book.rollback(who, await role_of(book, who), now_us(), effective)

    entry = run(body)
    click.echo(f"rolled back: version {entry.version} in force from {iso(entry.effective_us)} (event time), by {who}")
    return 0


def history_lines(versions: Sequence[Any], timeline: Sequence[Any], shadow: Any, now: int) -> list[str]:
    from rules.versions import version_at

    current = version_at(timeline, now)
    lines = [f"{'N':>4}  {'status':9} {'in force':9} {'author':16} {'approver':16} {'proposed':25} reason"]
    for v in reversed(versions):
        mark = "now" if current is not None and current.version == v.number else ""
        if shadow is not None and shadow.version == v.number:
            mark = "shadow"
        decided = v.approver or v.rejecter or "-"
        lines.append(f"{v.number:>4}  {v.status:9} {mark:9} {v.author:16} {decided:16} {iso(v.proposed_us):25} "
                     f"{v.reason}")  # fmt: skip
    lines.append("timeline (event time):")
    for entry in timeline:
        lines.append(f"  from {iso(entry.effective_us)}: version {entry.version} ({entry.fingerprint}), by {entry.by}")
    return lines


@click.command("history", help="every rule version, newest first, and the timeline of promotions")
@click.option("--json", "as_json", is_flag=True)
def history(as_json: bool) -> int:
    async def body(book: Any, _: Any) -> tuple[Any, Any, Any, Any]:
        return await book.versions(), await book.timeline(), await book.shadow(), await book.audit(1000)

    versions, timeline, shadow, audit = run(body)
    if as_json:
        click.echo(json.dumps({"versions": [v.as_dict() for v in versions],
                               "timeline": [e.as_dict() for e in timeline],
                               "shadow": shadow.as_dict() if shadow else None, "audit": audit},
                              indent=2, ensure_ascii=False, default=str))  # fmt: skip
        return 0
    if not versions:
        click.echo("no rule versions yet: the first worker makes version 1 from FUNDFLOW_RULES_FILE")
        return 0
    for line in history_lines(versions, timeline, shadow, now_us()):
        click.echo(line)
    return 0


@click.command("diff", help="what changes from version A to version B, one setting per line")
@click.argument("a", type=click.IntRange(min=1))
@click.argument("b", type=click.IntRange(min=1))
def diff(a: int, b: int) -> int:
    from rules.versions import Code, RuleRefusal, diff_lines

    async def body(book: Any, _: Any) -> list[str]:
        found = []
        for number in (a, b):
            text = await book.rules_json(number)
            if text is None:
                raise RuleRefusal(Code.NOT_FOUND, f"no version {number}")
            found.append(text)
        return diff_lines(found[0], found[1])

    lines = run(body)
    for line in lines or [f"versions {a} and {b} have the same rules"]:
        click.echo(line)
    return 0


@click.command("start", help="run version N in shadow beside the live rules (an analyst or supervisor)")
@click.argument("number", type=click.IntRange(min=1))
@AS
def shadow_start(number: int, who: str) -> int:
    async def body(book: Any, _: Any) -> Any:
        return await book.start_shadow(number, who, await role_of(book, who), now_us())

    run(body)
    click.echo(f"version {number} runs in shadow from now; `fundflow shadow report` shows what it changes")
    return 0


@click.command("stop", help="stop the shadow run (its records stay for the report)")
@AS
def shadow_stop(who: str) -> int:
    async def body(book: Any, _: Any) -> Any:
        return await book.stop_shadow(who, await role_of(book, who), now_us())

    stopped = run(body)
    click.echo(f"shadow run of version {stopped.version} stopped by {who}")
    return 0


def report_lines(report: dict[str, Any], customers: int = 20) -> list[str]:
    lines = [report["summary"] + (" (running)" if report["running"] else "")]
    if len(report["runs"]) > 1:
        lines.append("runs: " + ", ".join(f"{r['run']} ({r['records']} records)" for r in report["runs"]))
    lines.append("")
    lines.append(f"{'rule':28} {'live':>7} {'shadow':>7} {'added':>6} {'removed':>7} {'changed':>7} "
                 f"{'removed: false positive':>24} {'confirmed':>9}")  # fmt: skip
    for row in report["rules"]:
        counts = f"{row['live']:>7} {row['shadow']:>7} {row['added']:>6} {row['removed']:>7} {row['changed']:>7}"
        lines.append(f"{row['rule']:28} {counts} {row['removed_false_positive']:>24} {row['removed_confirmed']:>9}")
    if report["suppressed"]:
        lines += ["", "pushes the shadow's caps, quiet hours or veto would have suppressed:"]
        lines += [f"  {s['rule']} {s['why']}: {s['count']}" for s in report["suppressed"]]
    if report["customers"]:
        lines += ["", f"customers most changed ({report['customers_total']} in all): added / removed / changed"]
        lines += [f"  {c['customer_id']}: {c['added']} / {c['removed']} / {c['changed']}"
                  for c in report["customers"][:customers]]  # fmt: skip
    return lines


@click.command("report", help="what version N (default: the one in shadow) changes, joined to case outcomes")
@click.argument("number", type=click.IntRange(min=1), required=False)
@click.option("--run", "run_name", help="which run (VERSION@FROM_US; default: the one running, else the latest)")
@click.option("--json", "as_json", is_flag=True)
def shadow_report_command(number: int | None, run_name: str | None, as_json: bool) -> int:
    from streams.api.rule_report import shadow_report

    async def body(book: Any, cases: Any) -> dict[str, Any]:
        return await shadow_report(book, cases, number, run_name)

    report = run(body)
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        for line in report_lines(report):
            click.echo(line)
    return 0

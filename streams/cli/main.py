"""``fundflow``: the command line (click). Each command is a few lines beside the body it
calls; the bodies live where their layer is (``streams.worker``, ``streams.tools.*``,
``streams.api``, ``alerts``, ``streams.cli.commands``).

Every failure a user can cause (bad arguments, a missing file, servers that do not
answer, a malformed setting) ends in ONE line on stderr and a non-zero exit: 2 for bad
usage, 1 for everything else. Tracebacks are for bugs only (set ``FUNDFLOW_DEBUG=1`` to
see them for any error).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from streams import stopping, topics
from streams.cli.versions import add_version_commands, propose_text, read_text
from streams.errors import ConfigError, FundFlowError
from streams.settings import Settings, safe_url

# Each command imports its body when it runs (below, in the command): `fundflow --help` and
# a bad argument answer in a few tenths of a second instead of the second it takes to
# import Faust, aiokafka, aiohttp and the tools that one command never uses.

FINDING_TOPICS = {"alerts": topics.ALERTS, "recommendations": topics.RECOMMENDATIONS, "marketing": topics.MARKETING}


class Positive(click.ParamType):
    """A number > 0 (``float`` or ``int``), refused in words a user understands."""

    def __init__(self, kind: type[float] | type[int]) -> None:
        self.kind = kind
        self.name = f"positive {kind.__name__}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | int:
        if isinstance(value, self.kind):
            number = value
        else:
            try:
                number = self.kind(value)
            except ValueError:
                self.fail(f"{value!r} is not a number", param, ctx)
        if number <= 0:
            self.fail(f"{value!r} must be > 0", param, ctx)
        return number


class Counts(click.ParamType):
    """A comma-separated list of whole numbers > 0, e.g. ``500,1000,2000``."""

    name = "counts"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        try:
            counts = [int(part) for part in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not counts or min(counts) <= 0:
            self.fail(f"{value!r}: every count must be > 0", param, ctx)
        return counts


BATCH_COUNTS = Counts()
POSITIVE_FLOAT = Positive(float)
POSITIVE_INT = Positive(int)
PATH = click.Path(path_type=Path)
SHIPPED = Path("<shipped>")  # ``replay --berka`` with no DIR: the Berka copy shipped with FundFlow
# Commands that run until stopped: SIGINT and SIGTERM stop them within a bound, exit 0 (streams.stopping).
LONG_RUNNING = {"worker", "api", "stack", "demo", "replay", "alerts webhook", "alerts tail"}
LONG_RUNNING |= {"adapt debezium", "adapt canal"}
TOPIC_CHOICE = click.Choice(["alerts", "recommendations", "marketing", "all"])


def settings() -> Settings:
    return Settings()


def servers(config: Settings, need_kafka: bool = True) -> tuple[str, str]:
    """The Kafka bootstrap and Redis URL, or a ``ConfigError`` naming what is not set."""
    missing = [
        name
        for name, value, needed in (
            ("FUNDFLOW_KAFKA_BOOTSTRAP", config.kafka_bootstrap, need_kafka),
            ("FUNDFLOW_REDIS_URL", config.redis_url, True),
        )
        if needed and not value
    ]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: point at your servers, or run `fundflow stack` "
            "and export the lines it prints"
        )
    return config.kafka_bootstrap or "", config.redis_url or ""


def finding_topics(choice: str) -> tuple[str, ...]:
    return tuple(FINDING_TOPICS.values()) if choice == "all" else (FINDING_TOPICS[choice],)


@click.group(
    name="fundflow",
    help="Real-time fund-flow monitor: Kafka -> Faust -> Redis.",
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    if ctx.invoked_subcommand != "worker":
        # Client libraries log connection retries as warnings; the CLI reports the
        # failure itself, in one line (the worker configures its own logging).
        logging.basicConfig(level=logging.CRITICAL)
    if ctx.invoked_subcommand in LONG_RUNNING:
        stopping.install(f"fundflow {ctx.invoked_subcommand}")


@cli.command(help="run a Faust worker (start more to scale out)")
@click.option("--web-port", type=int, help="HTTP port of this worker (one per worker on a host)")
@click.option("--loglevel", type=click.Choice(["debug", "info", "warning", "error"]), default="warning")
def worker(web_port: int | None, loglevel: str) -> int:
    from streams.worker import run_worker

    config = settings()
    bootstrap, redis_url = servers(config)
    return run_worker(config, bootstrap, redis_url, web_port=web_port, loglevel=loglevel)


@cli.command(help="produce events to the input topics (a JSONL FILE, or the Berka data with --berka [DIR])")
@click.argument("file", type=PATH, required=False)
@click.option(
    "--berka",
    type=PATH,
    is_flag=False,
    flag_value=SHIPPED,
    metavar="[DIR]",
    help="convert and replay the Berka data set (no DIR: the copy shipped with FundFlow)",
)
@click.option("--rate", type=POSITIVE_FLOAT, help="at most N events per second")
@click.option("--speedup", type=POSITIVE_FLOAT, help="event time X times faster than real time")
@click.option("--loops", type=POSITIVE_INT, default=1, show_default=True, help="replay N times (fresh ids per loop)")
def replay(file: Path | None, berka: Path | None, rate: float | None, speedup: float | None, loops: int) -> int:
    from streams.tools.replay import run_replay

    if (file is None) == (berka is None):
        raise click.UsageError("give one of FILE or --berka DIR" if file is None else "FILE and --berka are exclusive")
    config = settings()
    if not config.kafka_bootstrap:
        raise ConfigError("FUNDFLOW_KAFKA_BOOTSTRAP not set: run `fundflow stack` and export its lines")
    source = None if berka == SHIPPED else berka
    return asyncio.run(run_replay(config, config.kafka_bootstrap, file, source, rate, speedup, loops))


@cli.command("convert-berka", help="convert the Berka files to events JSONL: [DIR] OUT (no DIR: the shipped copy)")
@click.argument("paths", type=PATH, nargs=-1, required=True, metavar="[DIR] OUT")
def convert_berka_command(paths: tuple[Path, ...]) -> int:
    from streams.tools.berka import convert_berka

    if len(paths) > 2:
        raise click.UsageError("give at most a Berka directory and an output file")
    directory, out = (None, paths[0]) if len(paths) == 1 else paths
    stats = convert_berka(directory, out, settings().zone)
    click.echo(f"wrote {out}: {stats.as_dict()}")
    return 0


@cli.group(help="convert banks' files to TransactionEvents JSONL (docs/feeds.md)", no_args_is_help=False)
def convert() -> None:
    pass


@convert.command("camt", help="ISO 20022 camt.053 / camt.054 XML files to events JSONL")
@click.argument("files", type=PATH, nargs=-1, required=True)
@click.option("--out", type=PATH, required=True, help="the events, in event-time order")
@click.option("--refused", type=PATH, help="the refused entries (default: OUT's sibling NAME.refused.jsonl)")
@click.option("--bank-bic", help="our BIC: a counterparty agent with another BIC makes a movement external")
@click.option("--accounts", type=PATH, help="account -> customer: CSV (account_id,customer_id) or YAML mapping")
@click.option("--codes", type=PATH, help="YAML: bank transaction code -> kind, over the default table")
@click.option("--zone", help="the bank's time zone for times without an offset (default: FUNDFLOW_BANK_TZ)")
def convert_camt_command(
    files: tuple[Path, ...],
    out: Path,
    refused: Path | None,
    bank_bic: str | None,
    accounts: Path | None,
    codes: Path | None,
    zone: str | None,
) -> int:
    from zoneinfo import ZoneInfo

    from feeds.camt import CamtOptions, convert_files, load_accounts, load_codes, refused_path

    try:
        bank_zone = settings().zone if zone is None else ZoneInfo(zone)
    except (KeyError, ValueError):  # ZoneInfoNotFoundError is a KeyError
        raise click.BadParameter(f"unknown time zone {zone!r}", param_hint="--zone") from None
    refused = refused or refused_path(out)
    if refused == out or out in files or refused in files:
        raise click.UsageError("--out, --refused and the input FILEs must be different files")
    mapping = load_accounts(accounts) if accounts is not None else None
    options = CamtOptions(zone=bank_zone, bank_bic=bank_bic or None, accounts=mapping, codes=load_codes(codes))
    click.echo(convert_files(files, out, refused, options).line(out, refused))
    return 0


@cli.command(help="run the real pipeline over a file and write the results")
@click.argument("events", type=PATH)
@click.option("--out", type=PATH, required=True)
@click.option("--timeout", type=POSITIVE_FLOAT, default=900.0, show_default=True, help="seconds to wait")
def backtest(events: Path, out: Path, timeout: float) -> int:
    from streams.tools.backtest import run_backtest

    return run_backtest(settings(), events, out, timeout)


class FileOrCommand(click.Group):
    """A group whose first argument is one of its commands or, when it names none, a file for
    its ``history`` command: ``fundflow shadow EVENTS.jsonl ...`` beside ``fundflow shadow start``."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["history", *args]
        return super().resolve_command(ctx, args)


@cli.group(cls=FileOrCommand, help="a rule version beside the live rules: on a file of history "
           "(`fundflow shadow EVENTS.jsonl --rules CANDIDATE.yaml --out DIR`), or live")  # fmt: skip
def shadow() -> None:
    pass


@shadow.command("history", help="the live rules and CANDIDATE over EVENTS through the pipeline: DIR/diff.jsonl "
                "(each finding that differs) and DIR/report.md (per rule, with evaluate-rules)")  # fmt: skip
@click.argument("events", type=PATH)
@click.option("--rules", "candidate", type=PATH, required=True, help="the candidate rules file")
@click.option("--live", type=PATH, help="the live rules file (default: FUNDFLOW_RULES_FILE)")
@click.option("--out", type=PATH, required=True)
@click.option("--horizon-days", type=POSITIVE_INT, default=30, show_default=True, help="evaluate-rules' horizon")
@click.option("--timeout", type=POSITIVE_FLOAT, default=900.0, show_default=True, help="seconds to wait")
def shadow_history(
    events: Path, candidate: Path, live: Path | None, out: Path, horizon_days: int, timeout: float
) -> int:
    from streams.tools.shadow import run_history_shadow

    return run_history_shadow(settings(), events, candidate, live, out, timeout, horizon_days)


@cli.group(help="customer commands", no_args_is_help=False)
def customer() -> None:
    pass


@customer.command(help="a customer's live metrics")
@click.argument("customer_id")
@click.option("--json", "as_json", is_flag=True)
@click.option("--as-of", help="RFC 3339 time at or after the customer's last event")
def show(customer_id: str, as_json: bool, as_of: str | None) -> int:
    from streams.cli.commands import show_customer

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    return asyncio.run(show_customer(config, redis_url, customer_id, as_json, as_of))


@cli.command(help="every customer's state as JSONL (state.jsonl format)")
@click.option("--out", type=PATH, required=True)
@click.option("--as-of", help="RFC 3339 time (default: the latest event time seen)")
def snapshot(out: Path, as_of: str | None) -> int:
    from streams.cli.commands import run_snapshot

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    return asyncio.run(run_snapshot(config, redis_url, out, as_of))


@cli.command(
    help="write the full state of every customer with a changelog and drop the logs (before an earlier version runs)"
)
def fold() -> int:
    from streams.cli.commands import fold_changelogs

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    return asyncio.run(fold_changelogs(config, redis_url))


class IsoDay(click.ParamType):
    """A calendar day written YYYY-MM-DD."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return dt.date.fromisoformat(str(value)).isoformat()
        except ValueError:
            self.fail(f"{value!r} is not a day written YYYY-MM-DD", param, ctx)


@cli.group("rules", help="the rules file, and the rule versions a running system changes (docs/rules-lifecycle.md)",
           no_args_is_help=False)  # fmt: skip
def rules_group() -> None:
    pass


add_version_commands(rules_group, shadow)  # propose, approve, ...; shadow start|stop|report (streams.cli.versions)


@rules_group.command("check", help="validate a rules FILE as a worker would: one line per problem, exit 1 on any")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def rules_check(file: Path) -> int:
    from streams.cli.rules import check_rules_file

    return check_rules_file(file)


@cli.command(help="看板: the bank's flows, findings and 归集率 distribution of a day")
@click.option("--day", type=IsoDay(), help="the bank's local day (default: the day of the latest event)")
@click.option("--check", is_flag=True, help="compare with a recomputation from stored states; exit 1 on a difference")
def board(day: str | None, check: bool) -> int:
    from streams.cli.commands import show_board

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    return asyncio.run(show_board(config, redis_url, day, check))


@cli.command(help="客户分层: tier distribution, cut points, top customers")
@click.option("--refresh", is_flag=True, help="recompute every customer's contribution now")
@click.option("--top", type=POSITIVE_INT, default=10, show_default=True, help="how many top customers to list")
@click.option("--json", "as_json", is_flag=True)
def tiers(refresh: bool, top: int, as_json: bool) -> int:
    from streams.cli.commands import show_tiers

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    return asyncio.run(show_tiers(config, redis_url, refresh, top, as_json))


@cli.group(help="watch findings; deliver them to webhooks", no_args_is_help=False)
@click.pass_context
def alerts(ctx: click.Context) -> None:
    if f"alerts {ctx.invoked_subcommand}" in LONG_RUNNING:
        stopping.install(f"fundflow alerts {ctx.invoked_subcommand}")


@alerts.command("tail", help="print findings as they arrive")
@click.option("--rule")
@click.option("--customer", "customer_id", metavar="ID")
@click.option("--category", type=click.Choice(["collection", "repayment", "outflow_risk", "sweep", "ledger"]))
@click.option("--severity", type=click.Choice(["info", "low", "medium", "high"]))
@click.option("--topic", type=TOPIC_CHOICE, default="all", show_default=True)
@click.option("--from-beginning", is_flag=True, help="from the oldest kept finding, not from now")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@click.option("--max", "limit", type=POSITIVE_INT, help="stop after N findings")
def tail_command(
    rule: str | None,
    customer_id: str | None,
    category: str | None,
    severity: str | None,
    topic: str,
    from_beginning: bool,
    as_json: bool,
    limit: int | None,
) -> int:
    from alerts.tail import TailFilter, tail

    config = settings()
    if not config.kafka_bootstrap:
        raise ConfigError("FUNDFLOW_KAFKA_BOOTSTRAP not set: point at your Kafka or run `fundflow stack`")
    keep = TailFilter(rule, customer_id, category, severity)
    return asyncio.run(
        tail(
            config,
            config.kafka_bootstrap,
            finding_topics(topic),
            keep,
            from_beginning=from_beginning,
            as_json=as_json,
            limit=limit,
        )
    )


@alerts.command(help="POST every finding to HTTP receivers (signed, retried)")
@click.option("--url", "urls", multiple=True, help="receiver URL (repeat; default FUNDFLOW_WEBHOOK_URLS)")
@click.option("--topic", type=TOPIC_CHOICE, default="all", show_default=True)
@click.option("--group", help="consumer group (default: {app_id}-webhook)")
@click.option("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
def webhook(urls: tuple[str, ...], topic: str, group: str | None, metrics_port: int | None) -> int:
    from alerts.relay import relay_secret, run_relay
    from streams.telemetry import serve_metrics

    config = settings()
    bootstrap, redis_url = servers(config)
    receivers = list(urls or config.webhook_urls)
    relay_secret(config, receivers)  # start-up checks: receivers, secret (one line, no credential)
    if metrics_port:
        serve_metrics(metrics_port, config.web_host)
    logging.getLogger("alerts").setLevel(logging.WARNING)
    chosen = finding_topics(topic)
    click.echo(f"relaying {', '.join(chosen)} to {', '.join(safe_url(u) for u in receivers)}")
    asyncio.run(run_relay(config, bootstrap, redis_url, receivers, topics=chosen, group=group))
    return 0


@cli.group(help="turn a core table's change topic (CDC) into TransactionEvents (docs/feeds.md)", no_args_is_help=False)
@click.pass_context
def adapt(ctx: click.Context) -> None:
    if f"adapt {ctx.invoked_subcommand}" in LONG_RUNNING:
        stopping.install(f"fundflow adapt {ctx.invoked_subcommand}")


def adapt_options(command: Any) -> Any:
    for option in reversed(
        (
            click.option("--from", "source_topic", required=True, metavar="TOPIC", help="the change topic to read"),
            click.option("--mapping", type=PATH, required=True, metavar="FILE", help="the table's YAML mapping"),
            click.option("--group", help="consumer group (default: {app_id}-adapt-{source})"),
            click.option("--metrics-port", type=int, help="serve Prometheus /metrics on this port"),
        )
    ):
        command = option(command)
    return command


def run_adapt(fmt: str, source_topic: str, mapping_file: Path, group: str | None, metrics_port: int | None) -> int:
    from feeds.adapter import run_adapter
    from feeds.mapping import load_mapping
    from streams.telemetry import serve_metrics

    mapping = load_mapping(mapping_file)  # start-up check: a bad mapping is one line, before any connection
    if not source_topic.strip():
        raise click.BadParameter("must name a topic", param_hint="--from")
    config = settings()
    bootstrap, redis_url = servers(config)
    if metrics_port:
        serve_metrics(metrics_port, config.web_host)
    click.echo(f"adapting {fmt} changes of {mapping.table} from {source_topic} to {topics.TRANSACTIONS}")
    kind: Any = fmt  # "debezium" | "canal": the two subcommands below
    asyncio.run(run_adapter(kind, config, bootstrap, redis_url, mapping, source_topic, group=group))
    return 0


@adapt.command("debezium", help="Debezium change events (with or without the schema/payload wrapper)")
@adapt_options
def adapt_debezium(source_topic: str, mapping: Path, group: str | None, metrics_port: int | None) -> int:
    return run_adapt("debezium", source_topic, mapping, group, metrics_port)


@adapt.command("canal", help="Canal flat messages (canal.mq.flatMessage=true)")
@adapt_options
def adapt_canal(source_topic: str, mapping: Path, group: str | None, metrics_port: int | None) -> int:
    return run_adapt("canal", source_topic, mapping, group, metrics_port)


NO_CASES = click.option(
    "--no-cases", is_flag=True, help="skip the analysts' precision (read from the cases in FUNDFLOW_REDIS_URL)"
)


@cli.command("evaluate-rules", help="hit rate of each rule vs the base rate, from a backtest; analysts' precision")
@click.argument("events", type=PATH)
@click.argument("backtest_dir", type=PATH)
@click.option("--horizon-days", type=POSITIVE_INT, default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@NO_CASES
def evaluate_rules(events: Path, backtest_dir: Path, horizon_days: int, as_json: bool, no_cases: bool) -> int:
    from rules.config import RulesConfig, load_rules
    from streams.cli.commands import analysts_precision
    from streams.tools.evaluate import render, run_evaluate, with_analysts

    config = settings()
    rules = load_rules(config.rules_file) if config.rules_file.exists() else RulesConfig()
    minimum = rules.collection.min_amount
    result = run_evaluate(events, backtest_dir, horizon_days, minimum)
    result = with_analysts(result, *analysts_precision(config, read=not no_cases))
    click.echo(json.dumps(result, indent=2, ensure_ascii=False) if as_json else render(result))
    return 0


@cli.command(help="the real rules over a grid of thresholds: tables and a suggested rules.yaml")
@click.argument("events", type=PATH)
@click.option("--out", type=PATH, required=True)
@click.option(
    "--max-share", type=POSITIVE_FLOAT, default=0.05, show_default=True, help="alert-volume cap: share of customers"
)
@click.option(
    "--min-precision",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="mark a rule whose analysts confirm less than this share of its resolved cases",
)
@click.option(
    "--min-resolved", type=POSITIVE_INT, default=20, show_default=True, help="resolved cases before a rule is marked"
)
@click.option(
    "--max-short-share",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="sweeps: the most of them that may leave the account below zero within 30 days",
)
@NO_CASES
@click.option("--propose", "propose_it", is_flag=True, help="propose the suggested rules.yaml as a rule version")
@click.option("--as", "who", metavar="NAME", help="with --propose: who proposes (a name in the people registry)")
@click.option("--reason", help="with --propose: why (default: the tune run it comes from)")
def tune(
    events: Path,
    out: Path,
    max_share: float,
    min_precision: float,
    min_resolved: int,
    max_short_share: float,
    no_cases: bool,
    propose_it: bool,
    who: str | None,
    reason: str | None,
) -> int:
    from streams.cli.commands import analysts_precision
    from streams.tools.tune import run_tune_command

    if propose_it and not who:
        raise click.UsageError("--propose needs --as NAME: who proposes the suggestion")
    config = settings()
    analysts, source = analysts_precision(config, read=not no_cases)
    code = run_tune_command(
        config,
        events,
        out,
        max_share,
        analysts=analysts,
        source=source,
        low=(min_precision, min_resolved),
        max_short=max_short_share,
    )
    if code or not propose_it:
        return code
    why = reason or f"fundflow tune {events.name} --max-share {max_share}"
    return propose_text(read_text(out / "rules.yaml"), why, who or "", str(out / "rules.yaml"))


@cli.command(help="the HTTP API and web console (reads Redis)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--demo", is_flag=True, help="allow running without FUNDFLOW_API_TOKENS (local demo)")
def api(host: str, port: int, demo: bool) -> int:
    from streams.api.server import run_api

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port")
    return run_api(config, redis_url, config.kafka_bootstrap or "", host, port, demo)


@cli.group(help="the people registry: who may act on cases, with which role and tokens (docs/security.md)")
def people() -> None:
    pass


@people.command("fingerprint", help="print the fingerprint of the token read from stdin (never the token)")
def people_fingerprint() -> int:
    from cases.people import token_fingerprint

    click.echo(token_fingerprint(click.get_text_stream("stdin").read().strip()))
    return 0


@people.command("add", help="register NAME with a role and a token that may act as them (audited)")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "analyst", "supervisor"]), required=True)
@click.option("--token-fingerprint", "fingerprint", required=True, help="from `fundflow people fingerprint`")
@click.option("--by", required=True, help="the supervisor making the change (kept in the registry's log)")
def people_add(name: str, role: str, fingerprint: str, by: str) -> int:
    import asyncio

    from cases.people import add
    from streams.clients import connect
    from streams.storage.keys import Keys

    config = settings()
    _, redis_url = servers(config, need_kafka=False)

    async def run() -> dict[str, object]:
        client = connect(redis_url, config.redis_cluster)
        try:
            return await add(client, Keys(config.key_prefix).cases, name, role, fingerprint, by)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    person = asyncio.run(run())
    click.echo(f"{name}: {person['role']}, {len(person['tokens'])} token(s)")  # type: ignore[arg-type]
    return 0


@cli.group(help="consent and complaints kept in Redis, applied at delivery (docs/contact.md)")
def consent() -> None:
    pass


@consent.command("import", help="a CSV of consent records (customer_id,channel,status,recorded_at), or with "
                 "--from-rules a rules file's marketing.opt_out list; idempotent, audited as one entry")  # fmt: skip
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--from-rules", is_flag=True, help="FILE is a rules file: move its marketing.opt_out list once")
@click.option("--by", required=True, help="the analyst or supervisor importing (people registry; audited)")
def consent_import(file: Path, from_rules: bool, by: str) -> int:
    import asyncio

    from streams.cli.consent import run_import

    config = settings()
    _, redis_url = servers(config, need_kafka=False)
    return asyncio.run(run_import(config, redis_url, file, by, from_rules))


@cli.command(help="run the embedded broker and Redis in the foreground")
def stack() -> int:
    from streams.local.servers import run_stack

    return run_stack(settings())


@cli.command(help="embedded stack + worker + the Berka data replayed for ever, with a live view")
@click.option("--berka", type=PATH, default=None, metavar="DIR", help="another Berka copy (default: the shipped one)")
@click.option("--rate", type=POSITIVE_FLOAT, default=300.0, show_default=True, help="at most N events per second")
@click.option("--speedup", type=POSITIVE_FLOAT, help="event time X times faster than real time")
def demo(berka: Path | None, rate: float, speedup: float | None) -> int:
    from streams.tools.demo import run_demo

    return run_demo(settings(), berka, rate, speedup)


# --- maintainer tools: measurements and the state dictionary (``make bench``, ``make soak``) ---


@cli.command(help="throughput and latency beside the floor of the stack, side by side (make bench)")
@click.option("--berka", type=PATH, metavar="DIR", help="another Berka copy (default: the shipped one)")
@click.option("--events", type=POSITIVE_INT, help="records per stage (default 100000; smoke 3000)")
@click.option("--smoke", is_flag=True, help="every stage on a few thousand records")
@click.option("--out", type=PATH, default=Path("var/bench/results.json"), show_default=True)
@click.option("--rounds", type=POSITIVE_INT, help="interleaved rounds of (b), (b'), (c) (default 3; smoke 1)")
def bench(berka: Path | None, events: int | None, smoke: bool, out: Path, rounds: int | None) -> int:
    from streams.tools.bench import run_bench_command

    return run_bench_command(berka, events, smoke, out, rounds)


@cli.command("bench-scale", help="a bank's customer count on a local Redis Cluster, measured (make bench-scale)")
@click.option("--berka", type=PATH, metavar="DIR", help="another Berka copy (default: the shipped one)")
@click.option("--customers", type=POSITIVE_INT, help="customers loaded (default 1000000; smoke 2000)")
@click.option("--smoke", is_flag=True, help="every stage on a few thousand customers")
@click.option("--out", type=PATH, default=Path("var/bench/scale.json"), show_default=True)
@click.option("--variants", type=POSITIVE_INT, default=4, show_default=True, help="time-shifted Berka copies")
def bench_scale(berka: Path | None, customers: int | None, smoke: bool, out: Path, variants: int) -> int:
    from streams.tools.benchscale import run_bench_scale_command

    return run_bench_scale_command(berka, customers, smoke, out, variants)


@cli.command(help="many customers, event time bounded by the wall clock: lag, offsets, memory (make soak)")
@click.option("--berka", type=PATH, metavar="DIR", help="another Berka copy (default: the shipped one)")
@click.option("--minutes", type=POSITIVE_FLOAT, default=15.0, show_default=True, help="after the warm-up")
@click.option("--interval", type=POSITIVE_FLOAT, default=60.0, show_default=True, help="seconds between reports")
@click.option("--customers", type=POSITIVE_INT, default=20_000, show_default=True, help="copies of the data's")
@click.option("--speedup", type=POSITIVE_FLOAT, default=8640.0, show_default=True, help="event/wall time, at most")
@click.option("--rate", type=POSITIVE_FLOAT, help="events/s at most (default: twice the mean the speedup makes)")
@click.option("--var", type=PATH, default=Path("var/soak"), show_default=True)
def soak(
    berka: Path | None,
    minutes: float,
    interval: float,
    customers: int,
    speedup: float,
    rate: float | None,
    var: Path,
) -> int:
    from streams.tools.soak import run_soak_command

    return run_soak_command(berka, minutes, interval, customers, speedup, rate, var)


@cli.command("train-dictionary", help="train the zstd dictionary for state blobs on the Berka states")
@click.option("--berka", type=PATH, metavar="DIR", help="another Berka copy (default: the shipped one)")
@click.option("--out", type=PATH, help="folder for state-<id>.zdict (default: the shipped dictionaries)")
@click.option("--findings", is_flag=True, help="the recent findings' dictionary instead (finding-<id>.zdict)")
def train_dictionary(berka: Path | None, out: Path | None, findings: bool) -> int:
    from streams.tools.statedict import run_train_command

    return run_train_command(berka, out, findings)


@cli.command("fetch-cost", help="the embedded broker's fetch time against the batches it stores")
@click.option("--batches", type=BATCH_COUNTS, default="500,1000,2000,3000,5000,7500,10000,15000,20000")
@click.option("--samples", type=POSITIVE_INT, default=5, show_default=True)
def fetch_cost(batches: list[int], samples: int) -> int:
    from streams.tools.fetchcost import run_fetchcost_command

    return run_fetchcost_command(batches, samples)


def first_line(text: str, fallback: str) -> str:
    text = text.strip()
    return text.splitlines()[0] if text else fallback


def one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid setting FUNDFLOW_{where.upper()}: {first['msg']}"
    if isinstance(exc, click.ClickException):
        return first_line(exc.format_message(), type(exc).__name__)
    return first_line(str(exc), type(exc).__name__)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="fundflow", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "fundflow"
        print(f"fundflow: error: {one_line(exc)} (see `{where} --help`)", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, click.Abort):
        return 0 if stopping.requested() else 130
    except (FundFlowError, ValidationError, OSError, ValueError, click.ClickException) as exc:
        if os.environ.get("FUNDFLOW_DEBUG"):
            raise
        print(f"fundflow: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("FUNDFLOW_DEBUG"):
            raise
        if type(exc).__module__.startswith(("redis", "aiokafka", "kafka")):  # RedisError and its kin
            print(f"fundflow: error: server unreachable or failing: {one_line(exc)}", file=sys.stderr)
            return 1
        raise
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

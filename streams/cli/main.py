"""``fundflow``: the command line.

Every failure a user can cause (bad arguments, a missing file, servers that
do not answer, a malformed setting) ends in ONE line on stderr and a non-zero
exit: 2 for bad usage, 1 for everything else. Tracebacks are for bugs only
(set ``FUNDFLOW_DEBUG=1`` to see them for any error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from streams import stopping
from streams.errors import ConfigError, FundFlowError

SHIPPED = Path("<shipped>")  # ``replay --berka`` with no DIR: the Berka copy shipped with FundFlow


def _shipped(path: Path | None) -> Path | None:
    return None if path == SHIPPED else path


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fundflow: error: {message} (see `{self.prog} --help`)\n")


def _positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fundflow", description="Real-time fund-flow monitor: Kafka -> Faust -> Redis.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    worker = sub.add_parser("worker", help="run a Faust worker (start more to scale out)")
    worker.add_argument("--web-port", type=int, help="HTTP port of this worker (one per worker on a host)")
    worker.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"])

    replay = sub.add_parser("replay", help="produce events to the input topics")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", type=Path, help="JSONL of TransactionEvents / LoanEvents")
    source.add_argument(
        "--berka",
        type=Path,
        nargs="?",
        const=SHIPPED,
        metavar="DIR",
        help="convert and replay the Berka data set (default: the copy shipped with FundFlow)",
    )
    replay.add_argument("--rate", type=_positive(float), help="at most N events per second")
    replay.add_argument("--speedup", type=_positive(float), help="event time X times faster than real time")
    replay.add_argument("--loops", type=_positive(int), default=1, help="replay N times (fresh ids per loop)")

    convert = sub.add_parser("convert-berka", help="convert the Berka files to events JSONL")
    convert.add_argument("dir", type=Path, nargs="?", help="Berka data directory (default: the shipped copy)")
    convert.add_argument("out", type=Path)

    backtest = sub.add_parser("backtest", help="run the real pipeline over a file and write the results")
    backtest.add_argument("events", type=Path)
    backtest.add_argument("--out", type=Path, required=True)
    backtest.add_argument("--timeout", type=_positive(float), default=900.0, help="seconds to wait")

    customer = sub.add_parser("customer", help="customer commands")
    customer_sub = customer.add_subparsers(dest="customer_command", required=True, parser_class=_Parser)
    show = customer_sub.add_parser("show", help="a customer's live metrics")
    show.add_argument("customer_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--as-of", help="RFC 3339 time at or after the customer's last event")

    snapshot = sub.add_parser("snapshot", help="every customer's state as JSONL (state.jsonl format)")
    snapshot.add_argument("--out", type=Path, required=True)
    snapshot.add_argument("--as-of", help="RFC 3339 time (default: the latest event time seen)")

    tiers = sub.add_parser("tiers", help="客户分层: tier distribution, cut points, top customers")
    tiers.add_argument("--refresh", action="store_true", help="recompute every customer's contribution now")
    tiers.add_argument("--top", type=_positive(int), default=10, help="how many top customers to list")
    tiers.add_argument("--json", action="store_true")

    alerts = sub.add_parser("alerts", help="watch findings; deliver them to webhooks")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True, parser_class=_Parser)
    tail = alerts_sub.add_parser("tail", help="print findings as they arrive")
    tail.add_argument("--rule")
    tail.add_argument("--customer", metavar="ID")
    tail.add_argument("--category", choices=["collection", "repayment", "outflow_risk", "sweep", "ledger"])
    tail.add_argument("--severity", choices=["info", "low", "medium", "high"])
    tail.add_argument("--topic", choices=["alerts", "recommendations", "marketing", "all"], default="all")
    tail.add_argument("--from-beginning", action="store_true", help="from the oldest kept finding, not from now")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--max", type=_positive(int), help="stop after N findings")
    hook = alerts_sub.add_parser("webhook", help="POST every finding to HTTP receivers (signed, retried)")
    hook.add_argument("--url", action="append", help="receiver URL (repeat; default FUNDFLOW_WEBHOOK_URLS)")
    hook.add_argument("--topic", choices=["alerts", "recommendations", "marketing", "all"], default="all")
    hook.add_argument("--group", help="consumer group (default: {app_id}-webhook)")
    hook.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")

    judge = sub.add_parser("evaluate-rules", help="hit rate of each rule vs the base rate, from a backtest")
    judge.add_argument("events", type=Path, help="the events JSONL the backtest ran on")
    judge.add_argument("backtest_dir", type=Path, help="the backtest's --out directory")
    judge.add_argument("--horizon-days", type=_positive(int), default=30)
    judge.add_argument("--json", action="store_true")

    api = sub.add_parser("api", help="the HTTP API and web console (reads Redis)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--demo", action="store_true", help="allow running without FUNDFLOW_API_TOKENS (local demo)")

    sub.add_parser("stack", help="run the embedded broker and Redis in the foreground")

    demo = sub.add_parser("demo", help="embedded stack + worker + Berka replay with a live view")
    demo.add_argument("--berka", type=Path, default=None, metavar="DIR", help="another Berka copy (default: shipped)")
    demo.add_argument("--rate", type=_positive(float), default=300.0, help="at most N events per second (default 300)")
    demo.add_argument("--speedup", type=_positive(float), help="event time X times faster than real time")
    return parser


def _servers(settings: Any, need_kafka: bool = True) -> tuple[str, str]:
    missing = [
        name
        for name, value, needed in (
            ("FUNDFLOW_KAFKA_BOOTSTRAP", settings.kafka_bootstrap, need_kafka),
            ("FUNDFLOW_REDIS_URL", settings.redis_url, True),
        )
        if needed and not value
    ]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: point at your servers, or run `fundflow stack` "
            "and export the lines it prints"
        )
    return settings.kafka_bootstrap or "", settings.redis_url


# Commands that run until stopped: SIGINT and SIGTERM stop them within a bound, exit 0.
LONG_RUNNING = {"worker", "api", "stack", "demo", "replay", "alerts webhook", "alerts tail"}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "alerts_command", None))))
    if command in LONG_RUNNING:
        stopping.install(f"fundflow {command}")
    if args.command != "worker":
        # Client libraries log connection retries as warnings; the CLI reports
        # the failure itself, in one line (the worker configures its own logging).
        import logging

        logging.basicConfig(level=logging.CRITICAL)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 0 if stopping.requested() else 130
    except (FundFlowError, ValidationError, OSError, ValueError) as exc:
        if os.environ.get("FUNDFLOW_DEBUG"):
            raise
        print(f"fundflow: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("FUNDFLOW_DEBUG"):
            raise
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError) or type(exc).__module__.startswith(("aiokafka", "kafka")):
            print(f"fundflow: error: server unreachable or failing: {_one_line(exc)}", file=sys.stderr)
            return 1
        raise


def _finding_topics(choice: str) -> tuple[str, ...]:
    from streams import topics

    by_name = {"alerts": topics.ALERTS, "recommendations": topics.RECOMMENDATIONS, "marketing": topics.MARKETING}
    return tuple(by_name.values()) if choice == "all" else (by_name[choice],)


def _alerts(settings: Any, args: argparse.Namespace) -> int:
    bootstrap, redis_url = _servers(settings, need_kafka=True) if args.alerts_command == "webhook" else ("", "")
    if args.alerts_command == "tail":
        from alerts.tail import TailFilter, tail

        if not settings.kafka_bootstrap:
            raise ConfigError("FUNDFLOW_KAFKA_BOOTSTRAP not set: point at your Kafka or run `fundflow stack`")
        keep = TailFilter(args.rule, args.customer, args.category, args.severity)
        return asyncio.run(
            tail(
                settings,
                settings.kafka_bootstrap,
                _finding_topics(args.topic),
                keep,
                from_beginning=args.from_beginning,
                as_json=args.json,
                limit=args.max,
            )
        )
    from alerts.relay import run_relay
    from streams.settings import safe_url

    urls = list(args.url or settings.webhook_urls)
    if not urls:
        raise ConfigError("no receivers: give --url URL or set FUNDFLOW_WEBHOOK_URLS")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"receiver URL must be http:// or https://: {safe_url(url)!r}")
    if settings.webhook_secret is None:
        raise ConfigError("FUNDFLOW_WEBHOOK_SECRET not set: receivers could not verify who is calling")
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port)
    import logging

    logging.getLogger("alerts").setLevel(logging.WARNING)
    print(f"relaying {', '.join(_finding_topics(args.topic))} to {', '.join(safe_url(u) for u in urls)}", flush=True)
    asyncio.run(run_relay(settings, bootstrap, redis_url, urls, topics=_finding_topics(args.topic), group=args.group))
    return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"invalid setting FUNDFLOW_{where.upper()}: {first['msg']}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


def _dispatch(args: argparse.Namespace) -> int:
    from streams.settings import Settings

    settings = Settings()
    command = args.command
    if command == "convert-berka":
        from streams.tools.berka import convert_berka

        stats = convert_berka(args.dir, args.out, settings.zone)
        print(f"wrote {args.out}: {stats.as_dict()}")
        return 0
    if command == "stack":
        from streams.local.servers import run_stack

        return run_stack(settings)
    if command == "worker":
        from streams.worker import run_worker

        bootstrap, redis_url = _servers(settings)
        return run_worker(settings, bootstrap, redis_url, web_port=args.web_port, loglevel=args.loglevel)
    if command == "replay":
        from streams.tools.replay import run_replay

        if not settings.kafka_bootstrap:
            raise ConfigError("FUNDFLOW_KAFKA_BOOTSTRAP not set: run `fundflow stack` and export its lines")
        return asyncio.run(
            run_replay(
                settings,
                settings.kafka_bootstrap,
                args.file,
                _shipped(args.berka),
                args.rate,
                args.speedup,
                args.loops,
            )
        )
    if command == "customer":
        from streams.cli.commands import show_customer

        _, redis_url = _servers(settings, need_kafka=False)
        return asyncio.run(show_customer(settings, redis_url, args.customer_id, args.json, args.as_of))
    if command == "snapshot":
        from streams.cli.commands import run_snapshot

        _, redis_url = _servers(settings, need_kafka=False)
        return asyncio.run(run_snapshot(settings, redis_url, args.out, args.as_of))
    if command == "tiers":
        from streams.cli.commands import show_tiers

        _, redis_url = _servers(settings, need_kafka=False)
        return asyncio.run(show_tiers(settings, redis_url, args.refresh, args.top, args.json))
    if command == "alerts":
        return _alerts(settings, args)
    if command == "evaluate-rules":
        from rules.config import load_rules
        from streams.tools.evaluate import render, run_evaluate

        rules = load_rules(settings.rules_file) if settings.rules_file.exists() else None
        minimum = rules.collection.min_amount if rules else Decimal(50_000)
        result = run_evaluate(args.events, args.backtest_dir, args.horizon_days, minimum)
        print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else render(result))
        return 0
    if command == "api":
        from streams.api.server import run_api

        _, redis_url = _servers(settings, need_kafka=False)
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port {args.port} is not a TCP port")
        return run_api(settings, redis_url, settings.kafka_bootstrap or "", args.host, args.port, args.demo)
    if command == "backtest":
        from streams.tools.backtest import run_backtest

        return run_backtest(settings, args.events, args.out, args.timeout)
    if command == "demo":
        from streams.tools.demo import run_demo

        return run_demo(settings, args.berka, args.rate, args.speedup)
    raise ConfigError(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main())

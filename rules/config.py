"""Rule thresholds (``deploy/rules.yaml``), validated by pydantic.

Every threshold of the business rules lives here with its default; the YAML
file overrides what it names. Amounts are in the event currency. An invalid
file raises ``RulesConfigError`` with one line saying where and why; the worker
then keeps the last good configuration (``streams.rulestep.RulesProvider``).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

Severity = Literal["info", "low", "medium", "high"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high")
Amount = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Share = Annotated[Decimal, Field(ge=0, le=1, allow_inf_nan=False)]
Hours = Annotated[float, Field(ge=0, le=24 * 366)]


VERSIONS = (1,)  # the file versions this FundFlow reads
# every rule name a finding can carry (``rules.engine``): what ``disabled`` may name
RULE_NAMES = frozenset(
    {
        "collection_opportunity",
        "large_external_outflow",
        "net_outflow_streak",
        "fast_in_fast_out",
        "balance_drawdown",
        "churn_drift",
        "post_repayment_sweep",
        "ledger_drift",
        "repayment_due_short",
        "repayment_overdue",
        "salary_flow_anomaly",
        "push_collection",
        "push_sweep",
    }
)
PUSH_SOURCES = frozenset({"collection", "sweep"})  # the findings a push follows: ``marketing.campaigns`` keys
OPT_OUT_MOVED = (
    "consent moved out of the rules file: run `fundflow consent import --from-rules FILE --by NAME` once, "
    "then delete the list (docs/contact.md)"
)
ESCALATE_TIERS_REMOVED = (
    "removed: high-value customers are routed at delivery by the contact table "
    "(FUNDFLOW_CONTACT_FILE, deploy/contact.yaml; docs/contact.md): delete the key"
)
_STRICT = "strict"  # validation context: a file being read (stored rules are not checked again)


class RulesConfigError(ValueError):
    """The rules file cannot be used; the message is one line (the first problem, and how
    many there are); ``problems`` holds one line per problem."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


def _strict(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get(_STRICT))


def _known_rule(value: str, info: ValidationInfo) -> str:
    # a misspelt name disables nothing, and the list replaces the default one
    if _strict(info) and value not in RULE_NAMES:
        raise ValueError(f"unknown rule {value!r} (known: {', '.join(sorted(RULE_NAMES))})")
    return value


def _known_source(value: str, info: ValidationInfo) -> str:
    if _strict(info) and value not in PUSH_SOURCES:
        raise ValueError(f"unknown push source {value!r} (known: {', '.join(sorted(PUSH_SOURCES))})")
    return value


RuleName = Annotated[str, AfterValidator(_known_rule)]
PushSource = Annotated[str, AfterValidator(_known_source)]


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    severity: Severity = "medium"
    cooldown_hours: Hours = 24.0


class CollectionRule(_Rule):
    """资金归集: a large credit at a customer whose money usually leaves.

    Relative to the customer's own history: the credit is at least ``usual_inflow_multiple``
    × their mean credit of the last 90 days, and their money stays on average less than
    ``max_retention_days`` (or, when ``max_collection_rate`` > 0, less than that share of
    their 90-day inflow is still there). ``min_amount`` is the absolute floor, in the bank's
    currency. Defaults measured on Berka: docs/rules-evaluation.md (the collection-rate test
    picked customers whose inflow stayed, lift 0.6, so it is off by default)."""

    min_amount: Amount = Decimal(5_000)
    usual_inflow_multiple: Amount = Decimal("1.5")  # × the customer's mean credit of the last 90 days
    max_collection_rate: Share = Decimal(0)  # 0: off
    max_retention_days: Amount = Decimal(10)
    cooldown_hours: Hours = 72.0


class OutflowRule(_Rule):
    """资金流出预警: large external outflow, drawdown, fast-in-fast-out, streak, churn drift."""

    large_external_amount: Amount = Decimal(100_000)
    large_external_share: Share = Decimal("0.5")  # of the balance before the debit
    large_external_min_amount: Amount = Decimal(10_000)  # the share test needs at least this much
    drawdown_fraction: Share = Decimal("0.3")  # balance below this × avg_balance_30d ...
    drawdown_within_days: int = Field(default=7, ge=1, le=30)  # ... having been above it this recently
    drawdown_min_avg_balance: Amount = Decimal(10_000)
    fast_out_share: Share = Decimal("0.8")  # 快进快出: this share of a credit leaves externally ...
    fast_out_hours: Hours = 72.0  # ... within this many hours
    fast_out_min_amount: Amount = Decimal(5_000)  # floor of the credits, in the bank's currency
    streak_days: int = Field(default=4, ge=2, le=90)
    churn_share: Share = Decimal("0.6")  # external_outflow_share_30d at least this ...
    churn_rise: Share = Decimal("0.2")  # ... and risen by this since the last check ...
    churn_min_banks: int = Field(default=4, ge=1, le=100)  # ... with dispersed funds (metrics.md: > 3 banks)
    severity: Severity = "high"


class RepaymentRule(_Rule):
    """还款提醒 / 风险信号: instalment due and balance short; overdue; salary-flow anomaly."""

    reminder_days: int = Field(default=3, ge=0, le=31)
    overdue_days: int = Field(default=3, ge=1, le=90)
    income_months: int = Field(default=3, ge=2, le=12)  # the customer's own pattern: months with income
    income_drop: Share = Decimal("0.5")  # this month below (1 - drop) × the usual month
    severity: Severity = "medium"
    overdue_severity: Severity = "high"
    cooldown_hours: Hours = 0.0  # each due date and month fires at most once anyway


class LedgerRule(_Rule):
    """对账差异: our balance and the core system's ledger disagree."""

    tolerance: Amount = Decimal("1.00")
    severity: Severity = "low"


class SweepRule(_Rule):
    """智能还贷 + 自动归集: after a loan repayment, sweep idle money to a better product."""

    # What the customer's history says is idle (docs/findings.md, "The sweep's buffer"): at
    # most ``idle_floor_share`` of their lowest balance of the last ``buffer_history_days``, and
    # the balance less ``buffer_months_of_outflow`` × their largest outflow of any 30 of those
    # days; the next instalments reserved from both. Defaults chosen by ``fundflow tune`` on
    # Berka for at most 5% of sweeps short within 30 days (docs/rules-evaluation.md).
    buffer_months_of_outflow: Amount = Decimal("0.5")
    idle_floor_share: Share | None = Decimal("0.7")  # null: no floor (the balance less the buffer, as before)
    buffer_history_days: int = Field(default=90, ge=30, le=90)  # the state keeps 90 days of transactions
    min_amount: Amount = Decimal(10_000)
    round_to: Amount = Decimal(100)
    product: str = "money_market_fund"
    product_name: str = "货币基金 money-market fund"
    product_rate: Share = Decimal("0.022")
    deposit_rate: Share = Decimal("0.0035")
    severity: Severity = "info"
    cooldown_hours: Hours = 24.0 * 7


class MarketingConfig(BaseModel):
    """Push triggers: hard frequency caps, quiet hours (bank's zone), one per campaign, and the
    risk veto. Consent and complaints are not here: they are wall-clock facts about a person,
    applied at delivery (docs/contact.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    per_day: int = Field(default=1, ge=0, le=100)
    per_week: int = Field(default=2, ge=0, le=500)
    quiet_start: dt.time = dt.time(21, 0)
    quiet_end: dt.time = dt.time(8, 0)
    # Moved to delivery (docs/contact.md): a file with a non-empty list is refused (``_no_opt_out``);
    # the field stays so rules stored by earlier versions (changelog replays) still load.
    opt_out: frozenset[str] = frozenset()
    # No push while the customer had an outflow-risk or repayment finding this many days before
    # it (event time), or has an overdue instalment unpaid (rules.engine: the risk veto).
    risk_veto_days: int = Field(default=30, ge=0, le=366)
    channel: Literal["sms", "app", "email"] = "app"
    # which campaign a push of each source belongs to (one message per customer per campaign)
    campaigns: dict[PushSource, str] = Field(
        default_factory=lambda: {"sweep": "sweep-after-repayment", "collection": "deposit-collection"}
    )

    @field_validator("opt_out")
    @classmethod
    def _no_opt_out(cls, value: frozenset[str], info: ValidationInfo) -> frozenset[str]:
        if _strict(info) and value:
            raise ValueError(OPT_OUT_MOVED)
        return value


class RulesConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    collection: CollectionRule = CollectionRule()
    outflow: OutflowRule = OutflowRule()
    repayment: RepaymentRule = RepaymentRule()
    ledger: LedgerRule = LedgerRule()
    sweep: SweepRule = SweepRule()
    marketing: MarketingConfig = MarketingConfig()
    max_lateness_hours: Hours = 24.0 * 7  # events older than this (vs the customer's newest) fire nothing
    # A LoanEvent may lag the customer's transactions by this much event time and still have its
    # due dates judged against them (docs/findings.md); later, its due date's checks are
    # suppressed (late_loan). At most 75 days: the checks read transactions of the 90 kept days.
    loan_lateness_days: int = Field(default=60, ge=0, le=75)
    # Removed (refused in a file: ``_no_escalate_tiers``): the worker never has a tier; routing by
    # live tier at delivery replaced it. Kept so rules stored by earlier versions still load.
    escalate_tiers: frozenset[Literal["I", "II", "III", "IV"]] = frozenset()
    # Rules that fire nothing (by finding name, e.g. churn_drift); their conditions are still
    # tracked, so enabling one later starts from the right edge state.
    # churn_drift: never preceded a drain on Berka (lift 0 at every threshold; docs/rules-evaluation.md).
    disabled: frozenset[RuleName] = frozenset({"churn_drift"})

    @field_validator("escalate_tiers")
    @classmethod
    def _no_escalate_tiers(cls, value: frozenset[str], info: ValidationInfo) -> frozenset[str]:
        if _strict(info):
            raise ValueError(ESCALATE_TIERS_REMOVED)
        return value

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int, info: ValidationInfo) -> int:
        if _strict(info) and value not in VERSIONS:
            raise ValueError(f"unsupported version {value}: this FundFlow reads version {VERSIONS[-1]}")
        return value


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader; ``_lines`` walks what it composed for duplicates and lines."""


def _lines(node: yaml.Node, path: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> list[str]:
    """Note the line of every key and item under ``node`` by its path; the duplicate keys
    (one problem each: PyYAML keeps the last silently)."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            where = ".".join(str(p) for p in (*path, key))
            if key in seen:
                problems.append(f"line {line}: {where}: written twice (first on line {seen[key]})")
                continue
            seen[key] = line
            lines[(*path, key)] = line
            problems += _lines(value_node, (*path, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            problems += _lines(item, (*path, i), lines)
    return problems


def _line_of(loc: tuple[str | int, ...], lines: dict[tuple[str | int, ...], int]) -> int | None:
    """The line of the deepest part of ``loc`` the file wrote."""
    for end in range(len(loc), 0, -1):
        line = lines.get(loc[:end])
        if line is not None:
            return line
    return None


def _problem(error: Any, lines: dict[tuple[str | int, ...], int]) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc) or "(top)"
    unknown = error["type"] == "extra_forbidden"
    message = "unknown key" if unknown else str(error["msg"]).removeprefix("Value error, ")
    line = _line_of(loc, lines)
    return f"{'' if line is None else f'line {line}: '}{where}: {message}"


def _line_order(problem: str) -> int:
    head = problem.split(":", 1)[0]
    return int(head[5:]) if head.startswith("line ") and head[5:].isdigit() else 0


def check_rules(text: str) -> tuple[RulesConfig | None, list[str]]:
    """The rules of ``text`` and every problem found, one line each (none: the rules)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, ["empty file: write the rules, or set FUNDFLOW_RULES_FILE=defaults for the built-in ones"]
        lines: dict[tuple[str | int, ...], int] = {}
        problems = _lines(node, (), lines)
        raw = loader.construct_document(node)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f"line {where.line + 1}: " if where is not None else ""
        return None, [f"{line}not valid YAML: {getattr(exc, 'problem', None) or exc}"]
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        return None, ["line 1: the top level must be a mapping"]
    try:
        config = RulesConfig.model_validate(raw, context={_STRICT: True})
    except ValidationError as exc:
        problems += [_problem(error, lines) for error in exc.errors(include_url=False)]
        return None, sorted(problems, key=_line_order)
    return (None if problems else config), problems


def parse_rules(text: str, source: str = "rules") -> RulesConfig:
    config, problems = check_rules(text)
    if config is None or problems:
        lines = [f"{source}: {problem}" for problem in problems]
        more = f" (and {len(lines) - 1} more problem(s))" if len(lines) > 1 else ""
        raise RulesConfigError(lines[0] + more, lines)
    return config


def load_rules(path: Path) -> RulesConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_rules(text, str(path))

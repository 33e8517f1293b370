"""The HTTP API's response shapes: one source for the OpenAPI document and for
the tests that hold every response to it (``extra="forbid"`` where the shape is
ours alone, so a field added to a response without its schema fails a test).

Money is a decimal string rounded to the cent (``"1234.50"``), never a float.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import BaseModel, ConfigDict, Field

from rules import fmt

Money = Annotated[str, Field(pattern=r"^-?\d+\.\d{2}$", examples=["1234.50"])]
Ratio = Annotated[str, Field(pattern=r"^-?\d+\.\d+$")]
Timestamp = Annotated[str, Field(description="RFC 3339 in the bank's zone", examples=["1998-12-31T09:00:00+08:00"])]
TierName = Literal["I", "II", "III", "IV"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Loan(_Strict):
    loan_id: str
    outstanding: str
    installment: str
    annual_rate: str
    next_due: str
    status: Literal["active", "closed", "overdue"]


class ContributionParts(_Strict):
    deposit_contribution: Money
    loan_contribution: Money
    fee_contribution: Money
    gross_contribution: Money
    risk_cost: Money
    income_tax: Money
    capital_cost: Money
    loan_outstanding: Money


class Customer(_Strict):
    """Every field of metrics.md for one customer, as of ``as_of``, with the live tier."""

    customer_id: str
    as_of: Timestamp
    balance: Money
    ledger_balance: Money | None
    ledger_drift: Money | None
    daily_avg_balance_mtd: Money
    avg_balance_30d: Money
    balance_volatility_30d: Money
    inflow_24h: Money
    inflow_7d: Money
    inflow_30d: Money
    inflow_90d: Money
    outflow_24h: Money
    outflow_7d: Money
    outflow_30d: Money
    external_outflow_30d: Money
    external_outflow_share_30d: Ratio
    txn_count_30d: int
    avg_txn_per_day_30d: Ratio
    loan_repaid_30d: Money
    fee_debits_30d: Money
    external_banks_90d: int
    net_outflow_streak_days: int
    retention_days_avg_90d: Ratio | None
    collection_rate_90d: Ratio | None
    segments: list[Literal["high_activity", "low_activity", "high_repayment", "dispersed_funds"]]
    contribution: Money
    contribution_parts: ContributionParts
    first_event_at: Timestamp | None
    last_event_at: Timestamp | None
    txn_count_total: int
    loans: list[Loan]
    salary_payer_customer_id: str | None
    tier: TierName | None = Field(description="live tier against the last refreshed cut points; null before any")
    tier_cuts_refreshed_at: str | None
    display: dict[str, str] = Field(
        description="the same numbers written for people by rules/fmt.py (money in the currency's minor digits "
        "with thousands separators, shares and rates as percentages): field -> text; the fields above stay "
        "machine-readable"
    )


class HistoryDay(_Strict):
    day: str = Field(description="local calendar day, YYYY-MM-DD")
    end_balance: Money
    inflow: Money
    outflow: Money
    txn_count: int


class History(_Strict):
    customer_id: str
    as_of: Timestamp
    days: list[HistoryDay]


class Finding(BaseModel):
    """An Alert, Recommendation or PushTrigger exactly as on its Kafka topic (events.md).

    Open to new optional fields (the contract allows extending)."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["alert", "recommendation", "push"]
    rule: str
    category: Literal["collection", "repayment", "outflow_risk", "sweep", "ledger"]
    severity: Literal["info", "low", "medium", "high"]
    customer_id: str
    tier: TierName | None
    ts: Timestamp
    trigger_txn_id: str | None
    evidence: dict[str, Any]
    message: str
    amount: Money | None = None
    product: str | None = None
    expected_yearly_gain: Money | None = None
    channel: str | None = None
    template: str | None = None


class Alerts(_Strict):
    alerts: list[Finding]
    count: int
    cursor: str | None = Field(description="feed position of the newest entry; pass to /alerts/stream as since")


class Cuts(_Strict):
    q1: str
    q2: str
    q3: str


class TopCustomer(_Strict):
    customer_id: str
    contribution: Money
    tier: TierName


class Tiers(_Strict):
    customers: int
    cuts: Cuts | None
    cuts_display: Cuts | None = Field(description="the cut points written for people (rules/fmt.py): 403.73, 1,234.50")
    counts: dict[TierName, int]
    refreshed_at: str | None
    top: list[TopCustomer]


class Health(_Strict):
    status: Literal["ok", "ready", "not_ready"]
    checks: dict[str, str] = Field(default_factory=dict)


class Error(_Strict):
    error: str


# How the console and ``fundflow customer show`` write a customer's numbers (``display``):
# one formatting, rules/fmt.py's.
PERCENT_FIELDS = frozenset({"collection_rate_90d", "external_outflow_share_30d"})
PLAIN_FIELDS = frozenset({"retention_days_avg_90d", "avg_txn_per_day_30d"})


def shown(row: dict[str, Any], currency: str) -> dict[str, str]:
    """``row``'s money, shares and ratios written for people: money (every field the model
    types ``Money``) in the currency's minor digits with separators, the shares as percentages."""
    out: dict[str, str] = {}
    for name, hint in get_type_hints(Customer, include_extras=True).items():
        value = row.get(name)
        if not isinstance(value, str):
            continue
        if name in PERCENT_FIELDS:
            out[name] = fmt.percent(Decimal(value), 1)
        elif name in PLAIN_FIELDS:
            out[name] = fmt.number(Decimal(value), 1)
        elif hint == Money or Money in get_args(hint):
            out[name] = fmt.amount(Decimal(value), currency)
    return out


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``streams.api.server``, schemas from the models above."""
    models: list[type[BaseModel]] = [Customer, History, Alerts, Tiers, Health, Error, Finding]
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    _error = _json("Error")

    def ok(name: str, description: str) -> dict[str, Any]:
        return {
            "200": {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            },
            "401": {"description": "missing or wrong bearer token", "content": _error},
        }

    customer = {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string"}}
    as_of = {
        "name": "as_of",
        "in": "query",
        "schema": {"type": "string"},
        "description": "RFC 3339 with an offset, >= the last event, years 1970..2100",
    }
    bad = {"400": {"description": "a parameter out of its documented range", "content": _error}}
    filters = [
        {"name": name, "in": "query", "schema": {"type": "string"}}
        for name in ("rule", "category", "customer", "severity", "type")
    ]
    limit = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
    stream_id = {
        "type": "string",
        "pattern": r"^[0-9]{1,20}(-[0-9]{1,20})?$",
        "description": "a feed id, <= 2^64-1 each",
    }
    customer_paths = {
        "/customers/{customer_id}": {
            "get": {
                "summary": "a customer's live metrics, segments, contribution and tier",
                "parameters": [customer, as_of],
                "responses": {
                    **ok("Customer", "the customer"),
                    **bad,
                    "404": {"description": "unknown", "content": _error},
                },
            }
        },
        "/customers/{customer_id}/history": {
            "get": {
                "summary": "end-of-day balance and flows for each kept day (up to 90)",
                "parameters": [customer, as_of],
                "responses": {
                    **ok("History", "one row per day"),
                    **bad,
                    "404": {"description": "unknown", "content": _error},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "FundFlow API", "version": version},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            **customer_paths,
            "/alerts": {
                "get": {
                    "summary": "recent findings, newest first",
                    "parameters": [*filters, limit],
                    "responses": {**ok("Alerts", "matching findings"), **bad},
                }
            },
            "/alerts/stream": {
                "get": {
                    "summary": "live findings as Server-Sent Events (event: finding, data: a Finding)",
                    "parameters": [
                        *filters,
                        {"name": "since", "in": "query", "schema": stream_id},
                        {"name": "Last-Event-ID", "in": "header", "schema": stream_id},
                    ],
                    "responses": {
                        "200": {
                            "description": "text/event-stream of Finding objects (event: finding); a failure "
                            "after the headers ends it with one event: error"
                        },
                        **bad,
                        "429": {"description": "too many open streams for this token", "content": _error},
                        "503": {"description": "too many open streams on this server", "content": _error},
                    },
                }
            },
            "/tiers": {
                "get": {
                    "summary": "客户分层: tier counts, cut points, top customers",
                    "parameters": [
                        {
                            "name": "top",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "maximum": 100, "default": 10},
                            "description": "how many top customers to list; 0 lists none",
                        }
                    ],
                    "responses": {**ok("Tiers", "the distribution"), **bad},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "the process is up",
                    "security": [],
                    "responses": {"200": {"description": "ok", "content": _json("Health")}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Kafka and Redis reachable",
                    "security": [],
                    "responses": {
                        "200": {"description": "ready", "content": _json("Health")},
                        "503": {"description": "not ready", "content": _json("Health")},
                    },
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "JSON"}}}},
        },
    }


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

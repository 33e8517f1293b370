"""The case desk's request and response shapes, and their part of the OpenAPI document.

Requests are ``extra="forbid"``: a misspelt field is a 400 that names it, never
silently ignored. ``case_openapi`` adds the case paths to
``streams.api.models.openapi_document``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cases.model import CASE_TYPES, CATEGORIES, GENERIC_OUTCOMES, MAX_TEXT, OUTCOMES, SEVERITIES, STATUSES
from streams.api.models import Finding, TierName, Timestamp
from streams.settings import NAME_PATTERN

Status = Literal["open", "in_progress", "resolved", "dismissed"]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
MAX_CASE_ID = 10**18 - 1  # 18 digits, as a path's case id: far below 2^63, what Redis and orjson hold
CaseIds = Annotated[list[Annotated[int, Field(ge=1, le=MAX_CASE_ID)]], Field(min_length=1, max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(BaseModel):
    """A request body: no unknown field, and no coercion (an id is an integer, not "1", true or 1.0)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class CaseOut(_Strict):
    id: int
    type: Literal["alert", "recommendation"]
    customer_id: str
    category: Literal["collection", "repayment", "outflow_risk", "sweep", "ledger"]
    rule: str = Field(description="the rule of the finding that opened the case")
    rules: list[str] = Field(description="every rule with a finding in the case")
    severity: Literal["info", "low", "medium", "high"] = Field(description="the highest of its findings")
    tier: TierName | None
    priority: int = Field(ge=1, le=4, description="1 = work first: severity, one step up for tiers I and II")
    status: Status
    assignee: str | None
    count: int = Field(description="findings in the case")
    opened_at: Timestamp
    updated_at: Timestamp
    first_action_at: Timestamp | None
    closed_at: Timestamp | None
    outcome: str | None = Field(description="the resolution's outcome; 'retracted': closed by a retraction")
    note: str | None
    first_finding_ts: str = Field(description="event time of the first finding")
    last_finding_ts: str
    retracted: int = Field(default=0, description="its findings the monitor took back (retractions)")
    history: bool = Field(
        default=False, description="every finding in it is history (before the go-live; FUNDFLOW_CASES_FROM_HISTORY)"
    )
    queue: Literal["analyst", "rm"] = Field(
        default="analyst",
        description="who works it: rm once a finding in it was routed to the relationship manager (docs/contact.md)",
    )


class AuditEntry(BaseModel):
    """One line of the append-only trail: who, what, when, the value before and after."""

    model_config = ConfigDict(extra="allow")

    at: Timestamp
    actor: str = Field(description="a token's name, or 'system' for the intake")
    by_system: bool | None = Field(default=None, description="true: written by the product itself (the intake)")
    action: Literal["opened", "finding_added", "finding_retracted", "assign", "comment", "transition"] = Field(
        description="finding_retracted: the monitor took back finding_id (retraction_id, reason); a system "
        "transition to dismissed with outcome 'retracted' closed the case when nothing else was in it"
    )
    field: str | None = None
    from_: Any = Field(default=None, alias="from")
    to: Any = None


class CommentOut(_Strict):
    at: Timestamp
    actor: str
    text: str


class ListPage(_Strict):
    total: int = Field(description="entries in the whole list")
    before: int | None = Field(description="the cursor to the older page (?comments_before= / ?audit_before=)")


class CaseDetail(_Strict):
    case: CaseOut
    comments: list[CommentOut] = Field(description="the newest (at most ?limit=, 50), oldest first")
    comments_page: ListPage
    audit: list[AuditEntry] = Field(description="the newest entries (at most ?limit=, 50), oldest first")
    audit_page: ListPage
    dismissals: list[str] = Field(description="the reasons a dismissal may give")
    findings: list[Finding] = Field(description="the newest 100, newest first; case.count has them all")
    outcomes: list[str] = Field(description="the outcomes a resolution of this case may record")


class CaseList(_Strict):
    cases: list[CaseOut]
    count: int = Field(description="cases in this page")
    total: int = Field(description="cases matching the filters")


class BulkResult(_Strict):
    id: int
    status: int = Field(description="200, or the refusal's HTTP status for this case")
    error: str | None = None
    case: CaseOut | None = None


class BulkReply(_Strict):
    results: list[BulkResult]
    done: int
    refused: int


class RuleOutcomes(_Strict):
    rule: str
    cases: int
    findings: int
    resolved: int
    confirmed: int
    dismissed: int
    precision: float | None = Field(description="confirmed / judged; null before any judgement")
    median_first_action_seconds: float | None
    median_resolution_seconds: float | None
    judged: int = Field(default=0, description="resolved, and dismissed as false_positive")


class RulesPrecision(_Strict):
    rules: list[RuleOutcomes]
    cases_by_status: dict[Status, int]
    outcomes: dict[str, list[str]] = Field(description="per category; '*' for the others")
    confirming: list[str] = Field(description="outcomes that count as the rule being right")


class WhoAmI(_Strict):
    name: str
    role: Literal["viewer", "analyst", "supervisor"]
    assignable: list[str] = Field(description="names of analyst and supervisor tokens")


class AssignBody(_Request):
    assignee: Name | None = Field(description="a token's name; null unassigns")


class CommentBody(_Request):
    text: Text


class TransitionBody(_Request):
    to: Status
    outcome: str | None = Field(
        default=None,
        description="required to resolve (from the case's outcome list) and to dismiss (a reason from 'dismissals')",
    )
    note: Annotated[str, Field(max_length=MAX_TEXT)] | None = Field(default=None, description="required with 'other'")
    reason: Annotated[str, Field(max_length=MAX_TEXT)] | None = Field(default=None, description="required to reopen")


class BulkAssignBody(_Request):
    ids: CaseIds
    assignee: Name | None


class BulkDismissBody(_Request):
    ids: CaseIds
    reason: Literal["false_positive", "duplicate", "not_actionable", "other"] = Field(
        description="why they are dismissed (only false_positive counts in the rules' precision)"
    )
    note: Annotated[str, Field(max_length=MAX_TEXT)] | None = None


MODELS: list[type[BaseModel]] = [
    CaseOut, CaseDetail, CaseList, BulkReply, RulesPrecision, WhoAmI,
    AssignBody, CommentBody, TransitionBody, BulkAssignBody, BulkDismissBody,
]  # fmt: skip


def all_outcomes() -> dict[str, list[str]]:
    return {**{category: list(names) for category, names in OUTCOMES.items()}, "*": list(GENERIC_OUTCOMES)}


def case_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the case desk's schemas and paths added."""
    schemas = document["components"]["schemas"]
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    def body(name: str) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    def answers(name: str, *refusals: int) -> dict[str, Any]:
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        why = {
            400: "bad input: malformed JSON, a wrong field or query parameter, no Idempotency-Key",
            401: "missing or wrong bearer token",
            403: "the caller's role or assignment does not allow it",
            404: "no such case",
            409: "not in this state (e.g. resolving a dismissed case; another case is open for the customer)",
            422: "a value the case rules refuse (outcome, assignee, reason) or a reused Idempotency-Key",
        }
        found = {
            "200": {
                "description": "done (a retry with the same Idempotency-Key answers the stored result, "
                "with header Idempotent-Replayed: true)",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            }
        }
        return found | {str(code): {"description": why[code], "content": error} for code in (401, *refusals)}

    idem = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": "unique per intended change (e.g. a UUID per click); a retry with it changes nothing twice",
    }
    case_id = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "integer"}}

    def query(name: str, description: str, values: tuple[str, ...] = ()) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", **({"enum": list(values)} if values else {})}
        return {"name": name, "in": "query", "schema": schema, "description": description}

    filters = [
        query("status", "case status", STATUSES),
        query("assignee", "a token's name; '-' for unassigned"),
        query("rule", "cases with a finding of this rule"),
        query("category", "rule family", CATEGORIES),
        query("severity", "the case's highest severity", SEVERITIES),
        query("tier", "the customer's live tier at the latest finding", ("I", "II", "III", "IV")),
        query("queue", "who works it: analyst, or rm (a relationship manager's task)", ("analyst", "rm")),
        query("customer", "customer id"),
        query("type", "what opened it", CASE_TYPES),
        query("min_age", "opened at least this long ago: 30m, 4h, 7d"),
        query("max_age", "opened at most this long ago"),
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
    ]

    def change(summary: str, request: str, reply: str, *refusals: int, path: bool = True) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "parameters": [case_id, idem] if path else [idem],
                "requestBody": body(request),
                "responses": answers(reply, 400, 403, *refusals),
            }
        }

    document["paths"].update(
        {
            "/cases": {
                "get": {
                    "summary": "cases, newest first, filtered",
                    "parameters": filters,
                    "responses": answers("CaseList", 400),
                }
            },
            "/cases/{case_id}": {
                "get": {
                    "summary": "a case with its newest comments and trail entries (cursors to older ones) and findings",
                    "parameters": [
                        case_id,
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 50}},
                        {"name": "comments_before", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "audit_before", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    ],
                    "responses": answers("CaseDetail", 400, 404),
                }
            },
            "/cases/{case_id}/assign": change(
                "assign (supervisor: anyone; analyst: themselves, or unassign their own)",
                "AssignBody",
                "CaseOut",
                404,
                409,
                422,
            ),
            "/cases/{case_id}/comment": change(
                "comment (analyst: own or unassigned cases); 409 once the case holds the most comments",
                "CommentBody",
                "CaseOut",
                404,
                409,
                422,
            ),
            "/cases/{case_id}/transition": change(
                "open -> in_progress -> resolved (with an outcome) | dismissed; a supervisor reopens with a reason",
                "TransitionBody",
                "CaseOut",
                404,
                409,
                422,
            ),
            "/cases/bulk/assign": change(
                "supervisor: assign many cases; each case answered on its own",
                "BulkAssignBody",
                "BulkReply",
                422,
                path=False,
            ),
            "/cases/bulk/dismiss": change(
                "supervisor: dismiss many cases; each case answered on its own",
                "BulkDismissBody",
                "BulkReply",
                422,
                path=False,
            ),
            "/whoami": {"get": {"summary": "the caller's name and role", "responses": answers("WhoAmI")}},
            "/rules/precision": {
                "get": {
                    "summary": "per rule, from the cases: precision (confirmed / resolved), volume, median times",
                    "responses": answers("RulesPrecision"),
                }
            },
        }
    )
    return document

"""The rule versions' request bodies and answers (``streams.api.rules``), and their OpenAPI paths.

A request body is strict: no unknown field, no coercion. ``rules_openapi`` adds the rule
version paths to ``streams.api.models.openapi_document``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from rules.versions import MAX_REASON_CHARS, MAX_YAML_BYTES
from streams.api.models import Timestamp

Reason = Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS)]
VersionNumber = Annotated[int, Field(ge=1, le=10**9)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ProposeBody(_Request):
    yaml: str = Field(min_length=1, max_length=MAX_YAML_BYTES, description="the rules, as a rules file is written")
    reason: Reason


class ApproveBody(_Request):
    pass


class RejectBody(_Request):
    reason: Reason


class PromoteBody(_Request):
    effective: AwareDatetime | None = Field(
        default=None,
        description="event time from which the version is in force (RFC 3339 with its offset); "
        "default: now + FUNDFLOW_RULES_PROMOTION_GRACE_SECONDS",
    )


class ShadowBody(_Request):
    version: VersionNumber


class StopBody(_Request):
    pass


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VersionOut(_Out):
    number: int
    fingerprint: str
    status: Literal["proposed", "approved", "rejected"]
    state: Literal["in_force", "scheduled", "was_in_force", "never_in_force"] = Field(
        description="in_force: the last promotion that took effect; scheduled: promoted, effective later"
    )
    shadow: bool = Field(description="running in shadow now")
    author: str
    author_role: str
    reason: str
    proposed_at: Timestamp
    approver: str | None
    approved_at: Timestamp | None
    rejecter: str | None
    rejected_at: Timestamp | None
    rejected_reason: str | None
    base: int | None = Field(description="the version last promoted when this one was proposed")
    diff: list[str] = Field(description="what it changes from base, one setting per line")
    effective: list[Timestamp] = Field(description="the instants (event time) from which it was promoted")


class VersionDetail(VersionOut):
    yaml: str = Field(description="the text as proposed ('' for the deployment's own version 1)")
    rules: dict[str, Any] = Field(description="every setting, defaults included (the canonical JSON)")


class TimelineOut(_Out):
    effective: Timestamp
    effective_us: int
    version: int
    fingerprint: str
    by: str
    at: Timestamp


class ShadowOut(_Out):
    version: int
    fingerprint: str
    started_at: Timestamp
    by: str


class VersionList(_Out):
    versions: list[VersionOut] = Field(description="newest first")
    timeline: list[TimelineOut] = Field(description="oldest first")
    shadow: ShadowOut | None
    in_force: int | None = Field(description="the version in force now (wall clock as event time)")


class TimelineList(_Out):
    timeline: list[TimelineOut] = Field(description="oldest first")
    shadow: ShadowOut | None
    in_force: int | None


class DiffRow(_Out):
    path: str
    a: Any
    b: Any
    changed: bool


class DiffOut(_Out):
    a: VersionDetail
    b: VersionDetail
    rows: list[DiffRow] = Field(description="every setting of both, by dotted path")
    lines: list[str] = Field(description="what changes from a to b, one line per setting")


class RuleAuditOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    at: Timestamp
    actor: str
    role: str
    action: Literal["bootstrap", "propose", "approve", "reject", "promote", "rollback", "shadow_start", "shadow_stop"]
    version: int | None
    reason: str | None = None


class RuleAuditList(_Out):
    audit: list[RuleAuditOut] = Field(description="newest first")


class ReportRule(_Out):
    rule: str
    live: int
    shadow: int
    added: int
    removed: int
    changed: int
    removed_false_positive: int = Field(description="removed findings whose case analysts dismissed as false positive")
    removed_confirmed: int


class ReportCustomer(_Out):
    customer_id: str
    added: int
    removed: int
    changed: int


class ReportSuppressed(_Out):
    rule: str
    why: str
    count: int


class RemovedCases(_Out):
    removed: int
    with_case: int
    false_positive: int
    confirmed: int
    other: int
    open: int
    no_case: int


class RemovedFinding(_Out):
    live_id: str | None
    rule: str | None
    customer_id: str | None
    ts: str | None
    case_id: int | None
    status: str | None
    outcome: str | None
    verdict: Literal["no_case", "open", "false_positive", "confirmed", "other"]


class ShadowRunCount(_Out):
    run: str | None = Field(description="version@from_us: the event-time instant the run judged from")
    records: int


class ShadowReport(_Out):
    version: int
    run: str | None = Field(description="the run reported (default: the one running, else the latest)")
    runs: list[ShadowRunCount] = Field(description="every run of the version, latest first")
    running: bool
    records: int
    summary: str
    rules: list[ReportRule]
    customers: list[ReportCustomer] = Field(description="the most changed first (at most 200)")
    customers_total: int
    suppressed: list[ReportSuppressed]
    removed_cases: RemovedCases
    removed_findings: list[RemovedFinding] = Field(description="at most 500, by event time")


MODELS: tuple[type[BaseModel], ...] = (
    ProposeBody, RejectBody, PromoteBody, ShadowBody, VersionOut, VersionDetail, TimelineOut, ShadowOut, VersionList,
    TimelineList, DiffOut, RuleAuditList, ShadowReport,
)  # fmt: skip

ROUTES: tuple[tuple[str, str, str, str | None, str, tuple[int, ...]], ...] = (
    # method, path, role, body, answer, refusals
    ("get", "/rules/versions", "viewer", None, "VersionList", ()),
    ("post", "/rules/versions", "analyst", "ProposeBody", "VersionDetail", (422,)),
    ("get", "/rules/versions/{number}", "viewer", None, "VersionDetail", (404,)),
    ("post", "/rules/versions/{number}/approve", "supervisor, not the author", None, "VersionDetail", (404, 409)),
    ("post", "/rules/versions/{number}/reject", "supervisor, not the author", "RejectBody", "VersionDetail",
     (404, 409, 422)),
    ("post", "/rules/versions/{number}/promote", "supervisor", "PromoteBody", "TimelineOut", (404, 409, 422)),
    ("post", "/rules/rollback", "supervisor", "PromoteBody", "TimelineOut", (409, 422)),
    ("get", "/rules/diff", "viewer", None, "DiffOut", (404,)),
    ("get", "/rules/timeline", "viewer", None, "TimelineList", ()),
    ("get", "/rules/audit", "viewer", None, "RuleAuditList", ()),
    ("post", "/rules/shadow", "analyst", "ShadowBody", "ShadowOut", (404, 409)),
    ("post", "/rules/shadow/stop", "analyst", None, "ShadowOut", (409,)),
    ("get", "/rules/shadow/report", "viewer", None, "ShadowReport", (404,)),
)  # fmt: skip


def rules_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the rule versions' schemas and paths added."""
    schemas = document["components"]["schemas"]
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    why = {
        400: "bad input: malformed JSON, a wrong field or query parameter",
        401: "missing or wrong bearer token",
        403: "the caller's role does not allow it, or they proposed the version (four eyes)",
        404: "no such version",
        409: "not in a state that allows it (already decided, in force, another shadow run)",
        422: "the rules, a reason or an instant refused, or a reused Idempotency-Key",
        503: "the versions kept changing (retry), or Redis is down",
    }
    ref = "#/components/schemas/"
    for method, path, role, body, answer, refusals in ROUTES:
        codes = {400, 401, 503, *refusals} | ({403} if method == "post" else set())
        operation: dict[str, Any] = {
            "summary": f"{method.upper()} {path} ({role})",
            "responses": {
                "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": ref + answer}}}},
                **{str(code): {"description": why[code]} for code in sorted(codes)},
            },
        }
        if body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": {"$ref": ref + body}}}}  # fmt: skip
        document["paths"].setdefault(path, {})[method] = operation
    return document

"""The 看板's response shape (``GET /board``) and its part of the OpenAPI document.

``board_openapi`` adds the path to ``streams.api.models.openapi_document`` (after the
case desk's part), as ``streams.api.case_models`` does for the cases.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.api.models import Money, TierName, Timestamp

Count = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HourFlow(_Strict):
    hour: int = Field(ge=0, le=23, description="hour of the board's day, bank zone")
    inflow: Money
    outflow: Money
    net: Money


class KindFlow(_Strict):
    kind: str = Field(description="transaction kind of docs/events.md")
    inflow: Money
    outflow: Money


class Flow(_Strict):
    inflow: Money
    outflow: Money


class NetFlow(_Strict):
    inflow: Money
    outflow: Money
    net: Money


class Flows(_Strict):
    hours: list[HourFlow] = Field(min_length=24, max_length=24)
    by_kind: list[KindFlow]
    external: Flow
    internal: Flow
    total: NetFlow
    external_outflow_share: str | None = Field(description="external outflow / all outflow of the day; null: none")


class FindingCount(_Strict):
    kind: Literal["alert", "recommendation", "push"]
    category: str
    rule: str
    count: Count


class FindingDay(_Strict):
    day: str = Field(description="YYYY-MM-DD, bank zone")
    alert: Count
    recommendation: Count
    push: Count


class Findings(_Strict):
    last_24h: list[FindingCount] = Field(description="ending at the hour of latest (event time)")
    last_30d: list[FindingCount]
    by_day: list[FindingDay]


class RateBucket(_Strict):
    bucket: str = Field(description="0-10% .. 90-100%, or none (no inflow in the window)")
    customers: Count


class NetOutflow(_Strict):
    customer_id: str
    net_outflow: Money


class CaseAge(_Strict):
    bucket: Literal["<1h", "1-4h", "4-24h", "1-3d", "3-7d", ">7d"] = Field(description="cases.model.AGE_BUCKETS")
    count: Count


class BoardCases(_Strict):
    by_status: dict[Literal["open", "in_progress", "resolved", "dismissed"], Count]
    open_by_age: list[CaseAge] = Field(description="open and in-progress cases by time since opened (API clock)")


class BoardTiers(_Strict):
    distribution: dict[TierName, Count]
    moved_this_week: Count = Field(description="customers whose tier changed in week (a refreshed view)")
    week: str | None = Field(description="ISO week of the latest tier refresh, event time, e.g. 1998-W52")
    refreshed_at: str | None = Field(description="when the cut points were last computed (wall clock)")


class Board(_Strict):
    """The 看板: the bank's money today (worker aggregates, exactly-once), the cases, the tiers."""

    day: str | None = Field(description="the board's day (event time, bank zone); null: no data yet")
    latest: Timestamp | None = Field(description="the latest event time seen: the board's now")
    zone: str
    flows: Flows
    findings: Findings
    collection_rate: list[RateBucket] = Field(description="customers by 资金归集率 (collection rate)")
    top_net_outflow: list[NetOutflow] = Field(description="largest net outflow of the day first, only > 0")
    cases: BoardCases
    tiers: BoardTiers
    display: dict[str, str | None] = Field(
        description="the tiles written for people by rules/fmt.py: today's inflow, outflow and net in the currency's "
        "minor digits with thousands separators, the external outflow share as a percentage"
    )


def board_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the 看板's schema and path added."""
    schemas = document["components"]["schemas"]
    schema = Board.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas["Board"] = schema
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    document["paths"]["/board"] = {
        "get": {
            "summary": "看板: today's flows, findings, 归集率, top net outflow, cases by status and age, tiers",
            "description": "Every role may read it (viewer included). Flows and findings are the workers' "
            "exactly-once aggregates in event time; tiers are a refreshed view; case ages use the API's clock.",
            "parameters": [
                {
                    "name": "day",
                    "in": "query",
                    "schema": {"type": "string", "format": "date"},
                    "description": "YYYY-MM-DD (bank zone, years 1970..2100); default: the latest day with data",
                },
                {
                    "name": "top",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 100, "default": 10},
                    "description": "how many top net outflow customers to list; 0 lists none",
                },
            ],
            "responses": {
                "200": {
                    "description": "the board",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Board"}}},
                },
                "400": {"description": "a parameter out of its documented range, or an unknown one", "content": error},
                "401": {"description": "missing or wrong bearer token", "content": error},
            },
        }
    }
    return document

"""Request and response models of the contact endpoints (``streams.api.contact``), and their
part of the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contact.model import SCOPES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConsentBody(_Strict):
    channel: Literal["push", "sms", "all"] = Field(description="all: every channel, today's and later ones")
    status: Literal["opt_out", "opt_in"]
    reason: str = Field(min_length=1, max_length=500, description="why, in the recorder's words (the audit keeps it)")
    at: str | None = Field(
        default=None, description="when the customer said it (RFC 3339 with an offset; default: now; not later)"
    )


class ComplaintBody(_Strict):
    reason: str = Field(min_length=1, max_length=500, description="the complaint (投诉), in short")
    at: str | None = Field(default=None, description="when it was made (RFC 3339 with an offset; default: now)")


class ScopeState(BaseModel):
    status: Literal["opt_out", "opt_in"]
    at: str


class ContactView(BaseModel):
    customer_id: str
    tier: Literal["I", "II", "III", "IV"] | None = Field(description="the live tier now")
    routes: dict[str, Literal["push", "sms", "rm"]] = Field(description="finding category -> route for that tier")
    scopes: dict[str, ScopeState | None] = Field(description=f"the latest record per scope ({', '.join(SCOPES)})")
    complaint: dict[str, str] | None = Field(description="the latest complaint: at, quiet_until")
    held: dict[str, str | None] = Field(description="per channel: why a push now would be held (None: it goes)")
    source: str = Field(description="where the last change came from: api, or import N")
    audit: list[dict[str, Any]] = Field(description="records made through the API: who, when, why (oldest first)")
    held_pushes: list[dict[str, Any]] = Field(description="this customer's recent pushes held at delivery")


def contact_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the contact paths and schemas added."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (ConsentBody, ComplaintBody, ContactView):
        schemas[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schemas[model.__name__].pop("$defs", {}))

    def ref(name: str) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}

    customer = {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string"}}
    refusals = {
        "400": {"description": "malformed body or id"},
        "401": {"description": "no or wrong token"},
        "403": {"description": "a viewer records nothing"},
    }
    listing = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
    paths = document.setdefault("paths", {})
    paths["/contact/{customer_id}"] = {
        "get": {"summary": "consent, complaint, live tier and route, audit, held pushes of a customer",
                "parameters": [customer], "responses": {"200": {"description": "the view", **ref("ContactView")}}},
    }  # fmt: skip
    paths["/contact/{customer_id}/consent"] = {
        "post": {"summary": "record an opt-out or opt-in (analyst, supervisor)", "parameters": [customer],
                 "requestBody": ref("ConsentBody"),
                 "responses": {"200": {"description": "the view after it", **ref("ContactView")}, **refusals}},
    }  # fmt: skip
    paths["/contact/{customer_id}/complaint"] = {
        "post": {"summary": "record a complaint (投诉): every push held for complaint_quiet_days (analyst, supervisor)",
                 "parameters": [customer], "requestBody": ref("ComplaintBody"),
                 "responses": {"200": {"description": "the view after it", **ref("ContactView")}, **refusals}},
    }  # fmt: skip
    paths["/contact/held"] = {
        "get": {"summary": "pushes held at delivery, newest first, with why", "parameters": [listing,
                {"name": "customer", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{held: [...]}"}}},
    }  # fmt: skip
    paths["/contact/imports"] = {
        "get": {"summary": "consent imports: who, when, the file's SHA-256, counts", "parameters": [listing],
                "responses": {"200": {"description": "{imports: [...]}"}}},
    }  # fmt: skip
    return document

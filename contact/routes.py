"""How FundFlow contacts a customer about a marketing finding: the route table
(``deploy/contact.yaml``, ``FUNDFLOW_CONTACT_FILE``), pure.

A route is where a collection opportunity or a sweep for a customer of a given live tier
goes: ``push`` (an app notification, within the worker's caps), ``sms`` (a text message,
within the same caps), or ``rm`` (a task for the customer's relationship manager: a case
in the desk's ``rm`` queue, never a push). The tier is the customer's **live** tier when
the contact is made (``streams.tiers``), never part of a finding (docs/findings.md), so
routing happens at delivery: the webhook relay holds the push of an ``rm`` route, and the
case intake files the finding's case in the ``rm`` queue.

The file is read as strictly as the rules file (``rules.config``): a key written twice,
an unknown key, tier, category or route, another ``version``: refused with its line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rules.config import _line_order, _lines, _Loader, _problem

Route = Literal["push", "sms", "rm"]
ROUTES: tuple[Route, ...] = ("push", "sms", "rm")
TIERS = ("I", "II", "III", "IV")
NO_TIER = "none"  # a customer the live tiers do not know yet
CATEGORIES = ("collection", "sweep")  # the findings a push follows (rules.config.PUSH_SOURCES)
CHANNEL_OF_ROUTE = {"push": "push", "sms": "sms"}  # the consent channel each contact route uses
PUSH_CHANNEL = {"push": "app", "sms": "sms"}  # the PushTrigger ``channel`` the relay delivers


class ContactConfigError(ValueError):
    """The contact file cannot be used; one line."""


class TierRoutes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    collection: Route = "push"
    sweep: Route = "push"


class Routes(BaseModel):
    """Per live tier (and ``none``: no tier yet), per finding category, the route."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # 客户分层运营: the top tier gets a person (专属服务), not an app notification
    I: TierRoutes = TierRoutes(collection="rm", sweep="rm")  # noqa: E741
    II: TierRoutes = TierRoutes()
    III: TierRoutes = TierRoutes()
    IV: TierRoutes = TierRoutes()
    none: TierRoutes = TierRoutes()


class ContactConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    # A complaint (投诉) holds every push to the customer this long after it was made.
    complaint_quiet_days: int = Field(default=90, ge=0, le=3650)
    routes: Routes = Routes()

    def route(self, tier: str | None, category: str) -> Route:
        """The route of a finding of ``category`` for a customer of live ``tier`` (None: none yet).
        A category without a row (not a marketing finding) is a push: the caps decide."""
        row: TierRoutes = getattr(self.routes, tier if tier in TIERS else NO_TIER)
        return row.collection if category == "collection" else row.sweep if category == "sweep" else "push"


def parse_contact(text: str, source: str = "contact") -> ContactConfig:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ContactConfigError(f"{source}: empty file (FUNDFLOW_CONTACT_FILE=defaults for the built-in table)")
        lines: dict[tuple[str | int, ...], int] = {}
        problems = _lines(node, (), lines)
        raw = loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ContactConfigError(f"{source}: {line}not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        raise ContactConfigError(f"{source}: line 1: the top level must be a mapping")
    config = None
    try:
        config = ContactConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [_problem(error, lines) for error in exc.errors(include_url=False)]
    if problems or config is None:
        problems = sorted(problems, key=_line_order)
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ContactConfigError(f"{source}: {problems[0]}{more}")
    return config


def load_contact(path: Path | str) -> ContactConfig:
    """``FUNDFLOW_CONTACT_FILE``: a path, or ``defaults`` for the built-in table."""
    if str(path) == "defaults":
        return ContactConfig()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ContactConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_contact(text, str(path))

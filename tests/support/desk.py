"""The case desk's people and tokens, findings as the rules engine renders them, and the desk's HTTP calls."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from rules.config import Severity
from rules.engine import Finding as RuleFinding
from streams.api.cases import CASES
from streams.pipeline import outbox_entry
from streams.rulestep import TOPIC_OF_KIND
from streams.settings import ApiToken, Settings
from streams.storage.keys import Keys
from streams.storage.store import StateStore

PREFIX = "desk"


PEOPLE = {
    "boss": ("t-boss-0123456789", "supervisor", "zhang"),
    "li": ("t-li-0123456789ab", "analyst", "li.wei"),
    "wang": ("t-wang-0123456789", "analyst", "wang"),
    "viewer": ("t-view-0123456789", "viewer", "kan"),
}


SETTINGS = Settings(
    key_prefix=PREFIX,
    api_tokens=(
        *(ApiToken(token=SecretStr(t), role=role, name=name) for t, role, name in PEOPLE.values()),  # type: ignore[arg-type]
        SecretStr("t-plain-0123456789"),
    ),
)


_txn = itertools.count(1)


Client = TestClient[Any, Any]


def finding(
    customer: str,
    rule: str = "large_external_outflow",
    category: str = "outflow_risk",
    severity: Severity = "medium",
    kind: str = "alert",
    tier: str | None = "III",
) -> dict[str, Any]:
    """A finding exactly as the rules engine renders it for its topic."""
    made = RuleFinding(kind, rule, category, severity, customer, tier, 1_700_000_000_000_000, f"T{next(_txn)}",
                       {"amount": "1.00"}, f"{rule} for {customer}")  # fmt: skip
    return made.as_dict(SETTINGS.zone)


async def publish(client: Client, *findings: dict[str, Any]) -> None:
    """Findings written to the feed by the workers' own code, then taken into cases."""
    store = StateStore(client.app[CASES].redis, Keys(PREFIX))
    published: dict[str, list[bytes]] = {}
    for f in findings:
        entry = outbox_entry(TOPIC_OF_KIND[f["type"]], f["customer_id"], orjson.dumps(f))
        published.setdefault(f["customer_id"], []).append(entry)
    await store.confirm_published(published)
    while await client.app[CASES].intake_feed():
        pass


def auth(who: str) -> dict[str, str]:
    token = "t-plain-0123456789" if who == "plain" else PEOPLE[who][0]
    return {"Authorization": f"Bearer {token}"}


async def get(client: Client, path: str, who: str = "viewer", status: int = 200) -> Any:
    response = await client.get(path, headers=auth(who))
    assert response.status == status, await response.text()
    return await response.json()


async def post(client: Client, who: str, path: str, body: Any, status: int = 200, key: str | None = None) -> Any:
    headers = {**auth(who), "Idempotency-Key": key or str(uuid.uuid4())}
    response = await client.post(path, data=orjson.dumps(body) if not isinstance(body, bytes) else body,
                                 headers=headers)  # fmt: skip
    assert response.status == status, await response.text()
    return await response.json()

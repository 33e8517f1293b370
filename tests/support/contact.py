"""Live tiers as a refresh leaves them, for the contact tests (``streams.tiers``' own writes)."""

from __future__ import annotations

from decimal import Decimal

import redis.asyncio as aioredis

from streams.storage.keys import Keys
from streams.tiers import write_contributions

CONTRIBUTION = {"I": Decimal("5.00"), "II": Decimal("2.50"), "III": Decimal("1.50"), "IV": Decimal("0.50")}


async def set_tiers(client: aioredis.Redis, prefix: str, tiers: dict[str, str]) -> None:
    """Cut points 1, 2, 3 and each customer's exact contribution, so each has the tier given."""
    keys = Keys(prefix)
    await client.hset(keys.tier_cuts, mapping={"q1": "1", "q2": "2", "q3": "3", "n": "4"})
    await write_contributions(client, keys, {c: CONTRIBUTION[t] for c, t in tiers.items()})

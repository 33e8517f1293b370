"""``GET /board``: the 看板 a team leaves open on a wall (``/console/board.html``).

Three sources, each read without a walk over customers or cases:

* the bank-level aggregates the workers keep in their atomic commit
  (``streams.board.read_board``: the day's flows per hour, kind and
  external/internal, findings per rule over 24 h and 30 days, the 归集率
  histogram, the largest net outflows), exactly-once, in event time;
* the cases (``CaseStore.board``): counts per status and open cases by age,
  from the case indexes; ages are measured with the API's clock (when the case
  was opened), not in event time;
* the tiers (``streams.tiers``): customers per tier by ZCOUNT between the cut
  points, and how many changed tier in the week of the latest refresh. Tiers
  are a refreshed view (``FUNDFLOW_TIER_REFRESH_SECONDS``), not exactly-once.

Every role may read it (viewer included); parameters are checked by
``streams.api.params`` (400 with one line). Redis down is the server's 503.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from rules import fmt
from streams.api import params
from streams.api.cases import CASES
from streams.board import read_board
from streams.settings import Settings
from streams.storage.keys import Keys
from streams.tiers import moved_this_week, read_cuts, tier_counts

BOARD_PARAMS = ("day", "top")
REDIS = web.AppKey("board_redis", aioredis.Redis)
KEYS = web.AppKey("board_keys", Keys)
SETTINGS = web.AppKey("board_settings", Settings)


async def tiers_part(redis: aioredis.Redis, keys: Keys, settings: Settings) -> dict[str, Any]:
    cuts, info = await read_cuts(redis, keys)
    week, moved = await moved_this_week(redis, keys, settings.zone)
    return {
        "distribution": await tier_counts(redis, keys, cuts),
        "moved_this_week": moved,
        "week": week,
        "refreshed_at": info.get("refreshed_at"),
    }


async def get_board(request: web.Request) -> web.Response:
    params.known(request.query, BOARD_PARAMS)
    day = params.day(request.query)
    top = params.integer(request.query, "top", params.TOP)
    redis, keys, settings = request.app[REDIS], request.app[KEYS], request.app[SETTINGS]
    board = await read_board(redis, keys, settings.zone, day, cluster=settings.redis_cluster, top=top)
    board["cases"] = await request.app[CASES].board()
    board["tiers"] = await tiers_part(redis, keys, settings)
    board["display"] = tiles(board["flows"], settings.currency)
    return web.Response(body=orjson.dumps(board), content_type="application/json")


def tiles(flows: dict[str, Any], currency: str) -> dict[str, str | None]:
    """The 看板's tiles for people (``rules.fmt``): the day's money and the external share."""
    total, share = flows["total"], flows["external_outflow_share"]
    net = Decimal(total["net"])
    return {
        "inflow": fmt.amount(Decimal(total["inflow"]), currency),
        "outflow": fmt.amount(Decimal(total["outflow"]), currency),
        "net": ("+" if net > 0 else "") + fmt.amount(net, currency),
        "external_outflow_share": None if share is None else fmt.percent(Decimal(share), 1),
    }


def setup_board(app: web.Application, redis: aioredis.Redis, keys: Keys, settings: Settings) -> None:
    """Register ``GET /board`` (after ``setup_cases``: it reads the case store)."""
    app[REDIS] = redis
    app[KEYS] = keys
    app[SETTINGS] = settings
    app.router.add_get("/board", get_board)

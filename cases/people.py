"""Who may act on cases: the registry of people, kept in Redis with the cases.

A name in ``FUNDFLOW_API_TOKENS`` is a claim; the registry says whether it holds. Per
name it keeps the role and the fingerprints of the tokens that may act as that person
(``token_fingerprint``: a salted SHA-256, never the token). ``fundflow people add`` (a
supervisor's command) writes it, and every change is appended to an audit list
(``{cases}:people:log``) with who made it.

An API process checks its tokens against the registry before it serves (``check``), and
refuses to start, in one line, when a token claims a name that is not registered, is
registered with another role, or is registered without that token. Reserved names
(``system``, ``token-N`` for named tokens, ...) and one name with two roles are refused
before, by ``Settings``.

A deployment's very first API start, on an empty registry, registers its own tokens (one
atomic step, logged ``by_system``): the bootstrap. From then on only the command adds
people, so a second process with another token claiming a registered name cannot start
(docs/security.md).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from cases.model import RANK, Actor, reserved_name, valid_name
from streams.errors import ConfigError
from streams.settings import Role

# KEYS: people, people:log. ARGV: now, then per person: name, JSON {role, tokens}.
# Registers them all only when the registry is empty; returns 1 if it did.
BOOTSTRAP_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  local person = cjson.decode(ARGV[i + 1])
  redis.call('RPUSH', KEYS[2], cjson.encode({at = tonumber(ARGV[1]), by_system = true, action = 'bootstrap',
    name = ARGV[i], role = person.role, tokens = person.tokens}))
end
return 1
"""


# KEYS: people, people:log. ARGV: name, role, fingerprint, the log entry. Returns {1, person} or {0, role}.
ADD_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
local person = raw and cjson.decode(raw) or {role = ARGV[2], tokens = {}}
if person.role ~= ARGV[2] then return {0, person.role} end
local known = false
for _, t in ipairs(person.tokens) do if t == ARGV[3] then known = true end end
if not known then person.tokens[#person.tokens + 1] = ARGV[3] end
raw = cjson.encode(person)
redis.call('HSET', KEYS[1], ARGV[1], raw)
redis.call('RPUSH', KEYS[2], ARGV[4])
return {1, raw}
"""


def token_fingerprint(token: str) -> str:
    """What the registry keeps of a token: enough to recognise it, nothing to use it."""
    return hashlib.sha256(b"fundflow-api-token\0" + token.encode()).hexdigest()[:32]


def people_key(base: str) -> str:
    return f"{base}:people"


async def registry(client: aioredis.Redis, base: str) -> dict[str, dict[str, Any]]:
    raw = cast(dict[bytes, bytes], await client.hgetall(people_key(base)))
    return {name.decode(): orjson.loads(value) for name, value in raw.items()}


async def add(client: aioredis.Redis, base: str, name: str, role: Role, fingerprint: str, by: str) -> dict[str, Any]:
    """Register ``name`` with ``role`` and let the token of ``fingerprint`` act as them (audited:
    ``by`` made the change). A name registered with another role keeps it: ``ConfigError``."""
    plain = re.fullmatch(r"token-[0-9]+", name) is not None  # a plain-string token's name: full access only
    if not valid_name(name) or (reserved_name(name) and not (plain and role == "supervisor")):
        raise ConfigError(f"{name!r} is not a name a person may have (reserved, or not [A-Za-z0-9_.@-]{{1,64}})")
    if role not in RANK:
        raise ConfigError(f"role must be one of {', '.join(RANK)}")
    if len(fingerprint) != 32 or any(c not in "0123456789abcdef" for c in fingerprint):
        raise ConfigError("a token fingerprint is 32 hex digits (fundflow people fingerprint)")
    entry = {"at": int(time.time() * 1000), "by": by, "action": "add", "name": name, "role": role, "token": fingerprint}
    script = client.register_script(ADD_LUA)
    key = people_key(base)
    found, detail = cast(list[bytes], await script(keys=[key, f"{key}:log"], args=[name, role, fingerprint,
                                                                                   orjson.dumps(entry)]))  # fmt: skip
    if int(found) == 0:
        raise ConfigError(f"{name} is registered as {detail.decode()}, not {role}: one name, one role")
    return cast(dict[str, Any], orjson.loads(detail))


async def check(client: aioredis.Redis, base: str, tokens: Sequence[tuple[str, Actor]]) -> bool:
    """Whether the tokens (fingerprint, principal) may act as whom they claim; ``ConfigError``
    in one line when not. On an empty registry they are registered (the bootstrap): True."""
    wanted: dict[str, dict[str, Any]] = {}
    for fingerprint, who in tokens:
        person = wanted.setdefault(who.name, {"role": who.role, "tokens": []})
        if person["role"] != who.role:
            raise ConfigError(f"{who.name} is claimed with two roles, {person['role']} and {who.role}")
        person["tokens"].append(fingerprint)
    if not wanted:
        return False
    args: list[Any] = [int(time.time() * 1000)]
    for name, person in wanted.items():
        args += [name, orjson.dumps(person)]
    script = client.register_script(BOOTSTRAP_LUA)
    if int(await script(keys=[people_key(base), f"{people_key(base)}:log"], args=args)):
        return True
    known = await registry(client, base)
    for name, person in wanted.items():
        found = known.get(name)
        if found is None:
            role = person["role"]
            raise ConfigError(f"a token claims {name}, who is not registered: a supervisor runs "
                              f"`fundflow people add {name} --role {role} --token-fingerprint F`")  # fmt: skip
        if found["role"] != person["role"]:
            raise ConfigError(f"a token claims {name} as {person['role']}, but {name} is registered as {found['role']}")
        for fingerprint in person["tokens"]:
            if fingerprint not in found["tokens"]:
                raise ConfigError(f"a token claims {name}, but it is not one of {name}'s registered tokens "
                                  f"(fingerprint {fingerprint}: `fundflow people add` registers it)")  # fmt: skip
    return False

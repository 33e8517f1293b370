"""API tokens carry a role and a name; plain strings keep today's full access."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from cases.model import Actor
from cases.people import token_fingerprint
from streams.api.roles import identify, principals
from streams.settings import ApiToken, Settings


def test_tokens_from_the_environment_mix_strings_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FUNDFLOW_API_TOKENS",
        '["old-token-0123456789", {"token": "t-li-0123456789abcdef", "role": "analyst", "name": "li.wei"},'
        ' {"token": "t-boss-0123456789abcd", "role": "supervisor", "name": "zhang"},'
        ' {"token": "t-see-0123456789abcde", "role": "viewer", "name": "v"}]',
    )
    settings = Settings()
    tokens = principals(settings)
    assert [(p.name, p.role) for _, p in tokens] == [
        ("token-1", "supervisor"), ("li.wei", "analyst"), ("zhang", "supervisor"), ("v", "viewer"),
    ]  # fmt: skip
    assert identify(b"t-li-0123456789abcdef", tokens) == Actor("li.wei", "analyst", token_fingerprint(LI))
    assert identify(b"old-token-0123456789", tokens) == Actor("token-1", "supervisor", token_fingerprint(OLD))
    assert identify(b"t-li-0123456789abcdef ", tokens) is None and identify(b"", tokens) is None


@pytest.mark.parametrize(
    "value",
    [
        '[{"token": "t", "role": "admin", "name": "x"}]',
        '[{"token": "t", "role": "analyst"}]',
        '[{"token": "", "role": "analyst", "name": "x"}]',
        '[{"token": "t", "role": "analyst", "name": "has space"}]',
        '[{"token": "t", "role": "analyst", "name": "x", "extra": 1}]',
        '["same", {"token": "same", "role": "viewer", "name": "x"}]',
    ],
)
def test_a_wrong_token_entry_is_a_start_up_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FUNDFLOW_API_TOKENS", value)
    with pytest.raises(ValidationError):
        Settings()


def test_a_wrong_role_reads_as_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUNDFLOW_API_TOKENS", '["a", {"token": "t", "role": "admin", "name": "x"}]')
    with pytest.raises(ValidationError, match=r"token 2: role: Input should be 'viewer', 'analyst' or 'supervisor'"):
        Settings()


LI, OLD = "t-li-0123456789abcdef", "old-token-0123456789"


@pytest.mark.parametrize("token", ["", " ", " " * 20, "short-12345", "has a space 0123456789", "tab\t0123456789abcdef",
                                   "ünïcode-0123456789abc"])  # fmt: skip
def test_a_token_has_16_visible_ascii_characters_at_least(token: str) -> None:
    for entry in (SecretStr(token), ApiToken(token=SecretStr(token or "x"), role="viewer", name="v")):
        if isinstance(entry, ApiToken) and not token:
            continue
        with pytest.raises(ValidationError, match=r"token 1: at least 16 visible ASCII characters, no spaces"):
            Settings(api_tokens=(entry,))


@pytest.mark.parametrize("name", ["system", "System", "token-4", "demo", "anonymous"])
def test_a_named_token_cannot_claim_a_name_the_product_writes(name: str) -> None:
    with pytest.raises(ValidationError, match=f"token 1: name '{name}' is reserved"):
        Settings(api_tokens=(ApiToken(token=SecretStr(LI), role="analyst", name=name),))


def test_one_name_has_one_role() -> None:
    tokens = (ApiToken(token=SecretStr(LI), role="analyst", name="s.one"),
              ApiToken(token=SecretStr(OLD), role="supervisor", name="s.one"))  # fmt: skip
    with pytest.raises(ValidationError, match=r"token 2: name 's\.one' has two roles, analyst and supervisor"):
        Settings(api_tokens=tokens)

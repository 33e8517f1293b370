"""API tokens carry a role and a name; plain strings keep today's full access."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from cases.model import Actor
from streams.api.roles import identify, principals
from streams.settings import ApiToken, Settings


def test_tokens_from_the_environment_mix_strings_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FUNDFLOW_API_TOKENS",
        '["old-token", {"token": "t-li", "role": "analyst", "name": "li.wei"},'
        ' {"token": "t-boss", "role": "supervisor", "name": "zhang"},'
        ' {"token": "t-see", "role": "viewer", "name": "v"}]',
    )
    settings = Settings()
    tokens = principals(settings)
    assert [p for _, p in tokens] == [
        Actor("token-1", "supervisor"),
        Actor("li.wei", "analyst"),
        Actor("zhang", "supervisor"),
        Actor("v", "viewer"),
    ]
    assert identify(b"t-li", tokens) == Actor("li.wei", "analyst")
    assert identify(b"old-token", tokens) == Actor("token-1", "supervisor")
    assert identify(b"t-li ", tokens) is None and identify(b"", tokens) is None


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


def test_empty_plain_tokens_are_skipped() -> None:
    settings = Settings(api_tokens=(SecretStr(""), ApiToken(token=SecretStr("a"), role="viewer", name="v")))
    assert [p for _, p in principals(settings)] == [Actor("v", "viewer")]

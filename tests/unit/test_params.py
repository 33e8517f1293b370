"""``streams.api.params``: the one validator of the API's query parameters (issue 20, row 11)."""

from __future__ import annotations

import pytest

from streams.api import params
from streams.storage.snapshot import parse_as_of


@pytest.mark.parametrize("text", ["0", "1", "1000", "0001"])
def test_ascii_digits_in_range_are_read(text: str) -> None:
    assert params.integer({"n": text}, "n", (0, 1000, 5)) == int(text)
    assert params.integer({}, "n", (0, 1000, 5)) == 5


@pytest.mark.parametrize("text", ["²", "①", "١", "٣٢", "５", "1_0", " 1", "+1", "-1", "1001", "", "1.0", "0x1"])
def test_anything_else_is_a_bad_request(text: str) -> None:
    with pytest.raises(params.BadRequest, match=r"^n must be an integer 0\.\.1000"):
        params.integer({"n": text}, "n", (0, 1000, 5))


def test_stream_ids_are_what_redis_accepts() -> None:
    assert params.stream_id("5") == "5-0"
    assert params.stream_id("0007-01") == "7-1"
    top = (1 << 64) - 1
    assert params.stream_id(f"{top}-{top}") == f"{top}-{top}"
    for bad in ("1-", "-1", f"{top + 1}", f"0-{top + 1}", "1-2-3", "$", "١-0", "a-0", ""):
        with pytest.raises(params.BadRequest):
            params.stream_id(bad)
    assert params.parse_stream_id("10-2") > params.parse_stream_id("9-99")


@pytest.mark.parametrize(
    "text",
    ["9999-12-31T16:00:00+00:00", "0001-01-01T00:00:00+08:00", "1969-12-31T23:00:00+00:00", "2101-01-01T00:00:00Z",
     "1970-01-01T07:00:00+08:00", "２０００-01-01T00:00:00+08:00"],
)  # fmt: skip
def test_as_of_outside_1970_to_2100_is_a_value_error_not_an_overflow(text: str) -> None:
    with pytest.raises(ValueError, match="as_of") as refused:
        parse_as_of(text)
    assert text not in str(refused.value)  # the input is never quoted back
    with pytest.raises(params.BadRequest, match=r"^as_of must be "):
        params.as_of({"as_of": text})


def test_bearer_tokens_that_are_not_utf8_are_no_token() -> None:
    assert params.bearer("Bearer abc ") == b"abc"
    assert params.bearer("bearer abc") == b"abc"
    assert params.bearer("Basic abc") is None
    assert params.bearer("Bearer \udcff\udcfe") is None  # how invalid UTF-8 reaches a handler

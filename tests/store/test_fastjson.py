"""dashi.fastjson.loads: the standard library's results, faster where orjson is exact."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashi import fastjson

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def same(a: object, b: object) -> bool:
    """Equal, with the same types all the way down (1 and 1.0 differ)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return a == b


@given(json_values)
def test_every_json_text_parses_as_with_the_standard_library(value: object) -> None:
    text = json.dumps(value)
    for given_text in (text, text.encode("utf-8")):
        assert same(fastjson.loads(given_text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "[-9999999999999999999, 18446744073709551616, 123456789012345678901234567890]",
        "[-9223372036854775809]",
        '{"id": "1234567890123456789012", "n": 5}',
        "[0.12345678901234567890123]",
        '{"a": 1, "a": 2}',
        '"\\ud800 lone surrogate"',
        '"caf\\u00e9 \u2603"',
    ],
)
def test_texts_orjson_would_read_differently_parse_as_with_the_standard_library(
    text: str,
) -> None:
    assert same(fastjson.loads(text), json.loads(text))


def test_nan_and_infinity_literals_are_accepted_like_the_standard_library() -> None:
    value = fastjson.loads("[NaN, Infinity, -Infinity]")
    assert math.isnan(value[0]) and value[1:] == [math.inf, -math.inf]


def test_invalid_json_raises_json_decode_error() -> None:
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads('{"a": ')

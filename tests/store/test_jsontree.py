"""dashi.jsontree: the standard library's results at any depth, without recursion.

The fallbacks (an explicit stack) must agree exactly with ``json`` and
``copy.deepcopy`` where those work, and keep working where those run out of
recursion.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashi import codec, jsontree

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers() | st.booleans() | st.none(), inner, max_size=4)
    ),
    max_leaves=16,
)
COMPACT = {"separators": (",", ":")}


def nested(levels: int) -> Any:
    """``levels`` containers deep, alternating objects and arrays, with scalars beside."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"k": value, "n": level} if level % 2 else [value, 1.5, None]
    return value


@given(trees)
def test_iterative_encoding_is_the_standard_compact_encoding(value: Any) -> None:
    assert jsontree._dumps_iterative(value) == json.dumps(value, **COMPACT)  # type: ignore[arg-type]


@given(trees)
def test_iterative_decoding_is_the_standard_decoding(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, **COMPACT, ensure_ascii=False)):  # type: ignore[arg-type]
        assert repr(jsontree._loads_iterative(text)) == repr(json.loads(text))


@given(trees)
def test_iterative_copy_is_a_deep_copy(value: Any) -> None:
    copied = jsontree._copy_iterative(value)
    assert repr(copied) == repr(copy.deepcopy(value))
    assert jsontree.depth(copied) == jsontree.depth(value)


@pytest.mark.parametrize(
    "text",
    ["", "[1,]", '{"a" 1}', "[1 2]", '{"a":1,}', "[", "tru", "{1:2}", "[1]x", '"open', "-"],
)
def test_iterative_decoding_refuses_what_the_standard_decoding_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        jsontree._loads_iterative(text)


@pytest.mark.parametrize("levels", [0, 1, 100, 1000, 5000, 50_000])
def test_any_depth_is_measured_copied_encoded_and_decoded(levels: int) -> None:
    value = nested(levels)
    assert jsontree.depth(value) == levels
    text = jsontree.dumps(value)
    assert jsontree.dumps(jsontree.tree_copy(value)) == text
    decoded = jsontree.loads(text)
    assert jsontree.depth(decoded) == levels
    assert jsontree.dumps(decoded) == text
    assert jsontree.loads(text.encode()) is not None or levels == 0


def test_a_shallow_value_takes_the_standard_library_path() -> None:
    value = {"a": [1, 2.5, math.inf, "é"], 3: None}
    assert jsontree.dumps(value) == json.dumps(value, **COMPACT)  # type: ignore[arg-type]
    assert jsontree.loads('{"a": NaN}')["a"] != jsontree.loads('{"a": NaN}')["a"]


def test_circular_structures_are_refused_not_followed() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        jsontree._dumps_iterative(loop)
    with pytest.raises(ValueError, match="circular"):
        jsontree._copy_iterative(loop)
    assert jsontree.depth(loop, limit=50) == 51


def test_values_that_are_not_json_are_refused_at_any_depth() -> None:
    with pytest.raises(TypeError):
        jsontree.dumps([nested(3000), {1, 2}])
    with pytest.raises(TypeError):
        jsontree.dumps({(1, 2): nested(3000)})


def test_the_rpc_codec_encodes_a_body_deeper_than_its_encoders_recurse() -> None:
    # Given a reply nested 3000 levels (past orjson's 255 and kombu's recursion)
    body = {"result": nested(3000), "error": None}
    # When it is encoded for the wire, Then it is the same JSON text
    assert jsontree.loads(codec.encode(body)) is not None
    assert jsontree.dumps(jsontree.loads(codec.encode(body))) == jsontree.dumps(body)


@given(trees, st.integers(min_value=0, max_value=8))
def test_deeper_than_agrees_with_depth(value: Any, limit: int) -> None:
    assert jsontree.deeper_than(value, limit) == (jsontree.depth(value) > limit)


@pytest.mark.parametrize("limit", [100, 200, 201, 1000])
def test_deeper_than_stops_at_its_limit_whatever_the_depth(limit: int) -> None:
    assert jsontree.deeper_than(nested(50_000), limit)
    assert not jsontree.deeper_than(nested(limit), limit)

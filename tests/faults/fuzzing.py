"""Strategies and checks shared by the fuzz tests of the RPC operations.

Arguments are drawn from three families, mixed per field:

* plausible values (ids that exist in the seeded state, the legal modes and
  states), so that deep code paths are reached;
* near-valid junk: the right key with a value of the wrong type, huge or negative
  numbers, odd strings (empty, control characters, lone surrogates, very long);
* arbitrary JSON values, nested, including what Python's ``json`` module accepts
  on the wire beyond the standard (``NaN``, ``Infinity``);
* attack values: nesting around and far past the request depth limit (100 levels,
  up to 5,000) and values past the size limits (1 MiB per argument, 2 MiB per
  request; see :mod:`pdcommon.limits`).

The reply of every case must be a success or one of the four dashi error types,
and must survive ``json.dumps`` as the real service publishes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dashi.protocol import ERROR_PREFIX
from pdcommon.limits import DEFAULT_MAX_ARGUMENT_BYTES, DEFAULT_MAX_DEPTH
from tests.support.hypothesis_profiles import examples

#: The error types a reply may carry; anything else means an unhandled exception.
KNOWN_ERRORS = frozenset(
    ERROR_PREFIX + name
    for name in ("BadRequestError", "NotFoundError", "WriteConflictError", "UnknownOperationError")
)


def fuzz_settings(max_examples: int) -> settings:
    """Settings of a fuzz test running ``max_examples`` cases.

    No deadline (a cold first call may be slow), no example database (huge
    values), and quiet health checks (the strategies are deliberately large).
    """
    return settings(
        max_examples=examples(max_examples),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
        database=None,
    )


ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\t\n\r",
    "\ud800",  # a lone surrogate: valid in JSON text, not encodable as UTF-8
    "\udfff-x",
    "\u202e\u200b",
    "💥",
    "a" * 5_000,
    "../../etc/passwd",
    "%(ENV_HOME)s",
    "$(reboot)",
    "NaN",
    "-1",
    "1e309",
    "null",
    "500-RUNNING",
    "600-RUNNING",
    "pd_domain_",
    "dashi.exceptions.BadRequestError",
    "sys.",
    ".",
]

BIG_NUMBERS = [
    0,
    -1,
    -(2**31),
    2**31,
    2**63,
    -(2**63) - 1,
    2**64,
    10**100,
    -(10**100),
    1e308,
    -1e308,
    -0.0,
    0.5,
    math.inf,
    -math.inf,
    math.nan,
]

odd_text = st.one_of(
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=20),
    st.text(st.characters(codec=None, categories=["Cc", "Cs", "Zs", "Co", "Lo"]), max_size=8),
)
numbers = st.one_of(
    st.sampled_from(BIG_NUMBERS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(odd_text, children, max_size=4),
    ),
    max_leaves=8,
)


def nested_value(levels: int) -> Any:
    """A JSON value ``levels`` levels deep, alternating arrays and objects."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"k": value, "n": level} if level % 2 else [value]
    return value


#: Depths around and far past the request limit.
ATTACK_DEPTHS = [
    DEFAULT_MAX_DEPTH - 1,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_DEPTH + 1,
    300,
    500,
    1000,
    5000,
]
#: Values past the size limits: one argument over 1 MiB (one string, many small
#: values, escaped characters) and one over the 2 MiB of a whole request. Built
#: once: requests never modify their arguments.
OVERSIZED = [
    "x" * (DEFAULT_MAX_ARGUMENT_BYTES + 1),
    {"blob": "x" * (2 * DEFAULT_MAX_ARGUMENT_BYTES + 1)},
    ["y" * 1000] * 1100,
    {f"key-{i:06d}-{'z' * 90}": i for i in range(11_000)},
    {"escaped": "\u00e9" * (DEFAULT_MAX_ARGUMENT_BYTES // 6 + 1)},
]
attack_values = st.one_of(
    st.sampled_from(ATTACK_DEPTHS).map(nested_value),
    st.sampled_from(OVERSIZED),
)


def field_values(plausible: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values of a field, else junk of any JSON type."""
    return st.one_of(st.sampled_from(plausible), json_scalars, json_values)


def with_attacks(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``values``, or now and then an attack value (too deep, too large)."""
    return st.one_of(values, attack_values)


def arguments(fields: Mapping[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """The ``args`` of a request: near-valid dicts (a subset of the operation's keys,
    maybe with unknown keys), or any JSON value at all."""
    near_valid = st.fixed_dictionaries({}, optional=dict(fields)) if fields else st.just({})
    with_unknown = st.tuples(near_valid, st.dictionaries(odd_text, json_values, max_size=2)).map(
        lambda pair: {**pair[1], **pair[0]}
    )
    return st.one_of(
        near_valid,
        near_valid,
        near_valid,
        with_unknown,
        json_values,
    )


def check_reply(reply: Any) -> bool:
    """Assert ``reply`` is a well-formed success or known error; return True if an error."""
    assert isinstance(reply, dict) and set(reply) == {"result", "error"}, reply
    # The real service publishes the reply as JSON: it must be serializable.
    json.dumps(reply)
    error = reply["error"]
    if error is None:
        return False
    assert error["exc_type"] in KNOWN_ERRORS, f"unhandled exception: {error}"
    assert error["traceback"] in ("", None), "tracebacks are not sent by default"
    return True

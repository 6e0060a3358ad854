"""Message bodies: orjson on our side, plain JSON that kombu's json serializer reads."""

from __future__ import annotations

import dataclasses
import datetime

import kombu.serialization
import pytest
from kombu.message import Message

from dashi import codec


def message(body: bytes | str, content_type: str = "application/json") -> Message:
    return Message(body=body, content_type=content_type, content_encoding="utf-8")


VALUES = [
    {"result": [{"upid": "p1", "round": 0, "start_times": [1.5], "owner": None}], "error": None},
    {"text": "héllo \u2603 'q' \"x\" \\ \n", "nested": {"a": [], "b": {}}, "t": True},
    [1, -2, 2**63 - 1, -(2**63), 0.1, 1e300, -0.0],
]


@pytest.mark.parametrize("value", VALUES)
def test_encoded_bodies_are_json_that_kombu_decodes_to_the_same_value(value):
    # Given a body encoded by us, When a legacy (kombu json) peer decodes it
    encoded = codec.encode(value)
    decoded = kombu.serialization.loads(encoded, codec.CONTENT_TYPE, codec.CONTENT_ENCODING)
    # Then it is the same value, and we decode it back the same too
    assert decoded == value
    assert codec.decode(message(encoded)) == value


@pytest.mark.parametrize("value", VALUES)
def test_bodies_from_kombu_peers_decode_to_the_same_value(value):
    content_type, encoding, body = kombu.serialization.dumps(value, serializer="json")
    assert codec.decode(Message(body=body, content_type=content_type, content_encoding=encoding))
    assert codec.decode(message(body)) == value


def test_integers_beyond_64_bits_stay_exact_both_ways():
    value = {"big": 2**70, "small": -(2**80)}
    assert codec.decode(message(codec.encode(value))) == value


def test_non_string_keys_become_strings_as_with_kombu():
    value = {1: "a", None: "b", 2.5: "c"}
    assert codec.decode(message(codec.encode(value))) == {"1": "a", "null": "b", "2.5": "c"}


def test_values_outside_plain_json_are_encoded_as_kombu_encodes_them():
    # Given a date (kombu tags it) and a dataclass (kombu refuses it)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert codec.encode({"when": when}) == kombu.serialization.dumps(
        {"when": when}, serializer="json"
    )[2].encode("utf-8")

    @dataclasses.dataclass
    class Point:
        x: int

    with pytest.raises(TypeError):
        codec.encode({"p": Point(1)})


def test_a_circular_body_cannot_be_encoded():
    body: dict[str, object] = {}
    body["self"] = body
    with pytest.raises(ValueError):
        codec.encode(body)


def test_non_finite_floats_travel_as_null():
    assert codec.decode(message(codec.encode([float("nan"), float("inf")]))) == [None, None]


def test_the_nan_literal_of_older_peers_still_decodes():
    decoded = codec.decode(message(b'{"x": NaN}'))
    assert decoded["x"] != decoded["x"]


def test_invalid_json_raises_value_error():
    with pytest.raises(ValueError):
        codec.decode(message(b'{"op": '))


def test_other_content_types_are_decoded_by_kombu():
    content_type, encoding, body = kombu.serialization.dumps({"a": 1}, serializer="pickle")
    with pytest.raises(kombu.exceptions.ContentDisallowed):
        codec.decode(
            Message(
                body=body, content_type=content_type, content_encoding=encoding, accept=["json"]
            )
        )

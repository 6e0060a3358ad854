"""Malformed heartbeats are dropped: BadRequestError, a warning, and nothing stored."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from dashi.errors import BadRequestError
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from pdcommon.heartbeat_messages import HeartbeatMessage, resource_id_from_sender
from pdcommon.states import ProcessState
from tests.health.conftest import (
    BOTH_STORES,
    NOW,
    beat,
    bring_up,
    iso,
    put_process,
    report,
    snapshot,
)

GOOD_TIME = iso(NOW)


def with_process(**entry: Any) -> dict[str, Any]:
    """A heartbeat whose one process entry is ``report("proc1", 0, RUNNING)`` changed by ``entry``."""
    process = report("proc1", 0, [500, "RUNNING"])
    for key, value in entry.items():
        if value is _DROP:
            process.pop(key)
        else:
            process[key] = value
    return {"eeagent_id": "eeagent_1", "timestamp": GOOD_TIME, "processes": [process]}


_DROP = object()

MALFORMED: dict[str, Any] = {
    "not an object": ["timestamp", GOOD_TIME],
    "null": None,
    "a string": "heartbeat",
    "no timestamp": {"processes": []},
    "no processes": {"timestamp": GOOD_TIME},
    "processes not a list": {"timestamp": GOOD_TIME, "processes": {"upid": "proc1"}},
    "process not an object": {"timestamp": GOOD_TIME, "processes": ["proc1"]},
    "naive timestamp": {"timestamp": "2013-10-21T19:52:05", "processes": []},
    "timestamp not a date": {"timestamp": "yesterday", "processes": []},
    "timestamp a number": {"timestamp": NOW, "processes": []},
    "timestamp null": {"timestamp": None, "processes": []},
    "node_id not a string": {"node_id": 7, "timestamp": GOOD_TIME, "processes": []},
    "eeagent_id not a string": {"eeagent_id": ["a"], "timestamp": GOOD_TIME, "processes": []},
    "no upid": with_process(upid=_DROP),
    "empty upid": with_process(upid=""),
    "upid not a string": with_process(upid=12),
    "no round": with_process(round=_DROP),
    "round not digits": with_process(round="abc"),
    "round a decimal string": with_process(round="1.5"),
    "round a signed string": with_process(round="-1"),
    "round negative": with_process(round=-1),
    "round a float": with_process(round=1.0),
    "round a boolean": with_process(round=True),
    "round null": with_process(round=None),
    "round empty": with_process(round=""),
    "no state": with_process(state=_DROP),
    "state list of one": with_process(state=[500]),
    "state list of three": with_process(state=[500, "RUNNING", "x"]),
    "state list reversed": with_process(state=["RUNNING", 500]),
    "state list with boolean code": with_process(state=[True, "RUNNING"]),
    "state list with nested name": with_process(state=[500, ["RUNNING"]]),
    "state a number": with_process(state=500),
    "state a bare name": with_process(state="RUNNING"),
    "state with four digits": with_process(state="5000-RUNNING"),
    "state lowercase": with_process(state="500-running"),
    "state null": with_process(state=None),
    "state an object": with_process(state={"code": 500}),
}

GARBAGE_SENDERS = [5, "", "sys.", "sys.a b", "sys.tab\there", "sys.new\nline", ["x"], "x" * 300]


@pytest.fixture
def running(handler: HeartbeatHandler, store: Store) -> dict[str, Any]:
    """eeagent_1 holding proc1 ASSIGNED; returns the store snapshot."""
    bring_up(handler)
    put_process(store, "proc1", ProcessState.ASSIGNED, assigned="eeagent_1")
    return snapshot(store)


@BOTH_STORES
@pytest.mark.parametrize("message", MALFORMED.values(), ids=list(MALFORMED))
def test_a_malformed_heartbeat_is_rejected_and_changes_nothing(
    handler: HeartbeatHandler,
    store: Store,
    messenger: RecordingMessenger,
    running: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    message: Any,
) -> None:
    # Given eeagent_1 holding an ASSIGNED process
    # When it sends a malformed heartbeat
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(BadRequestError, match="invalid heartbeat"),
    ):
        handler.heartbeat(message, sender="sys.eeagent_1")
    # Then nothing is stored, nothing is sent, and a warning names the sender
    assert snapshot(store) == running
    assert messenger.messages == []
    assert any("dropping heartbeat from 'sys.eeagent_1'" in r.message for r in caplog.records)


@pytest.mark.parametrize("sender", GARBAGE_SENDERS)
def test_a_heartbeat_from_a_garbage_sender_is_rejected(
    handler: HeartbeatHandler, store: Store, running: dict[str, Any], sender: Any
) -> None:
    # Given eeagent_1 holding an ASSIGNED process
    # When a well-formed heartbeat arrives with an unusable sender
    with pytest.raises(BadRequestError, match="sender"):
        handler.heartbeat(beat([report("proc1", 0, [500, "RUNNING"])]), sender=sender)
    # Then nothing is stored
    assert snapshot(store) == running


def test_a_heartbeat_without_sender_or_eeagent_id_is_rejected(
    handler: HeartbeatHandler, store: Store, running: dict[str, Any]
) -> None:
    # Given/When a heartbeat with neither a sender nor an eeagent_id
    with pytest.raises(BadRequestError, match="sender"):
        handler.heartbeat({"timestamp": GOOD_TIME, "processes": []})
    # Then nothing is stored
    assert snapshot(store) == running


def test_the_error_names_the_offending_field() -> None:
    # Given/When a heartbeat whose second process has a bad round
    message = {
        "timestamp": GOOD_TIME,
        "processes": [report("a", 0, "500-RUNNING"), report("b", "x1", "500-RUNNING")],
    }
    # Then the error points at it
    with pytest.raises(BadRequestError, match=r"processes\.1\.round"):
        HeartbeatMessage.parse(message)


def test_the_legacy_agent_message_is_accepted_and_normalised() -> None:
    # Given the message a legacy eeagent sends, with an extra key from a newer agent
    message = {
        "eeagent_id": "eeagent_1",
        "node_id": "node1",
        "timestamp": "2013-10-21T19:52:05.123456+00:00",
        "processes": [
            {"upid": "p1", "round": "12", "state": [500, "RUNNING"], "msg": "None"},
            {"upid": "p2", "round": 3, "state": "850-FAILED", "msg": "Fatal from supd"},
            {"upid": "p3", "round": "0", "state": ["700", "TERMINATED"]},
        ],
        "future_field": {"x": 1},
    }
    # When it is parsed
    parsed = HeartbeatMessage.parse(message)
    # Then rounds are ints and states "NNN-NAME" strings
    assert [(p.upid, p.round, p.state) for p in parsed.processes] == [
        ("p1", 12, "500-RUNNING"),
        ("p2", 3, "850-FAILED"),
        ("p3", 0, "700-TERMINATED"),
    ]
    assert parsed.timestamp.utcoffset() is not None


def test_an_ended_rounds_additive_signal_is_parsed_and_a_bad_one_counts_as_absent() -> None:
    # Given entries from this project's agents: killed by SIGKILL, and a garbled signal
    message = {
        "eeagent_id": "eeagent_1",
        "timestamp": "2013-10-21T19:52:05.123456+00:00",
        "processes": [
            {
                "upid": "p1",
                "round": "1",
                "state": [850, "FAILED"],
                "msg": "killed by signal SIGKILL (9)",
                "signal": 9,
            },
            {"upid": "p2", "round": "1", "state": [850, "FAILED"], "signal": "nine"},
        ],
    }
    # When it is parsed
    parsed = HeartbeatMessage.parse(message)
    # Then the signal is kept with no exit code; the garbled one is dropped
    first, second = parsed.processes
    assert (first.signal, first.exit_code, first.why) == (9, None, "killed by signal SIGKILL (9)")
    assert second.signal is None


@pytest.mark.parametrize(
    ("sender", "expected"),
    [("eeagent_1", "eeagent_1"), ("sys.eeagent_1", "eeagent_1"), ("a.b.c", "c")],
)
def test_the_resource_id_is_the_text_after_the_last_dot(sender: str, expected: str) -> None:
    # Given/When/Then
    assert resource_id_from_sender(sender) == expected

"""Fuzz every dispatcher RPC's arguments through the daemon's RPC wiring.

Given a dispatcher wired like the daemon over a seeded store, when any operation
is called with near-valid or arbitrary arguments (and odd ``sender`` headers),
then the reply is a success or a known dashi error - never a generic remote error
- and a rejected request leaves every store listing unchanged and sends nothing.

Cases: 17 operations x :data:`EXAMPLES_PER_OPERATION` and
:data:`HEARTBEAT_EXAMPLES` heartbeats on a MemoryStore, :data:`SQL_EXAMPLES` mixed
operations on one SQLite store, :data:`BODY_EXAMPLES` malformed bodies, and
:data:`FLOOD_EXAMPLES` floods of fired heartbeats, valid and fuzzed mixed (through
the heartbeat intake: nothing is written before they are applied, and applying
them leaves the state the latest valid heartbeat of each agent leaves).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dashi.errors import BadRequestError
from dispatcher.service import RPC_OPERATIONS
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore
from pdcommon.heartbeat_messages import HeartbeatMessage, resource_id_from_sender
from pdcommon.states import InstanceState, ProcessState, QueueingMode, RestartMode
from tests.faults.dispatcher_harness import (
    DEFINITION_IDS,
    EXECUTABLE,
    UPIDS,
    Dispatcher,
    build,
    seed,
    snapshot,
)
from tests.faults.fuzzing import (
    arguments,
    check_reply,
    field_values,
    fuzz_settings,
    json_values,
    numbers,
    odd_text,
    with_attacks,
)
from tests.health.conftest import DOMAIN1, NOW, iso
from tests.support.hypothesis_profiles import examples

EXAMPLES_PER_OPERATION = 400
HEARTBEAT_EXAMPLES = 1000
SQL_EXAMPLES = 600
BODY_EXAMPLES = 200
FLOOD_EXAMPLES = 150

upids = field_values(UPIDS)
definition_ids = field_values(DEFINITION_IDS)
names = field_values(["n", "u", None])

reported_state = field_values(
    [
        [500, "RUNNING"],
        [800, "EXITED"],
        [700, "TERMINATED"],
        [850, "FAILED"],
        [400, "PENDING"],
        "500-RUNNING",
        "600-TERMINATING",
        [900, "REJECTED"],
        [0, "X"],
    ]
)
reported_process = st.one_of(
    st.fixed_dictionaries(
        {
            "upid": upids,
            "round": field_values([0, 1, 2, 3, "0", "2", "99"]),
            "state": reported_state,
        },
        optional={"msg": field_values(["None", ""])},
    ),
    json_values,
)
#: Heartbeat messages: mostly the documented shape with junk in places.
heartbeat_messages = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "eeagent_id": field_values(["eeagent_1", "eeagent_2"]),
            "node_id": field_values(["node1", "node2", None]),
            "timestamp": field_values(
                [
                    iso(NOW),
                    iso(NOW + 5),
                    iso(NOW - 3600),
                    "0001-01-01T00:00:00+23:59",
                    "9999-12-31T23:59:59-23:59",
                    "2013-10-21T19:52:05",
                    "2013-10-21T19:52:05.123456+00:00",
                ]
            ),
            "processes": st.one_of(st.lists(reported_process, max_size=5), json_values),
        },
    ),
    json_values,
)
#: ``sender`` headers, attack values included (a deeply nested header must be
#: refused like any other malformed one, never exhaust the interpreter's recursion).
senders = with_attacks(
    field_values(["sys.eeagent_1", "eeagent_1", "sys.eeagent_2", "x.y.eeagent_1", None])
)

engine_definitions = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "engine_id": field_values(["engine1", "engine3", "engine4", "new-engine"]),
            "slots": field_values([1, 4, 0, -1]),
            "base_need": field_values([0, 1]),
            "replicas": field_values([1, 2]),
            "spare_slots": field_values([0, 1]),
            "maximum_vms": field_values([1, None]),
            "heartbeat_period": field_values([5, None]),
            "heartbeat_warning": field_values([10, None]),
            "heartbeat_missing": field_values([20, None]),
            "iaas_allocation": field_values(["m1.small"]),
            "deployable_type": field_values(["dt"]),
            "config": field_values([{}, {"a": 1}]),
        },
    ),
    json_values,
)

#: Per operation, its argument names and the values tried for each.
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "create_definition": {
        "definition_id": field_values(["D", "D-new", "D3"]),
        "definition_type": field_values(["supd", None]),
        "executable": field_values([EXECUTABLE, {}]),
        "name": names,
        "description": names,
        "max_runtime_seconds": field_values([None, 30, 0.5, 0, -1, "x", 1e12]),
    },
    "describe_definition": {"definition_id": definition_ids},
    "update_definition": {
        "definition_id": definition_ids,
        "definition_type": field_values(["supd", None]),
        "executable": field_values([EXECUTABLE]),
        "name": names,
        "description": names,
        "max_runtime_seconds": field_values([None, 30, 0.5, 0, -1, "x", 1e12]),
    },
    "remove_definition": {"definition_id": definition_ids},
    "list_definitions": {},
    "create_process": {
        "upid": field_values([*UPIDS, "p-new"]),
        "definition_id": definition_ids,
        "name": names,
    },
    "schedule_process": {
        "upid": field_values([*UPIDS, "p-new"]),
        "definition_id": definition_ids,
        "configuration": field_values([{}, {"k": [1, 2]}, None]),
        "subscribers": field_values([[["sub", "process_state"]], [], None, [["a"]]]),
        "constraints": field_values([{}, {"engine": "engine1"}, {"hostname": "host1"}, None]),
        "queueing_mode": field_values([*QueueingMode.ALL, None]),
        "restart_mode": field_values([*RestartMode.ALL, None]),
        "execution_engine_id": field_values(["engine1", "engine2", "engine9", None]),
        "node_exclusive": field_values(["tag", None]),
        "name": names,
        "restart_policy": field_values([None, {"failure_limit": 3}, {"bogus": 1}, []]),
        "max_runtime_seconds": field_values([None, 30, 0.5, -1, "x"]),
        "group": field_values([None, "g1", "g 2", 3]),
        "labels": field_values([None, {"app": "web"}, {}, {"-x": "y"}, ["a"]]),
    },
    "describe_process": {"upid": upids},
    "describe_process_events": {"upid": upids, "limit": field_values([1, 20, 0, "x"])},
    "describe_processes": {
        "states": field_values([None, ["RUNNING"], ["500-RUNNING", "TERMINATED"], ["x"], "y"]),
        "group": field_values([None, "g1", "g 2"]),
        "label_selector": field_values([None, "app=web,tier!=db", "app in (a", "!x", ""]),
        "upid_prefix": field_values([None, "p", "%"]),
    },
    "restart_process": {"upid": upids},
    "terminate_process": {"upid": upids},
    "terminate_processes": {
        "states": field_values([None, ["RUNNING"], ["nope"]]),
        "group": field_values([None, "g1", "g 2"]),
        "label_selector": field_values([None, "app=web", "app in ()"]),
        "all": field_values([False, True, "yes"]),
    },
    "set_group_ttl": {
        "group": field_values(["g1", "g 2", None]),
        "ttl_seconds": field_values([None, 60, 0, -1, "x"]),
    },
    "set_system_boot": {"system_boot": field_values([True, False])},
    "dump": {},
    "heartbeat": {"message": heartbeat_messages},
    "node_state": {
        "node_id": field_values(["node1", "node2"]),
        "domain_id": field_values([DOMAIN1, "pd_domain_engine2", "pd_domain_nope", None]),
        "state": field_values([*vars(InstanceState).values(), *ProcessState.ALL]),
        "properties": field_values([{"hostname": "h"}, None, {}]),
    },
    "add_engine": {"definition": engine_definitions},
    "list_engines": {},
    "get_process_logs": {
        "upid": upids,
        "stream": field_values(["stdout", "stderr"]),
        "tail_bytes": field_values([1, 65536, 4 * 1024 * 1024, 0]),
    },
}

assert set(FIELDS) == set(RPC_OPERATIONS), "every operation is fuzzed"

# Every argument of every operation is also tried too deep and too large.
FIELDS = {
    op: {name: with_attacks(values) for name, values in fields.items()}
    for op, fields in FIELDS.items()
}

#: How many cases ran, per test (reported in the docs; checked below).
CASES: dict[str, int] = {}


def call(dispatcher: Dispatcher, op: str, args: Any, sender: Any) -> bool:
    """One request; a rejected one must leave the store and the messenger untouched.

    Returns:
        Whether the request was rejected.
    """
    before = snapshot(dispatcher.store)
    sent = len(dispatcher.messenger.messages)
    headers = {} if sender is None else {"sender": sender}
    reply = dispatcher.rpc.dispatch({"op": op, "args": args}, headers)
    rejected = check_reply(reply)
    if rejected:
        assert snapshot(dispatcher.store) == before, f"{op} was rejected but changed the store"
        assert len(dispatcher.messenger.messages) == sent, f"{op} was rejected but sent messages"
    return rejected


class _Seeded:
    """A seeded MemoryStore dispatcher, rebuilt only after a request succeeded.

    A rejected request is checked to change nothing, so the next case can reuse
    the same dispatcher; this keeps each case cheap.
    """

    def __init__(self) -> None:
        self._clean: Dispatcher | None = None

    def take(self) -> Dispatcher:
        if self._clean is None:
            self._clean = build(MemoryStore())
            seed(self._clean)
        dispatcher, self._clean = self._clean, None
        return dispatcher

    def give_back(self, dispatcher: Dispatcher) -> None:
        self._clean = dispatcher


SEEDED = _Seeded()


def fuzz_one(op: str, args: Any, sender: Any = None) -> None:
    dispatcher = SEEDED.take()
    if call(dispatcher, op, args, sender):
        SEEDED.give_back(dispatcher)
    CASES[op] = CASES.get(op, 0) + 1


@pytest.mark.parametrize("op", sorted(set(FIELDS) - {"heartbeat"}))
@fuzz_settings(EXAMPLES_PER_OPERATION)
@given(data=st.data())
def test_any_arguments_get_a_known_answer_and_a_rejection_writes_nothing(
    op: str, data: st.DataObject
) -> None:
    # Given a seeded dispatcher on a MemoryStore
    # When the operation is called with fuzzed arguments
    args = data.draw(arguments(FIELDS[op]), label="args")
    # Then the answer is known, and a rejection wrote nothing and sent nothing
    fuzz_one(op, args)


@fuzz_settings(HEARTBEAT_EXAMPLES)
@given(args=arguments(FIELDS["heartbeat"]), sender=senders)
# A time that leaves the calendar once converted to UTC (found by this fuzz).
@example(
    args={
        "message": {
            "eeagent_id": "eeagent_1",
            "node_id": "node1",
            "timestamp": "0001-01-01T00:30:00+01:00",
            "processes": [{"upid": "p-pending", "round": 0, "state": "500-RUNNING"}],
        }
    },
    sender="sys.eeagent_1",
)
def test_any_heartbeat_gets_a_known_answer_and_a_rejected_one_writes_nothing(
    args: Any, sender: Any
) -> None:
    # Given a seeded dispatcher, when an agent fires a fuzzed heartbeat with an odd
    # sender header, then it is taken or refused, and a refused one changes nothing
    fuzz_one("heartbeat", args, sender)


#: Well-formed heartbeats of the seeded agent and of a new one, reporting seeded processes.
valid_heartbeats = st.fixed_dictionaries(
    {
        "eeagent_id": st.sampled_from(["eeagent_1", "eeagent_2"]),
        "node_id": st.just("node1"),
        "timestamp": st.sampled_from([iso(NOW - 30), iso(NOW - 20), iso(NOW - 10), iso(NOW)]),
        "processes": st.lists(
            st.fixed_dictionaries(
                {
                    "upid": st.sampled_from(UPIDS),
                    "round": st.sampled_from([0, 2, 3, "0", "1"]),
                    "state": st.sampled_from(
                        [[400, "PENDING"], [500, "RUNNING"], [800, "EXITED"], "850-FAILED"]
                    ),
                }
            ),
            max_size=4,
        ),
    }
)
#: One fired heartbeat: ``(args, sender)``, valid or fuzzed.
fired_heartbeats = st.one_of(
    st.tuples(
        valid_heartbeats.map(lambda message: {"message": message}),
        st.sampled_from(["sys.eeagent_1", "eeagent_1", "sys.eeagent_2"]),
    ),
    st.tuples(arguments(FIELDS["heartbeat"]), senders),
)


@fuzz_settings(FLOOD_EXAMPLES)
@given(flood=st.lists(fired_heartbeats, min_size=1, max_size=12))
def test_a_fired_flood_writes_nothing_until_applied_then_what_each_latest_heartbeat_writes(
    flood: list[tuple[Any, Any]],
) -> None:
    # Given two identically seeded dispatchers
    fired, reference = build(MemoryStore()), build(MemoryStore())
    seed(fired)
    seed(reference)
    intake = fired.service.intake
    assert intake is not None
    before = snapshot(fired.store)
    # When a flood of heartbeats is fired at one (as agents do: no reply-to)
    latest: dict[str, tuple[datetime, Any, Any]] = {}
    for args, sender in flood:
        headers = {} if sender is None else {"sender": sender}
        reply = fired.rpc.dispatch({"op": "heartbeat", "args": args}, headers, one_way=True)
        if check_reply(reply):
            continue
        try:  # the model: the latest valid heartbeat of each agent, in order of first arrival
            beat = HeartbeatMessage.parse(args["message"])
            resource_id = resource_id_from_sender(sender, beat.eeagent_id)
        except BadRequestError:
            continue
        if resource_id not in latest or beat.timestamp >= latest[resource_id][0]:
            latest[resource_id] = (beat.timestamp, args["message"], sender)
    # Then nothing is written or sent before the intake applies them
    assert snapshot(fired.store) == before
    assert fired.messenger.messages == []
    # and once applied, the state is what applying each agent's latest one leaves
    assert intake.drain() == len(latest)
    handler = reference.service.heartbeats
    assert handler is not None
    for _, message, sender in latest.values():
        # (the intake logs a failing heartbeat and goes on)
        with contextlib.suppress(Exception):
            handler.heartbeat(message, sender)
    assert snapshot(fired.store) == snapshot(reference.store)
    assert fired.messenger.messages == reference.messenger.messages
    CASES["floods"] = CASES.get("floods", 0) + 1


@pytest.fixture(scope="module")
def sql_dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dispatcher]:
    path: Path = tmp_path_factory.mktemp("fuzz-sql") / "pd.db"
    store = SqlStore(f"sqlite:///{path}", create=True)
    dispatcher = build(store)
    seed(dispatcher)
    try:
        yield dispatcher
    finally:
        store.close()


@fuzz_settings(SQL_EXAMPLES)
@given(data=st.data())
def test_on_sqlite_any_operation_gets_a_known_answer_and_a_rejection_writes_nothing(
    sql_dispatcher: Dispatcher, data: st.DataObject
) -> None:
    # Given one SQLite-backed dispatcher whose state accumulates across cases
    op = data.draw(st.sampled_from(sorted(FIELDS)), label="op")
    args = data.draw(arguments(FIELDS[op]), label="args")
    sender = data.draw(senders, label="sender")
    # When / Then: as on the MemoryStore (SQL adds encoding and size limits)
    call(sql_dispatcher, op, args, sender)
    CASES["sqlite"] = CASES.get("sqlite", 0) + 1


bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "op": st.one_of(st.sampled_from(sorted(FIELDS)), odd_text, numbers, json_values),
            "args": with_attacks(st.one_of(st.just({}), json_values)),
        },
    ),
)


@fuzz_settings(BODY_EXAMPLES)
@given(
    body=bodies, headers=st.dictionaries(st.sampled_from(["sender", "reply-to", "x"]), json_values)
)
def test_any_request_body_gets_a_known_answer_and_a_rejection_writes_nothing(
    body: Any, headers: dict[str, Any]
) -> None:
    # Given a seeded dispatcher, when the body itself is junk (not {"op", "args"})
    dispatcher = SEEDED.take()
    before = snapshot(dispatcher.store)
    reply = dispatcher.rpc.dispatch(body, headers)
    # Then the answer is known, and a rejection wrote nothing
    if check_reply(reply):
        assert snapshot(dispatcher.store) == before
        SEEDED.give_back(dispatcher)
    CASES["bodies"] = CASES.get("bodies", 0) + 1


def test_the_fuzz_ran_its_cases() -> None:
    """Runs last in this module: the cases above really ran (the CI floor)."""
    if not CASES:
        pytest.skip("run with the fuzz tests above")
    total = sum(CASES.values())
    print(f"dispatcher fuzz: {total} cases {dict(sorted(CASES.items()))}")
    assert CASES.get("sqlite", 0) >= examples(SQL_EXAMPLES) // 2


@pytest.mark.parametrize(
    "op, args",
    [
        ("describe_process", {"upid": "\ud800"}),
        (
            "create_definition",
            {"definition_id": "D9", "definition_type": "\udfff", "executable": {}},
        ),
        ("node_state", {"node_id": "n\ud800", "domain_id": DOMAIN1, "state": "600-RUNNING"}),
        ("add_engine", {"definition": {"engine_id": "e\ud800", "slots": 1}}),
        (
            "schedule_process",
            {"upid": "p-new", "definition_id": "D", "configuration": {"\ud800": 1}},
        ),
    ],
)
def test_text_that_is_not_valid_unicode_is_refused_before_it_reaches_the_store(
    sql_dispatcher: Dispatcher, op: str, args: dict[str, Any]
) -> None:
    # Given a SQLite store (whose driver cannot encode a lone surrogate)
    # When a request carries one (JSON text may: "\ud800")
    reply = sql_dispatcher.rpc.dispatch({"op": op, "args": args}, {})
    # Then it is a bad request, not a UnicodeEncodeError from the driver
    assert reply["error"]["exc_type"] == "dashi.exceptions.BadRequestError"
    assert "not valid Unicode" in reply["error"]["value"]

"""The matchmaker sets aside a record it cannot place and goes on with the others.

A database written before requests had depth limits may hold a process whose
configuration nests hundreds of levels deep; such a record used to make every
matchmaking pass fail with ``RecursionError``, so no process was placed ever
again. Now the record is set aside: ``850-FAILED``, its subscribers told, its
queue entry gone, its reason logged and shown by ``dump``; every other process is
placed in the same pass, and ``describe_process``/``terminate_process`` work on it.

Runs on the memory store and on SQLite (the records are written straight into
the store, bypassing request validation, as an old database would hold them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.jsontree import depth
from dispatcher.engines import EngineRegistry
from dispatcher.matchmaker import Matchmaker
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore
from pdcommon.errors import StoreError
from pdcommon.settings import EngineSettings
from pdcommon.states import ProcessState
from tests.support.wiring import make_core, make_matchmaker

NOW = 1_700_000_000.0
DEFINITION = {"definition_id": "D", "executable": {"exec": "/bin/true", "argv": []}}


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = (
        MemoryStore()
        if request.param == "memory"
        else SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    )
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def messenger() -> RecordingMessenger:
    return RecordingMessenger()


@pytest.fixture
def matchmaker(store: Store, messenger: RecordingMessenger) -> Matchmaker:
    engines = EngineRegistry({"engine1": EngineSettings(slots=4)}, default_engine="engine1")
    made = make_matchmaker(store, messenger, engines, run_type="supd", clock=lambda: NOW)
    made.initialize()
    return made


def add_agent(store: Store, resource_id: str = "r1", slots: int = 4) -> None:
    store.add_node(Node(node_id="n1", domain_id="pd_domain_engine1", resources=[resource_id]))
    store.add_resource(
        Resource(
            resource_id=resource_id,
            node_id="n1",
            slot_count=slots,
            properties={"engine": "engine1", "resource_id": resource_id},
        )
    )


def queue(store: Store, upid: str, **fields: Any) -> None:
    fields.setdefault("definition", DEFINITION)
    store.add_process(Process(upid=upid, state=ProcessState.REQUESTED, **fields))
    store.enqueue(upid, 0)


def state(store: Store, upid: str) -> str:
    process = store.get_process(upid)
    assert process is not None
    return process.state


def launched(messenger: RecordingMessenger) -> list[str]:
    return [m.args["u_pid"] for m in messenger.messages if m.op == "launch_process"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("configuration", nested(500)),
        ("configuration", nested(5000)),
        ("constraints", nested(300)),
        ("definition", {**DEFINITION, "executable": {"exec": "/bin/true", "argv": nested(400)}}),
    ],
    ids=["configuration-500", "configuration-5000", "constraints-300", "definition-400"],
)
def test_a_record_nested_past_the_limit_is_set_aside_while_the_others_are_placed(
    store: Store, matchmaker: Matchmaker, messenger: RecordingMessenger, field: str, value: Any
) -> None:
    # Given an agent with free slots, and queued between two good processes, one
    # whose stored JSON nests past the depth limit (with a subscriber)
    add_agent(store)
    queue(store, "before")
    queue(store, "poisoned", **{field: value}, subscribers=[["sub", "op"]])
    queue(store, "after")
    # When a pass runs
    result = matchmaker.matchmake()
    # Then the good processes are placed and launched in that same pass
    assert result.complete
    assert sorted(upid for upid, _, _ in result.assigned) == ["after", "before"]
    assert sorted(launched(messenger)) == ["after", "before"]
    # And the poisoned one is failed, told to its subscriber, out of the queue
    assert result.set_aside == [("poisoned", 0)]
    assert state(store, "poisoned") == ProcessState.FAILED
    assert [m.args["process"]["state"] for m in messenger.sent_to("sub")] == [ProcessState.FAILED]
    assert store.list_queued() == []
    # And its reason is kept for dump, naming the field and the limit
    core = make_core(store, messenger)
    dumped = core.dump()
    assert dumped["set_aside"]["poisoned"]["round"] == 0
    assert dumped["set_aside"]["poisoned"]["reason"] == (
        f"{field} nested more than 100 levels deep (the limit)"
    )
    assert dumped["processes"]["poisoned"]["state"] == ProcessState.FAILED
    # And describe and terminate work on it
    described = core.describe_process("poisoned")
    assert described is not None and depth(described[field]) == depth(value)
    assert core.terminate_process("poisoned")["state"] == ProcessState.FAILED
    # And later passes go on placing new processes
    queue(store, "later")
    assert [upid for upid, _, _ in matchmaker.matchmake().assigned] == ["later"]


def test_a_record_the_planner_fails_on_is_set_aside_while_the_others_are_placed(
    store: Store, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    # Given a queued process whose stored definition is not an object (a corrupt
    # record: placement cannot work out its engine), between two good ones
    add_agent(store)
    queue(store, "before")
    queue(store, "corrupt", definition=["not", "an", "object"])
    queue(store, "after")
    # When a pass runs
    result = matchmaker.matchmake()
    # Then the good ones are placed, and the corrupt one is set aside with the error
    assert sorted(upid for upid, _, _ in result.assigned) == ["after", "before"]
    assert result.set_aside == [("corrupt", 0)]
    assert state(store, "corrupt") == ProcessState.FAILED
    reason = store.list_set_aside()["corrupt"]["reason"]
    assert reason.startswith("placement failed: AttributeError"), reason
    assert store.list_queued() == []


def test_a_record_whose_launch_fails_is_set_aside_and_its_slot_released(
    store: Store, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    # Given one free slot and a queued process whose launch message cannot be sent
    # for a reason of its own (not a broker failure)
    add_agent(store, slots=1)
    queue(store, "broken")
    original = messenger.fire

    def fire(target: str, op: str, **args: Any) -> None:
        if op == "launch_process" and args["u_pid"] == "broken":
            raise ValueError("cannot encode")
        original(target, op, **args)

    messenger.fire = fire  # type: ignore[method-assign]
    # When a pass places it
    result = matchmaker.matchmake()
    # Then it is set aside: FAILED, its slot free again
    assert result.set_aside == [("broken", 0)]
    assert state(store, "broken") == ProcessState.FAILED
    resource = store.get_resource("r1")
    assert resource is not None and resource.assigned == []
    reason = store.list_set_aside()["broken"]["reason"]
    assert reason == "launch failed: ValueError: cannot encode"
    # And the next process gets the slot
    queue(store, "next")
    assert [upid for upid, _, _ in matchmaker.matchmake().assigned] == ["next"]
    assert launched(messenger) == ["next"]


def test_the_set_aside_record_of_a_process_is_replaced_by_a_later_one(store: Store) -> None:
    store.record_set_aside("p1", {"round": 0, "reason": "first", "time": 1.0})
    store.record_set_aside("p0", {"round": 2, "reason": "other", "time": 2.0})
    store.record_set_aside("p1", {"round": 1, "reason": "second", "time": 3.0})
    assert store.list_set_aside() == {
        "p0": {"round": 2, "reason": "other", "time": 2.0},
        "p1": {"round": 1, "reason": "second", "time": 3.0},
    }


def test_a_record_that_cannot_even_be_set_aside_is_skipped_for_the_term(
    store: Store, matchmaker: Matchmaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a poisoned record whose set-aside record cannot be written (not a
    # database failure: something about the record itself), and a good process
    add_agent(store)
    queue(store, "poisoned", configuration=nested(500))
    queue(store, "good")

    def refuse(upid: str, record: dict[str, Any]) -> None:
        raise ValueError("cannot keep this record")

    monkeypatch.setattr(store, "record_set_aside", refuse)
    # When a pass runs, Then the good process is placed and the poisoned one failed
    result = matchmaker.matchmake()
    assert [upid for upid, _, _ in result.assigned] == ["good"]
    assert state(store, "poisoned") == ProcessState.FAILED
    # And its entry is skipped for the rest of the term, tried again in the next
    assert matchmaker.set_aside.skips(("poisoned", 0))
    matchmaker.initialize()
    assert not matchmaker.set_aside.skips(("poisoned", 0))


def test_a_database_failure_while_setting_aside_fails_the_pass_to_be_retried(
    store: Store, matchmaker: Matchmaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a poisoned record, and a database that fails when the reason is written
    add_agent(store)
    queue(store, "poisoned", configuration=nested(500))

    def down(upid: str, record: dict[str, Any]) -> None:
        raise StoreError("record_set_aside failed: the database is down")

    monkeypatch.setattr(store, "record_set_aside", down)
    # Then the pass fails (the loop retries it) rather than blaming the record
    with pytest.raises(StoreError):
        matchmaker.matchmake()
    assert not matchmaker.set_aside.skips(("poisoned", 0))

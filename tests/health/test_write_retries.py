"""Heartbeats, registration and evacuation when a record keeps changing under every write.

Each optimistic write gives up after ``WRITE_ATTEMPTS`` lost races
(:func:`dispatcher.store.modify.retry_conflicts`); these tests show what is left
behind when it does, and that the next heartbeat or call completes the work.
"""

from __future__ import annotations

import logging

import pytest

from dashi.errors import WriteRetriesExhaustedError
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.modify import WRITE_ATTEMPTS
from pdcommon.states import ProcessState as S
from tests.health.conftest import (
    DOMAIN1,
    NOW,
    FakeClock,
    beat,
    bring_up,
    iso,
    make_engines,
    process,
    put_process,
    report,
    resource,
)
from tests.support.conflicts import ALWAYS, ConflictingStore
from tests.support.wiring import make_heartbeats


@pytest.fixture
def store() -> ConflictingStore:
    return ConflictingStore()


@pytest.fixture
def handler(
    store: ConflictingStore, messenger: RecordingMessenger, clock: FakeClock
) -> HeartbeatHandler:
    return make_heartbeats(store, messenger, make_engines(), clock=clock)


def send(handler: HeartbeatHandler, *entries: dict[str, object], at: float) -> None:
    handler.heartbeat(beat(list(entries), at=at), sender="sys.eeagent_1")


def orders(messenger: RecordingMessenger) -> list[tuple[str, str, int]]:
    return [(m.op, m.args["u_pid"], m.args["round"]) for m in messenger.messages]


def test_a_process_ending_that_keeps_conflicting_is_applied_by_the_next_heartbeat(
    handler: HeartbeatHandler,
    store: ConflictingStore,
    messenger: RecordingMessenger,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given proc1 and proc2 on eeagent_1, and proc1's record changing under every write
    bring_up(handler)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    put_process(store, "proc2", S.PENDING, assigned="eeagent_1")
    store.conflicts[("process", "proc1")] = ALWAYS
    clock.advance(1)
    # When the agent reports proc1 EXITED and proc2 RUNNING
    with caplog.at_level(logging.WARNING, logger="dispatcher.heartbeats"):
        send(handler, report("proc1", 0, S.EXITED), report("proc2", 0, S.RUNNING), at=NOW + 1)
    # Then proc1's ending gave up after WRITE_ATTEMPTS writes, and nothing of it is stored
    assert store.attempts[("process", "proc1")] == WRITE_ATTEMPTS
    assert process(store, "proc1").state == S.RUNNING
    assert "process 'proc1' kept changing" in caplog.text
    # And the rest of the heartbeat is applied: proc2 runs, the resource is written,
    # proc1 keeps its slot (it has not ended as far as the store knows)
    assert process(store, "proc2").state == S.RUNNING
    agent = resource(store)
    assert agent.last_heartbeat == iso(NOW + 1)
    assert sorted(agent.assigned) == [("proc1", 0), ("proc2", 0)]
    assert orders(messenger) == []
    # When the contention is over and the agent reports proc1 again
    store.conflicts.clear()
    clock.advance(1)
    send(handler, report("proc1", 0, S.EXITED), report("proc2", 0, S.RUNNING), at=NOW + 2)
    # Then the ending is recorded, its slot freed, and the agent told to clean up
    assert process(store, "proc1").state == S.EXITED
    assert resource(store).assigned == [("proc2", 0)]
    assert orders(messenger) == [("cleanup", "proc1", 0)]


def test_a_tag_release_that_keeps_conflicting_is_logged_and_the_heartbeat_carries_on(
    handler: HeartbeatHandler, store: ConflictingStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Given proc1 holding node1's "x" tag, and node1 changing under every write
    bring_up(handler)
    put_process(
        store, "proc1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER", node_exclusive="x"
    )
    node = store.get_node("node1")
    assert node is not None
    node.node_exclusive = ["x"]
    store.update_node(node)
    store.conflicts[("node", "node1")] = ALWAYS
    before = store.attempts[("node", "node1")]
    # When the agent reports proc1 EXITED
    with caplog.at_level(logging.ERROR, logger="dispatcher.evacuation"):
        send(handler, report("proc1", 0, S.EXITED), at=NOW + 1)
    # Then the ending and the slot are written, but the tag stays, named at ERROR
    assert process(store, "proc1").state == S.EXITED
    assert resource(store).assigned == []
    assert store.get_node("node1").node_exclusive == ["x"]  # type: ignore[union-attr]
    assert store.attempts[("node", "node1")] - before == WRITE_ATTEMPTS
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "['x']" in record.getMessage() and "node 'node1'" in record.getMessage()


def test_a_first_heartbeat_whose_node_write_keeps_conflicting_is_registered_by_the_next(
    handler: HeartbeatHandler, store: ConflictingStore
) -> None:
    # Given node1, changing under every write
    handler.node_state("node1", DOMAIN1, "600-RUNNING")
    store.conflicts[("node", "node1")] = ALWAYS
    # When eeagent_1 sends its first heartbeat, Then it gives up (the intake logs it)
    with pytest.raises(WriteRetriesExhaustedError, match="node 'node1'"):
        handler.heartbeat(beat(at=NOW), sender="sys.eeagent_1")
    # And nothing is registered
    assert store.get_resource("eeagent_1") is None
    assert store.get_node("node1").resources == []  # type: ignore[union-attr]
    # When the contention is over and the agent heartbeats again, Then it is registered
    store.conflicts.clear()
    handler.heartbeat(beat(at=NOW + 5), sender="sys.eeagent_1")
    assert resource(store).state == "OK"
    assert store.get_node("node1").resources == ["eeagent_1"]  # type: ignore[union-attr]


def test_a_node_death_whose_agent_write_keeps_conflicting_changes_nothing_until_repeated(
    handler: HeartbeatHandler, store: ConflictingStore
) -> None:
    # Given proc1 running on eeagent_1 of node1, and the agent changing under every write
    bring_up(handler)
    put_process(store, "proc1", S.RUNNING, assigned="eeagent_1", restart_mode="NEVER")
    store.conflicts[("resource", "eeagent_1")] = ALWAYS
    # When node1 is reported FAILED, Then evacuating it gives up before any change
    with pytest.raises(WriteRetriesExhaustedError, match="resource 'eeagent_1'"):
        handler.node_state("node1", DOMAIN1, "900-FAILED")
    assert resource(store).state == "OK"
    assert process(store, "proc1").state == S.RUNNING
    assert store.get_node("node1") is not None  # known: a repeated report evacuates it
    # When the contention is over and the death is reported again
    store.conflicts.clear()
    handler.node_state("node1", DOMAIN1, "900-FAILED")
    # Then the node is evacuated: its process failed, agent and node records removed
    assert process(store, "proc1").state == S.FAILED
    assert store.get_resource("eeagent_1") is None
    assert store.get_node("node1") is None

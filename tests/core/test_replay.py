"""RequestReplay: a request applied once answers its redeliveries with its first result."""

from __future__ import annotations

from typing import Any

from dispatcher.core import ProcessDispatcherCore
from dispatcher.replay import PRUNE_INTERVAL, REPLAYED_OPERATIONS, RequestReplay
from dispatcher.store.memory import MemoryStore
from tests.core.conftest import DEFINITION_ID, FakeClock


def deliver(
    replay: RequestReplay, core: ProcessDispatcherCore, request_id: str, op: str, **args: Any
):
    """One delivery of a request, as the RPC service makes it."""
    return replay(request_id, op, args, lambda: getattr(core, op)(**args))


def test_every_state_changing_core_operation_is_replayed():
    assert set(REPLAYED_OPERATIONS) == {
        "create_definition", "update_definition", "remove_definition", "create_process",
        "schedule_process", "terminate_process", "restart_process",
    }  # fmt: skip


def test_a_terminate_delivered_again_answers_its_first_result(
    core: ProcessDispatcherCore, store: MemoryStore, clock: FakeClock
):
    # Given a process scheduled, then terminated by request "t1"
    replay = RequestReplay(store, clock=clock)
    deliver(replay, core, "s1", "schedule_process", upid="p1", definition_id=DEFINITION_ID)
    first = deliver(replay, core, "t1", "terminate_process", upid="p1")
    # And scheduled again by another request (a new round)
    deliver(replay, core, "s2", "schedule_process", upid="p1")
    # When "t1" is delivered again
    again = deliver(replay, core, "t1", "terminate_process", upid="p1")
    # Then it answers what it answered first, and the new round goes on
    assert again == first == {"upid": "p1", "state": "700-TERMINATED", "round": 0, "assigned": None}
    process = store.get_process("p1")
    assert process is not None and (process.state, process.round) == ("200-REQUESTED", 1)


def test_definition_requests_delivered_again_change_nothing(
    core: ProcessDispatcherCore, store: MemoryStore, clock: FakeClock
):
    replay = RequestReplay(store, clock=clock)
    args = {"definition_type": "supd", "executable": {"exec": "/bin/true"}}
    deliver(replay, core, "c1", "create_definition", definition_id="d2", **args)
    deliver(replay, core, "u1", "update_definition", definition_id="d2", name="new", **args)
    # A create delivered again is no "exists" conflict, an update again overwrites nothing
    assert deliver(replay, core, "c1", "create_definition", definition_id="d2", **args) is None
    deliver(replay, core, "u2", "update_definition", definition_id="d2", name="newer", **args)
    deliver(replay, core, "u1", "update_definition", definition_id="d2", name="new", **args)
    definition = store.get_definition("d2")
    assert definition is not None and definition.name == "newer"


def test_a_request_that_wrote_nothing_is_not_recorded(
    core: ProcessDispatcherCore, store: MemoryStore, clock: FakeClock
):
    # Given a terminate of a process that is terminated already (nothing written)
    replay = RequestReplay(store, clock=clock)
    deliver(replay, core, "s1", "schedule_process", upid="p1", definition_id=DEFINITION_ID)
    core.terminate_process("p1")
    deliver(replay, core, "t9", "terminate_process", upid="p1")
    # Then no record is kept for it: delivered again, it is simply applied again
    assert store.get_applied_request("t9") is None
    assert store.get_applied_request("s1") is not None


def test_operations_that_are_not_replayed_run_every_time(store: MemoryStore, clock: FakeClock):
    replay = RequestReplay(store, clock=clock)
    calls: list[int] = []
    for _ in range(2):
        replay("r1", "describe_processes", {}, lambda: calls.append(1))
    assert calls == [1, 1]


def test_applied_requests_are_pruned_by_age_and_count_now_and_then(
    core: ProcessDispatcherCore, store: MemoryStore, clock: FakeClock
):
    # Given a replay remembering requests for 100 s, at most 2 of them
    replay = RequestReplay(store, clock=clock, retention=100.0, max_records=2)
    for i in range(3):
        deliver(
            replay, core, f"s{i}", "schedule_process", upid=f"p{i}", definition_id=DEFINITION_ID
        )
        clock.now += 1
    # Then the first request pruned nothing, and no pruning ran again within the interval
    assert all(store.get_applied_request(f"s{i}") for i in range(3))
    # When the interval has passed and another request is applied
    clock.now += PRUNE_INTERVAL
    deliver(replay, core, "s3", "schedule_process", upid="p3", definition_id=DEFINITION_ID)
    # Then only the newest two are kept
    kept = [f"s{i}" for i in range(4) if store.get_applied_request(f"s{i}")]
    assert kept == ["s2", "s3"]
    # And after the retention, a request forgets all older ones
    clock.now += PRUNE_INTERVAL + 100
    deliver(replay, core, "s4", "schedule_process", upid="p4", definition_id=DEFINITION_ID)
    assert [f"s{i}" for i in range(5) if store.get_applied_request(f"s{i}")] == ["s4"]

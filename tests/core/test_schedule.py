"""create_process and schedule_process: creation, scheduling, idempotency, describe."""

from __future__ import annotations

from typing import Any

import pytest

from dashi.errors import BadRequestError, NotFoundError, WriteConflictError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Process
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot
from tests.support.wiring import make_core

RESCHEDULABLE = [
    ProcessState.UNSCHEDULED_PENDING,
    ProcessState.TERMINATED,
    ProcessState.EXITED,
    ProcessState.FAILED,
    ProcessState.REJECTED,
]
IN_PLAY = [
    ProcessState.REQUESTED,
    ProcessState.DIED_REQUESTED,
    ProcessState.WAITING,
    ProcessState.ASSIGNED,
    ProcessState.PENDING,
    ProcessState.RUNNING,
    ProcessState.TERMINATING,
]


# -- scheduling an unknown process, without and with a definition ----------------------


def test_scheduling_an_unknown_process_without_a_definition_is_not_found(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given an empty dispatcher
    before = snapshot(store)
    # When an unknown process is scheduled without definition_id
    # Then NotFoundError, and nothing is written
    with pytest.raises(NotFoundError, match="process proc1 does not exist"):
        core.schedule_process("proc1")
    assert snapshot(store) == before


def test_scheduling_a_new_process_with_a_definition_requests_it_in_round_zero(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given definition D
    # When proc1 is scheduled with it
    result = core.schedule_process("proc1", DEFINITION_ID)
    # Then the process dict says REQUESTED, round 0, unassigned, and it is queued
    assert result == {
        "upid": "proc1",
        "state": ProcessState.REQUESTED,
        "round": 0,
        "assigned": None,
    }
    assert store.list_queued() == [("proc1", 0)]
    # And the record embeds a copy of the definition
    record = core.describe_process("proc1")
    assert record is not None
    assert record["definition"]["definition_id"] == DEFINITION_ID
    assert record["definition"]["executable"] == {"module": "some.module", "class": "SomeClass"}


def test_scheduling_a_new_process_with_an_unknown_definition_is_not_found(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given no definition "nope"
    before = snapshot(store)
    # When a new process is scheduled with it, Then NotFoundError and nothing written
    with pytest.raises(NotFoundError, match="Couldn't find process definition nope"):
        core.schedule_process("proc1", "nope")
    assert snapshot(store) == before


# -- create_process idempotency --------------------------------------------------------


def test_create_process_is_idempotent_but_refuses_a_different_definition_or_name(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given definitions def1 and def2
    core.create_definition("def1", "supd", {"exec": "a"})
    core.create_definition("def2", "supd", {"exec": "b"})
    # When proc1 is created twice with def1
    first = core.create_process("proc1", "def1")
    second = core.create_process("proc1", "def1")
    # Then both return UNSCHEDULED round 0, and it is not queued
    unscheduled = {"upid": "proc1", "state": ProcessState.UNSCHEDULED, "round": 0, "assigned": None}
    assert first == second == unscheduled
    assert store.list_queued() == []
    before = snapshot(store)
    # When it is created with def2 or another name, Then BadRequestError, nothing written
    with pytest.raises(BadRequestError, match="different definition_id"):
        core.create_process("proc1", "def2")
    with pytest.raises(BadRequestError, match="different name"):
        core.create_process("proc1", "def1", name="hats")
    assert snapshot(store) == before


def test_create_process_on_an_existing_process_returns_its_current_state(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given proc1 already RUNNING in round 2 on agent hats
    put_process(store, "proc1", ProcessState.RUNNING, round_=2, assigned="hats", name="n")
    # When create_process repeats it (same name, or no name)
    # Then the current process dict comes back and nothing changes
    expected = {"upid": "proc1", "state": ProcessState.RUNNING, "round": 2, "assigned": "hats"}
    before = snapshot(store)
    assert core.create_process("proc1", DEFINITION_ID, name="n") == expected
    assert core.create_process("proc1", DEFINITION_ID) == expected
    assert snapshot(store) == before


def test_create_process_with_an_unknown_definition_is_not_found(
    core: ProcessDispatcherCore,
) -> None:
    # Given no definition "nope", When a process is created with it, Then NotFoundError
    with pytest.raises(NotFoundError, match="Couldn't find process definition"):
        core.create_process("proc1", "nope")


# -- schedule_process idempotency ------------------------------------------------------


def test_schedule_process_is_idempotent_but_refuses_different_modes(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given proc1 created (UNSCHEDULED)
    core.create_process("proc1", DEFINITION_ID)
    # When it is scheduled, Then it is REQUESTED in round 0
    assert core.schedule_process("proc1")["state"] == ProcessState.REQUESTED
    # When the same schedule is repeated, Then it succeeds with the current state
    again = core.schedule_process("proc1")
    assert (again["state"], again["round"]) == (ProcessState.REQUESTED, 0)
    before = snapshot(store)
    # When it is rescheduled with a different restart or queueing mode, Then BadRequestError
    with pytest.raises(
        BadRequestError,
        match="process proc1 is 200-REQUESTED but restart_mode parameter value doesn't match",
    ):
        core.schedule_process("proc1", restart_mode="ALWAYS")
    with pytest.raises(BadRequestError, match="queueing_mode parameter value doesn't match"):
        core.schedule_process("proc1", queueing_mode="START_ONLY")
    # And nothing was written
    assert snapshot(store) == before


@pytest.mark.parametrize("state", IN_PLAY)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("configuration", {"x": 1}),
        ("subscribers", [["s", "op"]]),
        ("constraints", {"hat_type": "bowler"}),
        ("queueing_mode", "NEVER"),
        ("restart_mode", "NEVER"),
        ("node_exclusive", "port5000"),
        ("execution_engine_id", "engine2"),
    ],
)
def test_each_parameter_of_an_in_play_process_must_match_a_repeated_schedule(
    core: ProcessDispatcherCore, store: MemoryStore, state: str, field: str, value: Any
) -> None:
    # Given a process in play, scheduled with no parameters
    put_process(store, "proc1", state, configuration=None)
    before = snapshot(store)
    # When it is scheduled again with one different parameter
    # Then BadRequestError naming the state and the record field, and nothing written
    record_field = "constraints" if field == "execution_engine_id" else field
    with pytest.raises(
        BadRequestError,
        match=f"process proc1 is {state} but {record_field} parameter value doesn't match",
    ):
        core.schedule_process("proc1", **{field: value})
    assert snapshot(store) == before


@pytest.mark.parametrize("state", IN_PLAY)
def test_a_repeated_schedule_of_an_in_play_process_writes_nothing_but_nudges_the_queue(
    core: ProcessDispatcherCore, store: MemoryStore, state: str
) -> None:
    # Given a process in play in round 3, assigned when it is placed
    assigned = "hats" if state >= ProcessState.ASSIGNED else None
    put_process(store, "proc1", state, round_=3, assigned=assigned, configuration=None)
    version = store.get_process("proc1").version  # type: ignore[union-attr]
    # When the identical schedule is repeated (with the same definition)
    result = core.schedule_process("proc1", DEFINITION_ID)
    # Then the current state comes back, the record is untouched, and (proc1, 3) is queued
    assert result == {"upid": "proc1", "state": state, "round": 3, "assigned": assigned}
    assert store.get_process("proc1").version == version  # type: ignore[union-attr]
    assert store.list_queued() == [("proc1", 3)]


# -- name changes tolerated, subscribers stored ----------------------------------------


def test_name_changes_are_tolerated_on_an_in_play_process_and_not_written(
    core: ProcessDispatcherCore,
) -> None:
    # Given proc1 created with name1
    core.create_process("proc1", DEFINITION_ID, name="name1")
    # When it is scheduled with name2, Then REQUESTED and the name is name2 (wholesale update)
    assert core.schedule_process("proc1", name="name2")["state"] == ProcessState.REQUESTED
    # When scheduled again with name3, Then it succeeds, and the name is not changed
    assert core.schedule_process("proc1", name="name3")["state"] == ProcessState.REQUESTED
    record = core.describe_process("proc1")
    assert record is not None and record["name"] == "name2"


def test_subscribers_are_stored_as_lists_of_pairs(core: ProcessDispatcherCore) -> None:
    # Given proc1 created
    core.create_process("proc1", DEFINITION_ID)
    # When it is scheduled with a subscriber given as a tuple
    core.schedule_process("proc1", subscribers=[("destination", "operation")])
    # Then describe shows it as a list pair
    record = core.describe_process("proc1")
    assert record is not None and record["subscribers"] == [["destination", "operation"]]
    # And repeating the schedule with tuples is idempotent
    core.schedule_process("proc1", subscribers=[("destination", "operation")])


# -- UNSCHEDULED, wholesale updates, rescheduling ----------------------------------------


def test_scheduling_an_unscheduled_process_applies_updates_wholesale_in_the_same_round(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given proc1 created with a name (configuration {} at creation)
    core.create_process("proc1", DEFINITION_ID, name="created-name")
    # When it is scheduled without name or configuration
    result = core.schedule_process("proc1", DEFINITION_ID)
    # Then REQUESTED in round 0, queued, and name/configuration are overwritten with None
    assert (result["state"], result["round"]) == (ProcessState.REQUESTED, 0)
    assert store.list_queued() == [("proc1", 0)]
    record = core.describe_process("proc1")
    assert record is not None
    assert record["name"] is None
    assert record["configuration"] is None
    assert record["constraints"] == {}


def test_scheduling_an_unscheduled_process_with_another_definition_is_refused(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given proc1 created from D, and another definition
    core.create_definition("other", "supd", {"exec": "x"})
    core.create_process("proc1", DEFINITION_ID)
    before = snapshot(store)
    # When it is scheduled naming the other definition, Then BadRequestError, nothing written
    with pytest.raises(BadRequestError, match="different definition_id"):
        core.schedule_process("proc1", "other")
    assert snapshot(store) == before


@pytest.mark.parametrize("state", RESCHEDULABLE)
def test_rescheduling_a_terminal_process_requests_it_in_the_next_round(
    core: ProcessDispatcherCore, store: MemoryStore, state: str
) -> None:
    # Given a terminal process in round 2 with every schedulable field set
    put_process(
        store,
        "proc1",
        state,
        round_=2,
        name="old",
        configuration={"old": True},
        subscribers=[["s", "op"]],
        constraints={"hat_type": "fedora"},
        queueing_mode="NEVER",
        restart_mode="NEVER",
        node_exclusive="tag",
        starts=3,
    )
    # When it is scheduled again with no arguments but its own definition_id
    result = core.schedule_process("proc1", DEFINITION_ID)
    # Then REQUESTED in round 3, queued under round 3
    assert result == {
        "upid": "proc1",
        "state": ProcessState.REQUESTED,
        "round": 3,
        "assigned": None,
    }
    assert store.list_queued() == [("proc1", 3)]
    # And every schedulable field is reset (wholesale update), the history kept
    record = core.describe_process("proc1")
    assert record is not None
    assert {k: record[k] for k in ("configuration", "subscribers", "constraints")} == {
        "configuration": None,
        "subscribers": None,
        "constraints": {},
    }
    assert [record[k] for k in ("queueing_mode", "restart_mode", "node_exclusive", "name")] == [
        None
    ] * 4
    assert record["starts"] == 3


def test_a_process_can_be_scheduled_again_after_it_exited(
    core: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given proc1 scheduled with restart NEVER that then exited
    core.create_process("proc1", DEFINITION_ID)
    core.schedule_process("proc1", restart_mode="NEVER")
    process = store.get_process("proc1")
    assert process is not None
    core.transitions.process_change_state(process, ProcessState.EXITED)
    # When it is scheduled again
    result = core.schedule_process("proc1")
    # Then it is REQUESTED in round 1
    assert (result["state"], result["round"]) == (ProcessState.REQUESTED, 1)


# -- constraints and idempotency (docs/architecture.md, decision 5) -----------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"constraints": {"hat_type": "fedora"}},
        {"execution_engine_id": "engine2"},
        {"constraints": {"hat_type": "fedora"}, "execution_engine_id": "engine2"},
        {"constraints": {"engine": "engine2"}},
    ],
    ids=["constraints", "engine", "constraints+engine", "engine-in-constraints"],
)
def test_repeating_a_schedule_with_constraints_stays_idempotent(
    core: ProcessDispatcherCore, kwargs: dict[str, Any]
) -> None:
    # Given a process scheduled with constraints and/or an execution engine
    core.schedule_process("proc1", DEFINITION_ID, **kwargs)
    # When the identical call is repeated, Then it succeeds
    assert core.schedule_process("proc1", DEFINITION_ID, **kwargs)["state"] == (
        ProcessState.REQUESTED
    )


def test_execution_engine_id_is_written_into_the_constraints(core: ProcessDispatcherCore) -> None:
    # Given a process scheduled with constraints and an execution engine
    core.schedule_process(
        "proc1", DEFINITION_ID, constraints={"hat_type": "fedora"}, execution_engine_id="engine2"
    )
    # Then the engine is stored in constraints["engine"], not separately
    record = core.describe_process("proc1")
    assert record is not None
    assert record["constraints"] == {"hat_type": "fedora", "engine": "engine2"}
    assert "execution_engine_id" not in record
    # And the engine may equally be given through the constraints in a repeated call
    core.schedule_process(
        "proc1", DEFINITION_ID, constraints={"hat_type": "fedora", "engine": "engine2"}
    )


def test_the_caller_constraints_dict_is_not_modified(core: ProcessDispatcherCore) -> None:
    # Given a constraints dict owned by the caller
    constraints = {"hat_type": "fedora"}
    # When it is scheduled with an execution engine
    core.schedule_process("proc1", DEFINITION_ID, constraints=constraints, execution_engine_id="e")
    # Then the caller's dict is unchanged
    assert constraints == {"hat_type": "fedora"}


def test_an_empty_execution_engine_id_is_not_written(core: ProcessDispatcherCore) -> None:
    # Given a schedule with an empty engine id (legacy: only a truthy id is written)
    core.schedule_process("proc1", DEFINITION_ID, execution_engine_id="")
    # Then the constraints stay empty
    record = core.describe_process("proc1")
    assert record is not None and record["constraints"] == {}


# -- describe_process and describe_processes ---------------------------------------------


def test_describe_process_and_describe_processes_return_full_records(
    core: ProcessDispatcherCore,
) -> None:
    # Given proc1 scheduled
    core.schedule_process("proc1", DEFINITION_ID)
    # Then describe_processes has one full record for it
    records = core.describe_processes()
    assert [r["upid"] for r in records] == ["proc1"]
    record = core.describe_process("proc1")
    assert record is not None and record["upid"] == "proc1"
    assert set(record) == {
        "owner", "upid", "name", "state", "round", "definition", "configuration",
        "constraints", "subscribers", "queueing_mode", "restart_mode", "node_exclusive",
        "assigned", "hostname", "starts", "start_times", "dispatches", "dispatch_times",
        # new, additive keys (docs/rpc.md "Process records")
        "exit_code", "signal", "reason", "started_at", "ended_at", "restarts",
        "next_restart_at", "max_runtime_seconds", "restart_policy", "failure_times",
        "effective_restart_mode",
    }  # fmt: skip
    # When proc2 is scheduled too, Then there are two (any order)
    core.schedule_process("proc2", DEFINITION_ID)
    assert sorted(r["upid"] for r in core.describe_processes()) == ["proc1", "proc2"]


def test_describing_an_unknown_process_returns_none(core: ProcessDispatcherCore) -> None:
    # Given no process, When described (even by a non-identifier string), Then None
    assert core.describe_process("nothere") is None
    assert core.describe_process("not an identifier!") is None


# -- write conflicts ---------------------------------------------------------------------


class ConflictingStore(MemoryStore):
    """A MemoryStore whose next ``conflicts`` process updates lose a race."""

    def __init__(self, conflicts: int) -> None:
        super().__init__()
        self.conflicts = conflicts
        self.attempts = 0

    def update_process(self, process: Process) -> None:
        self.attempts += 1
        if self.conflicts > 0:
            self.conflicts -= 1
            raise WriteConflictError("simulated")
        super().update_process(process)


def test_schedule_retries_a_conflicting_write_and_then_succeeds() -> None:
    # Given a store that makes the first four process writes conflict
    store = ConflictingStore(conflicts=4)
    core = make_core(store, RecordingMessenger())
    core.create_definition("d", "supd", {})
    core.create_process("proc1", "d")
    # When proc1 is scheduled
    result = core.schedule_process("proc1")
    # Then the fifth attempt wins
    assert result["state"] == ProcessState.REQUESTED
    assert store.attempts == 5
    assert store.list_queued() == [("proc1", 0)]


def test_schedule_gives_up_after_five_conflicting_attempts() -> None:
    # Given a store where every process write conflicts
    store = ConflictingStore(conflicts=1000)
    core = make_core(store, RecordingMessenger())
    core.create_definition("d", "supd", {})
    core.create_process("proc1", "d")
    # When proc1 is scheduled, Then BadRequestError after 5 attempts, nothing queued
    with pytest.raises(BadRequestError, match="process proc1 could not be updated"):
        core.schedule_process("proc1")
    assert store.attempts == 5
    assert store.list_queued() == []

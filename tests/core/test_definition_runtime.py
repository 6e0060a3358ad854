"""A definition's default maximum runtime (issue 14): ``create_definition`` and
``update_definition`` take an optional ``max_runtime_seconds``; a process scheduled
without its own takes its definition's, fixed when it is scheduled.

The core runs over the memory store, SQLite and PostgreSQL: the default is a
definition column and a key of each process's definition copy, and both must come
back from every store as they went in.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.errors import BadRequestError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.culler import Culler, scheduled_max_runtime
from dispatcher.messaging import RecordingMessenger
from dispatcher.requests import MAX_RUNTIME_LIMIT
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore
from pdcommon.states import ProcessState
from tests.support.clock import FakeClock
from tests.support.wiring import make_core

S = ProcessState
NOW = 1_700_000_000.0
LEGACY_KEYS = {"definition_id", "definition_type", "executable", "name", "description", "version"}
EXECUTABLE = {"exec": "/bin/sleep", "argv": ["600"]}


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    elif request.param == "sqlite":
        opened = SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    else:
        opened = SqlStore(request.getfixturevalue("postgres_url"), create=True)
    yield opened
    opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def messenger() -> RecordingMessenger:
    return RecordingMessenger()


@pytest.fixture
def core(store: Store, messenger: RecordingMessenger, clock: FakeClock) -> ProcessDispatcherCore:
    return make_core(store, messenger, clock=clock)


def record(core: ProcessDispatcherCore, upid: str) -> dict[str, Any]:
    described = core.describe_process(upid)
    assert described is not None
    return described


# -- the definition record ---------------------------------------------------------------


def test_a_definition_without_a_default_has_exactly_the_legacy_record(
    core: ProcessDispatcherCore,
) -> None:
    # Given a definition created and updated without max_runtime_seconds
    core.create_definition("d1", "supd", EXECUTABLE)
    assert set(core.describe_definition("d1") or {}) == LEGACY_KEYS
    core.update_definition("d1", "supd", {"exec": "/bin/true"}, name="n")
    # Then describe shows the six legacy keys only, and so does a process's copy
    assert set(core.describe_definition("d1") or {}) == LEGACY_KEYS
    core.schedule_process("p1", "d1")
    assert set(record(core, "p1")["definition"]) == LEGACY_KEYS
    assert record(core, "p1")["max_runtime_seconds"] is None


def test_a_definition_default_is_described_and_replaced_by_update(
    core: ProcessDispatcherCore,
) -> None:
    # Given a definition with a default of 30 s
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    # Then describe shows it as the additive key
    assert core.describe_definition("d1") == {
        "definition_id": "d1",
        "definition_type": "supd",
        "executable": EXECUTABLE,
        "name": None,
        "description": None,
        "version": None,
        "max_runtime_seconds": 30,
    }
    assert core.list_definitions() == ["d1"]
    # When it is updated with another default, Then that shows
    core.update_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=45.5)
    assert (core.describe_definition("d1") or {})["max_runtime_seconds"] == 45.5
    # When it is updated without one (the update replaces the whole definition),
    # Then it has none
    core.update_definition("d1", "supd", EXECUTABLE)
    assert set(core.describe_definition("d1") or {}) == LEGACY_KEYS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "greater than 0"),
        (-5, "greater than 0"),
        ("10", "valid number"),
        (True, "valid number"),
        ([10], "valid number"),
        (MAX_RUNTIME_LIMIT + 1, "less than or equal to"),
    ],
)
def test_a_bad_definition_default_is_refused_and_writes_nothing(
    core: ProcessDispatcherCore, store: Store, value: Any, message: str
) -> None:
    # When a definition is created with a bad default, Then it is refused, naming it
    with pytest.raises(BadRequestError, match=f"invalid max_runtime_seconds: .*{message}"):
        core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=value)
    assert store.list_definition_ids() == []
    # And an update with one leaves the stored definition as it was
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    before = store.get_definition("d1")
    with pytest.raises(BadRequestError, match="invalid max_runtime_seconds"):
        core.update_definition("d1", "supd", {"exec": "/bin/true"}, max_runtime_seconds=value)
    assert store.get_definition("d1") == before


def test_the_longest_default_accepted_is_the_schedule_arguments(
    core: ProcessDispatcherCore,
) -> None:
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=MAX_RUNTIME_LIMIT)
    assert (core.describe_definition("d1") or {})["max_runtime_seconds"] == MAX_RUNTIME_LIMIT


# -- scheduling --------------------------------------------------------------------------


def test_a_process_scheduled_without_its_own_limit_takes_the_definitions(
    core: ProcessDispatcherCore,
) -> None:
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    core.schedule_process("p1", "d1")
    described = record(core, "p1")
    assert described["max_runtime_seconds"] == 30
    # the copy of the definition shows where it came from
    assert described["definition"]["max_runtime_seconds"] == 30


@pytest.mark.parametrize("own", [5, 100])
def test_the_schedule_argument_overrides_the_definition_default(
    core: ProcessDispatcherCore, own: float
) -> None:
    # Given a definition default of 30 s, When scheduled with a shorter or longer limit
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    core.schedule_process("p1", "d1", max_runtime_seconds=own)
    # Then the process's own applies
    described = record(core, "p1")
    assert (described["max_runtime_seconds"], described["definition"]["max_runtime_seconds"]) == (
        own,
        30,
    )
    # And repeating the same request is idempotent, but without the argument it
    # differs (it would have taken the default) and is refused
    assert core.schedule_process("p1", "d1", max_runtime_seconds=own)["state"] == S.REQUESTED
    with pytest.raises(BadRequestError, match="max_runtime_seconds parameter value"):
        core.schedule_process("p1", "d1")


def test_a_definition_update_leaves_a_scheduled_process_alone_and_its_repeat_idempotent(
    core: ProcessDispatcherCore, store: Store
) -> None:
    # Given a process scheduled with its definition's default of 30 s
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    first = core.schedule_process("p1", "d1")
    # When the definition's default changes
    core.update_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=60)
    # Then the scheduled process keeps 30 s
    assert record(core, "p1")["max_runtime_seconds"] == 30
    # And the same request again is an idempotent repeat that writes nothing
    stored = store.get_process("p1")
    assert core.schedule_process("p1", "d1") == first
    assert core.schedule_process("p1") == first
    assert core.schedule_process("p1", "d1", max_runtime_seconds=30) == first
    assert store.get_process("p1") == stored
    # But another explicit limit is a differing parameter, refused, nothing written
    with pytest.raises(BadRequestError, match="max_runtime_seconds parameter value"):
        core.schedule_process("p1", "d1", max_runtime_seconds=60)
    assert store.get_process("p1") == stored


def test_rescheduling_an_ended_process_takes_the_definitions_current_default(
    core: ProcessDispatcherCore,
) -> None:
    # Given a process scheduled with the default 30 s, then terminated
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    core.schedule_process("p1", "d1")
    core.terminate_process("p1")
    # When the default becomes 60 s and the process is scheduled again
    core.update_definition("d1", "supd", {"exec": "/bin/true"}, max_runtime_seconds=60)
    assert core.schedule_process("p1", "d1")["round"] == 1
    # Then the new round has 60 s; the rest of its copy is the one taken at its
    # creation (legacy: the executable is not refreshed)
    described = record(core, "p1")
    assert described["max_runtime_seconds"] == 60
    assert described["definition"]["max_runtime_seconds"] == 60
    assert described["definition"]["executable"] == EXECUTABLE
    # When the definition loses its default, Then the next round has none
    core.terminate_process("p1")
    core.update_definition("d1", "supd", EXECUTABLE)
    core.schedule_process("p1")
    described = record(core, "p1")
    assert described["max_runtime_seconds"] is None
    assert set(described["definition"]) == LEGACY_KEYS
    # And an explicit argument still wins
    core.terminate_process("p1")
    core.schedule_process("p1", max_runtime_seconds=7)
    assert record(core, "p1")["max_runtime_seconds"] == 7


def test_a_removed_definition_leaves_the_default_last_recorded(
    core: ProcessDispatcherCore,
) -> None:
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    core.schedule_process("p1", "d1")
    core.terminate_process("p1")
    core.remove_definition("d1")
    core.schedule_process("p1")
    assert record(core, "p1")["max_runtime_seconds"] == 30


def test_a_created_process_takes_the_default_the_definition_has_when_scheduled(
    core: ProcessDispatcherCore,
) -> None:
    # Given a process created (not scheduled) while the default was 30 s
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    core.create_process("p1", "d1")
    assert record(core, "p1")["max_runtime_seconds"] == 30
    # When the default becomes 60 s before it is scheduled
    core.update_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=60)
    core.schedule_process("p1", "d1")
    # Then it runs with 60 s, at round 0
    described = record(core, "p1")
    assert (described["state"], described["round"], described["max_runtime_seconds"]) == (
        S.REQUESTED,
        0,
        60,
    )


def test_scheduling_an_ended_process_with_another_definition_takes_that_default(
    core: ProcessDispatcherCore,
) -> None:
    core.create_definition("d1", "supd", EXECUTABLE, max_runtime_seconds=30)
    core.create_definition("d2", "supd", {"exec": "/bin/true"}, max_runtime_seconds=90)
    core.schedule_process("p1", "d1")
    core.terminate_process("p1")
    core.schedule_process("p1", "d2")
    described = record(core, "p1")
    assert (described["definition"]["definition_id"], described["max_runtime_seconds"]) == (
        "d2",
        90,
    )


# -- the culler --------------------------------------------------------------------------


def running_since(store: Store, upid: str, started_at: float) -> None:
    """Move a scheduled process to RUNNING on an agent (as heartbeats would)."""
    process = store.get_process(upid)
    assert process is not None
    process.state, process.assigned, process.started_at = S.RUNNING, "eeagent_1", started_at
    store.update_process(process)


def test_the_culler_ends_a_round_past_its_definitions_default_capped_by_max_process_age(
    core: ProcessDispatcherCore, store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given p1 of a definition with 10 s, p2 of one with 100 s, and a global 50 s
    core.create_definition("short", "supd", EXECUTABLE, max_runtime_seconds=10)
    core.create_definition("long", "supd", EXECUTABLE, max_runtime_seconds=100)
    core.create_definition("none", "supd", EXECUTABLE)
    for upid, definition_id in (("p1", "short"), ("p2", "long"), ("p3", "none")):
        core.schedule_process(upid, definition_id)
        running_since(store, upid, NOW)
    culler = Culler(store, messenger, core.transitions, clock=clock, max_process_age=50)
    # When the culler looks at 20 s, Then only p1 is past its limit
    assert culler.run(NOW + 20) == 1
    assert record(core, "p1")["state"] == S.TERMINATING
    assert record(core, "p1")["reason"] == "max runtime exceeded: ran 20 s (limit 10 s)"
    # When it looks at 60 s, Then the global age ends the other two (the smaller applies)
    assert culler.run(NOW + 60) == 2
    assert record(core, "p2")["reason"] == "max runtime exceeded: ran 60 s (limit 50 s)"
    assert record(core, "p3")["reason"] == "max runtime exceeded: ran 60 s (limit 50 s)"


@pytest.mark.parametrize(
    ("requested", "definition", "expected"),
    [
        (None, {}, None),
        (None, {"max_runtime_seconds": 30}, 30.0),
        (5.0, {"max_runtime_seconds": 30}, 5.0),
        (500.0, {"max_runtime_seconds": 30}, 500.0),
        (5.0, {}, 5.0),
        # a copy that holds something else than a number gives no default
        (None, {"max_runtime_seconds": "30"}, None),
        (None, {"max_runtime_seconds": True}, None),
    ],
)
def test_scheduled_max_runtime_is_the_argument_else_the_definition_default(
    requested: float | None, definition: dict[str, Any], expected: float | None
) -> None:
    assert scheduled_max_runtime(requested, definition) == expected

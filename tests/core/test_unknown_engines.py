"""schedule_process refuses a process whose effective engine is unknown."""

from __future__ import annotations

import pytest

from dashi.errors import BadRequestError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.engines import EngineRegistry
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from pdcommon.states import ProcessState
from tests.core.conftest import DEFINITION_ID, put_process, snapshot
from tests.support.clock import FakeClock
from tests.support.wiring import make_core


@pytest.fixture
def engines() -> EngineRegistry:
    return EngineRegistry(
        {"engine1": EngineSettings(slots=4), "engine2": EngineSettings(slots=2)},
        default_engine="engine1",
        process_engines={"some.module": "engine2"},
    )


@pytest.fixture
def checked(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock, engines: EngineRegistry
) -> ProcessDispatcherCore:
    core = make_core(store, messenger, clock=clock, engines=engines)
    core.create_definition(DEFINITION_ID, "supd", {"exec": "/bin/true"})
    core.create_definition("mapped", "supd", {"module": "some.module", "class": "C"})
    return core


@pytest.mark.parametrize(
    "kwargs",
    [
        {"execution_engine_id": "engine9"},
        {"constraints": {"engine": "engine9"}},
        {"constraints": {"engine": ["engine1", "engine9"]}},
    ],
)
def test_an_unknown_engine_is_refused_naming_the_known_ones(
    checked: ProcessDispatcherCore, store: MemoryStore, kwargs: dict[str, object]
) -> None:
    before = snapshot(store)
    with pytest.raises(BadRequestError) as raised:
        checked.schedule_process("p1", DEFINITION_ID, **kwargs)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "unknown execution engine 'engine9'; known engines: engine1, engine2"
    )
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("definition_id", "kwargs", "engine"),
    [
        (DEFINITION_ID, {}, "engine1"),  # the default
        ("mapped", {}, "engine2"),  # process_engines
        (DEFINITION_ID, {"execution_engine_id": "engine2"}, "engine2"),
        (DEFINITION_ID, {"constraints": {"engine": ["engine1", "engine2"]}}, None),
    ],
)
def test_known_engines_are_accepted(
    checked: ProcessDispatcherCore,
    store: MemoryStore,
    definition_id: str,
    kwargs: dict[str, object],
    engine: str | None,
) -> None:
    summary = checked.schedule_process("p1", definition_id, **kwargs)  # type: ignore[arg-type]
    assert summary["state"] == ProcessState.REQUESTED
    assert store.list_queued() == [("p1", 0)]


def test_an_engine_added_through_another_instance_is_accepted(
    checked: ProcessDispatcherCore, store: MemoryStore, engines: EngineRegistry
) -> None:
    # Given an engine persisted by another dispatcher instance
    store.add_engine("big", {"slots": 16})
    # When a process asks for it, Then it is scheduled (and the registry learns it)
    checked.schedule_process("p1", DEFINITION_ID, execution_engine_id="big")
    assert "big" in engines


def test_rescheduling_an_ended_process_onto_an_unknown_engine_is_refused(
    checked: ProcessDispatcherCore, store: MemoryStore
) -> None:
    put_process(store, "p1", ProcessState.TERMINATED, round_=2)
    before = snapshot(store)
    with pytest.raises(BadRequestError, match="unknown execution engine 'gone'"):
        checked.schedule_process("p1", execution_engine_id="gone")
    assert snapshot(store) == before


def test_a_core_without_engines_checks_nothing(core: ProcessDispatcherCore) -> None:
    assert core.schedule_process("p1", DEFINITION_ID, execution_engine_id="x")["round"] == 0


def test_schedule_process_waits_for_a_pending_boot_initialisation_then_refuses(
    checked: ProcessDispatcherCore, store: MemoryStore
) -> None:
    # Given a boot initialisation pending (no doctor runs)
    store.begin_system_boot()
    checked.boot_wait = 0.2
    before = snapshot(store)
    # When a process is scheduled, Then it is refused and nothing is stored
    with pytest.raises(BadRequestError, match="initialising a system boot"):
        checked.schedule_process("p1", DEFINITION_ID)
    assert snapshot(store) == before
    # When the initialisation is done, Then scheduling works
    store.finish_initialization("SYSTEM_BOOTING")
    assert checked.schedule_process("p1", DEFINITION_ID)["state"] == ProcessState.REQUESTED

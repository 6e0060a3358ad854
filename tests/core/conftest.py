"""Fixtures for the core tests: a MemoryStore, a recording messenger and a fixed clock."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Process, Resource
from dispatcher.store.memory import MemoryStore
from tests.support.wiring import make_core

#: The time the fake clock always reports (epoch seconds).
NOW = 1_700_000_000.0
#: The definition most tests run (the legacy tests' standard definition "D").
DEFINITION_ID = "D"


class FakeClock:
    """A clock tests can move by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def messenger() -> RecordingMessenger:
    return RecordingMessenger()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(
    store: MemoryStore, messenger: RecordingMessenger, clock: FakeClock
) -> ProcessDispatcherCore:
    core = make_core(store, messenger, clock=clock)
    core.create_definition(
        DEFINITION_ID, "supd", {"module": "some.module", "class": "SomeClass"}, name="dee"
    )
    return core


def put_process(
    store: MemoryStore,
    upid: str,
    state: str,
    *,
    round_: int = 0,
    assigned: str | None = None,
    **fields: Any,
) -> Process:
    """Store a process directly in ``state`` (bypassing the RPCs) and return it."""
    process = Process(
        upid=upid,
        definition={"definition_id": DEFINITION_ID},
        state=state,
        round=round_,
        assigned=assigned,
        **fields,
    )
    store.add_process(process)
    if assigned is not None and store.get_resource(assigned) is None:
        store.add_resource(Resource(resource_id=assigned, node_id="node1", slot_count=4))
    if assigned is not None:
        resource = store.get_resource(assigned)
        assert resource is not None
        resource.assigned.append((upid, round_))
        store.update_resource(resource)
    return process


def snapshot(store: MemoryStore) -> dict[str, Any]:
    """Everything the store holds, versions included, for "nothing was written" checks."""
    return {
        "definitions": {i: store.get_definition(i) for i in store.list_definition_ids()},
        "processes": [(p.to_dict(), p.version) for p in store.list_processes()],
        "queue": store.list_queued(),
        "resources": [(r.to_dict(), r.version) for r in store.list_resources()],
        "nodes": [(n.to_dict(), n.version) for n in store.list_nodes()],
        "system_boot": store.is_system_boot(),
    }

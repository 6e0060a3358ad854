"""Definition RPCs: create, describe, update, list and remove."""

from __future__ import annotations

import pytest

from dashi.errors import NotFoundError, WriteConflictError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from tests.support.wiring import make_core


@pytest.fixture
def bare_core(store: MemoryStore, messenger: RecordingMessenger) -> ProcessDispatcherCore:
    return make_core(store, messenger)


def test_definitions_can_be_created_described_updated_listed_and_removed(
    bare_core: ProcessDispatcherCore,
) -> None:
    # Given an empty dispatcher
    core = bare_core
    # When a definition is created
    assert core.create_definition("d1", "t1", "notepad.exe") is None  # type: ignore[func-returns-value]
    # Then it is described with the six legacy fields
    assert core.describe_definition("d1") == {
        "definition_id": "d1",
        "definition_type": "t1",
        "executable": "notepad.exe",
        "name": None,
        "description": None,
        "version": None,
    }
    # When it is updated
    assert core.update_definition("d1", "t1", "notepad2.exe") is None  # type: ignore[func-returns-value]
    # Then the new executable shows, and it is listed
    described = core.describe_definition("d1")
    assert described is not None and described["executable"] == "notepad2.exe"
    assert "d1" in core.list_definitions()
    # When it is removed, it is gone
    assert core.remove_definition("d1") is None  # type: ignore[func-returns-value]
    assert core.list_definitions() == []


def test_creating_a_definition_twice_is_a_write_conflict(bare_core: ProcessDispatcherCore) -> None:
    # Given a definition d1
    bare_core.create_definition("d1", "t1", "notepad.exe")
    # When it is created again, even identically, Then WriteConflictError (not idempotent)
    with pytest.raises(WriteConflictError):
        bare_core.create_definition("d1", "t1", "notepad.exe")


def test_updating_or_removing_an_unknown_definition_is_not_found(
    bare_core: ProcessDispatcherCore,
) -> None:
    # Given a definition that was created and removed
    bare_core.create_definition("d1", "t1", "notepad.exe")
    bare_core.remove_definition("d1")
    # When it is updated or removed, Then NotFoundError
    with pytest.raises(NotFoundError):
        bare_core.update_definition("d1", "t1", "notepad2.exe")
    with pytest.raises(NotFoundError):
        bare_core.remove_definition("d1")


def test_describing_an_unknown_definition_returns_none(bare_core: ProcessDispatcherCore) -> None:
    # Given no definitions, When one is described, Then the answer is None (no error)
    assert bare_core.describe_definition("nothere") is None


def test_update_replaces_the_whole_definition_and_leaves_processes_alone(
    bare_core: ProcessDispatcherCore,
) -> None:
    # Given a named, described definition and a process created from it
    core = bare_core
    core.create_definition("d1", "supd", {"exec": "/bin/true"}, name="n", description="desc")
    core.create_process("p1", "d1")
    # When it is updated without name and description
    core.update_definition("d1", "supd", {"exec": "/bin/false"})
    # Then name and description are reset to None
    described = core.describe_definition("d1")
    assert described is not None
    assert (described["name"], described["description"]) == (None, None)
    # And the process keeps the copy taken at its creation
    process = core.describe_process("p1")
    assert process is not None
    assert process["definition"]["executable"] == {"exec": "/bin/true"}
    assert process["definition"]["name"] == "n"


def test_removing_a_definition_leaves_its_processes_alone(bare_core: ProcessDispatcherCore) -> None:
    # Given a process created from d1
    bare_core.create_definition("d1", "supd", {"exec": "/bin/true"})
    bare_core.create_process("p1", "d1")
    # When d1 is removed
    bare_core.remove_definition("d1")
    # Then the process still describes its definition
    process = bare_core.describe_process("p1")
    assert process is not None and process["definition"]["definition_id"] == "d1"

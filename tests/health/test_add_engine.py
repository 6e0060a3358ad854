"""add_engine: engines added at run time are validated and persisted.

Persisted in the SQL store like everything else: docs/architecture.md, decision 1.
"""

from __future__ import annotations

from typing import Any

import pytest

from dashi.errors import BadRequestError, WriteConflictError
from dispatcher.engines import EngineRegistry
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from tests.health.conftest import BOTH_STORES, FakeClock, make_engines, snapshot


@BOTH_STORES
def test_an_added_engine_is_persisted_and_known(
    handler: HeartbeatHandler, store: Store, engines: EngineRegistry
) -> None:
    # Given/When an engine is added with a few legacy keys
    handler.add_engine({"engine_id": "big", "slots": 16, "replicas": 2, "deployable_type": "dt1"})
    # Then it is stored with the keys given, and this instance knows it
    assert store.list_engines() == {"big": {"slots": 16, "replicas": 2, "deployable_type": "dt1"}}
    big = engines.get("big")
    assert big is not None and (big.slots, big.replicas) == (16, 2)
    # And heartbeat monitoring is on by default (docs/architecture.md, decision 3)
    assert (big.heartbeat_warning, big.heartbeat_missing) == (45, 60)


@BOTH_STORES
def test_a_persisted_engine_survives_a_restart(
    handler: HeartbeatHandler, store: Store, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given an engine added through one dispatcher
    handler.add_engine({"engine_id": "big", "slots": 16})
    # When another dispatcher instance merges what the store holds
    fresh = make_engines()
    fresh.merge_stored(store.list_engines())
    # Then it knows the engine too
    assert fresh.get("big") is not None and fresh.get("big").slots == 16  # type: ignore[union-attr]


@pytest.mark.parametrize("engine_id", ["engine1", "late"])
def test_adding_an_existing_engine_is_a_write_conflict(
    handler: HeartbeatHandler, store: Store, engine_id: str
) -> None:
    # Given a configured engine1, and an engine "late" persisted by another instance
    store.add_engine("late", {"slots": 1})
    before = snapshot(store)
    # When either is added again
    with pytest.raises(WriteConflictError, match="already exists"):
        handler.add_engine({"engine_id": engine_id, "slots": 2})
    # Then nothing changes
    assert snapshot(store) == before


def test_a_duplicate_add_through_the_same_instance_conflicts(
    handler: HeartbeatHandler, store: Store
) -> None:
    # Given an engine added once, When it is added again, Then WriteConflictError
    handler.add_engine({"engine_id": "big", "slots": 16})
    with pytest.raises(WriteConflictError):
        handler.add_engine({"engine_id": "big", "slots": 16})


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ("engine", "must be a dict"),
        ({"slots": 1}, "must have an 'engine_id'"),
        ({"engine_id": "", "slots": 1}, "must have an 'engine_id'"),
        ({"engine_id": 5, "slots": 1}, "must have an 'engine_id'"),
        ({"engine_id": "e"}, "must have 'slots'"),
        ({"engine_id": "e", "slots": 0}, "invalid engine slots"),
        ({"engine_id": "e", "slots": "many"}, "invalid engine slots"),
        ({"engine_id": "e", "slots": 1, "colour": "red"}, "unknown key"),
        ({"engine_id": "e", "slots": 1, "site": "s1"}, "unknown key"),
        ({"engine_id": "e", "slots": 1, "replicas": 0}, "invalid engine replicas"),
        (
            {"engine_id": "e", "slots": 1, "heartbeat_warning": 50, "heartbeat_missing": None},
            "together",
        ),
        (
            {"engine_id": "e", "slots": 1, "heartbeat_warning": 70, "heartbeat_missing": 60},
            "greater",
        ),
    ],
)
def test_bad_engine_definitions_are_rejected(
    handler: HeartbeatHandler, store: Store, engines: EngineRegistry, definition: Any, message: str
) -> None:
    # Given/When a bad definition is added
    with pytest.raises(BadRequestError, match=message):
        handler.add_engine(definition)
    # Then nothing is stored or registered
    assert store.list_engines() == {}
    assert sorted(engines) == ["engine1", "engine2"]


def test_list_engines_shows_configured_and_added_engines(handler: HeartbeatHandler) -> None:
    # Given the configured engines, and one added at run time
    handler.add_engine({"engine_id": "big", "slots": 16, "replicas": 2})
    # When the engines are listed
    listed = handler.list_engines()
    # Then both kinds appear with their settings
    assert set(listed) == {"engine1", "engine2", "big"}
    assert (listed["big"]["slots"], listed["big"]["replicas"]) == (16, 2)
    assert listed["engine1"]["heartbeat_missing"] == 20

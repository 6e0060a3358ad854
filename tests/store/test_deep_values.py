"""Every backend stores, reads, lists and rewrites a record nested past any recursion
limit, and keeps the matchmaker's set-aside records (shown by ``dump``).

A database written before requests had depth limits may hold such values; they
must never make a record unreadable or unwritable.
"""

from __future__ import annotations

from typing import Any

import pytest

from dashi.jsontree import depth
from dispatcher.model import Definition, Process
from dispatcher.store.base import Store
from pdcommon.states import ProcessState

LEVELS = [500, 3000]


def nested(levels: int) -> list[Any]:
    value: list[Any] = ["leaf", 12345678901234567890]  # a long integer: the slow parser
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("levels", LEVELS)
def test_a_deep_process_round_trips_through_reads_listings_and_updates(
    store: Store, levels: int
) -> None:
    # Given a queued process whose configuration nests ``levels`` levels deep
    store.add_process_queued(
        Process(
            upid="deep",
            definition={"definition_id": "D"},
            state=ProcessState.REQUESTED,
            configuration={"c": nested(levels - 1)},
        )
    )
    store.add_process(Process(upid="plain", definition={"definition_id": "D"}))
    # Then every read gives it back whole
    read = store.get_process("deep")
    assert read is not None and depth(read.configuration) == levels
    listed = {p.upid: p for p in store.list_processes()}
    assert depth(listed["deep"].configuration) == levels
    assert listed["plain"].configuration == {}
    dicts = {d["upid"]: d for d in store.list_process_dicts()}
    assert depth(dicts["deep"]["configuration"]) == levels
    # And it can be rewritten
    read.state = ProcessState.FAILED
    store.update_process(read)
    again = store.get_process("deep")
    assert again is not None and again.state == ProcessState.FAILED
    assert depth(again.configuration) == levels


@pytest.mark.parametrize("levels", LEVELS)
def test_a_deep_definition_round_trips(store: Store, levels: int) -> None:
    store.add_definition(Definition("D", "supd", {"exec": "x", "argv": nested(levels - 1)}))
    read = store.get_definition("D")
    assert read is not None and depth(read.executable) == levels


def test_set_aside_records_round_trip_in_upid_order(store: Store) -> None:
    assert store.list_set_aside() == {}
    store.record_set_aside("p_2", {"round": 0, "reason": "first", "time": 1.5})
    store.record_set_aside("p%1", {"round": 3, "reason": "other", "time": 2.0})
    store.record_set_aside("p_2", {"round": 1, "reason": "second", "time": 3.0})
    assert list(store.list_set_aside().items()) == [
        ("p%1", {"round": 3, "reason": "other", "time": 2.0}),
        ("p_2", {"round": 1, "reason": "second", "time": 3.0}),
    ]
    # And they are no part of the dispatcher-wide state
    store.set_initialized()
    store.set_system_boot(True)
    assert store.is_system_boot() and store.is_initialized()

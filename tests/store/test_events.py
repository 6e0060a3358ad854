"""The process event history in every backend: append, list the newest, prune."""

from __future__ import annotations

from typing import Any

from dispatcher.store.base import EVENT_KEYS, Store


def _event(upid: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "upid": upid,
        "round": n,
        "time": 1000.0 + n,
        "state": "500-RUNNING",
        "reason": f"event {n}",
        "agent": "agent1",
        "node": "node1",
        "exit_code": None,
        "signal": None,
        "output": None,
        **extra,
    }


def test_events_come_back_oldest_first_with_ids_and_every_key(store: Store) -> None:
    # Given three events of p1 (one with kept output) and one of p2
    store.add_process_events(
        [
            _event("p1", 0),
            _event("p2", 0),
            _event("p1", 1),
            _event("p1", 2, exit_code=3, output={"stderr": "boom\n", "stdout": ""}),
        ]
    )
    # When the last two of p1 are listed
    events = store.list_process_events("p1", 2)
    # Then they are rounds 1 and 2, oldest first, with every key and increasing ids
    assert [e["round"] for e in events] == [1, 2]
    assert set(events[0]) == {"id", *EVENT_KEYS}
    assert events[0]["id"] < events[1]["id"]
    assert events[1]["exit_code"] == 3
    assert events[1]["output"] == {"stderr": "boom\n", "stdout": ""}
    assert store.list_process_events("nobody", 5) == []


def test_prune_keeps_the_newest_per_process_and_overall(store: Store) -> None:
    # Given 5 events of p1 and 3 of p2, p2's being the newest
    store.add_process_events([_event("p1", n) for n in range(5)])
    store.add_process_events([_event("p2", n) for n in range(3)])
    # When pruned to 3 per process
    assert store.prune_process_events(3, 1000) == 2
    # Then p1 keeps its newest 3
    assert [e["round"] for e in store.list_process_events("p1", 10)] == [2, 3, 4]
    # When pruned to 4 overall
    assert store.prune_process_events(3, 4) == 2
    # Then the oldest go first: p1 keeps only its newest
    assert [e["round"] for e in store.list_process_events("p1", 10)] == [4]
    assert [e["round"] for e in store.list_process_events("p2", 10)] == [0, 1, 2]
    # And pruning again removes nothing
    assert store.prune_process_events(3, 4) == 0

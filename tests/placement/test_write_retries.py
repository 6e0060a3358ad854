"""The matchmaker when a process record keeps changing under every write.

An optimistic write gives up after ``WRITE_ATTEMPTS`` lost races
(:func:`dispatcher.store.modify.retry_conflicts`). For the matchmaker that is never
the record's fault: the process is not set aside, its queue entry stays, and a
later pass places it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from dashi.errors import WriteRetriesExhaustedError
from dispatcher.matchmaker import Matchmaker
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.modify import WRITE_ATTEMPTS
from pdcommon.states import ProcessState
from tests.placement.test_matchmaker import (
    add_resource,
    build,
    launches,
    proc,
    queue,
    res,
)
from tests.support.clock import FakeClock
from tests.support.conflicts import ALWAYS, ConflictingStore


@pytest.fixture
def store() -> ConflictingStore:
    return ConflictingStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def messenger() -> RecordingMessenger:
    return RecordingMessenger()


@pytest.fixture
def matchmaker(
    store: ConflictingStore, messenger: RecordingMessenger, clock: FakeClock
) -> Matchmaker:
    mm = build(store, messenger, clock)
    mm.initialize()
    return mm


def test_an_assignment_that_keeps_conflicting_is_backed_out_and_placed_by_a_later_pass(
    store: ConflictingStore, matchmaker: Matchmaker, messenger: RecordingMessenger
) -> None:
    # Given r1 and a queued p1 whose record changes under every write
    add_resource(store, "r1")
    queue(store, "p1")
    store.conflicts[("process", "p1")] = ALWAYS
    # When a pass runs
    result = matchmaker.matchmake()
    # Then the batched write and WRITE_ATTEMPTS retries lost: the assignment is backed out
    assert store.attempts[("process", "p1")] == 1 + WRITE_ATTEMPTS
    assert result.backed_out == [("p1", 0)]
    assert res(store, "r1").assigned == []
    assert launches(messenger) == []
    # And p1 is neither set aside nor dequeued
    assert proc(store, "p1").state == ProcessState.REQUESTED
    assert store.list_set_aside() == {}
    assert store.list_queued() == [("p1", 0)]
    # When the contention is over, Then the next pass places it
    store.conflicts.clear()
    matchmaker.matchmake()
    assert proc(store, "p1").state == ProcessState.ASSIGNED
    assert launches(messenger) == [("r1", "p1", 0)]
    assert store.list_queued() == []


def test_a_waiting_mark_that_keeps_conflicting_fails_the_pass_not_the_process(
    store: ConflictingStore, matchmaker: Matchmaker
) -> None:
    # Given no resources and a queued p1 whose record changes under every write
    queue(store, "p1")
    store.conflicts[("process", "p1")] = ALWAYS
    # When a pass runs, Then it fails as on a database error
    with pytest.raises(WriteRetriesExhaustedError, match="process 'p1'"):
        matchmaker.matchmake()
    # And p1 is not set aside: still REQUESTED and queued
    assert proc(store, "p1").state == ProcessState.REQUESTED
    assert store.list_set_aside() == {}
    assert store.list_queued() == [("p1", 0)]


def test_the_matchmaker_loop_retries_a_pass_that_gave_up_on_a_contended_process(
    store: ConflictingStore, messenger: RecordingMessenger, clock: FakeClock
) -> None:
    # Given a running matchmaker loop, and a queued p1 whose record changes under the
    # writes of one whole pass (WRITE_ATTEMPTS of them)
    matchmaker = build(store, messenger, clock, error_retry=0.01)
    queue(store, "p1")
    store.conflicts[("process", "p1")] = WRITE_ATTEMPTS
    stop = threading.Event()
    thread = threading.Thread(target=matchmaker.run, args=(stop,))
    thread.start()
    try:
        # When the first pass gives up, Then a later one marks p1 WAITING
        assert wait_for(lambda: proc(store, "p1").state == ProcessState.WAITING)
    finally:
        stop.set()
        thread.join(10)
    assert store.attempts[("process", "p1")] == WRITE_ATTEMPTS + 1
    assert store.list_set_aside() == {}
    assert store.list_queued() == [("p1", 0)]


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True

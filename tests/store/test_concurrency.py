"""No lost updates: concurrent read-modify-write loops and racing creates, per backend."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from dashi.errors import WriteConflictError
from dispatcher.model import Process
from dispatcher.store.base import Store
from tests.store.conftest import StoreFactory

THREADS = 8
INCREMENTS = 40


def run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert errors == []


def test_concurrent_increments_lose_no_update(store_factory: StoreFactory) -> None:
    # Given one process and two store instances (two dispatchers on one database)
    stores = [store_factory(), store_factory()]
    stores[0].add_process(Process(upid="counter", definition={}))
    conflicts = [0] * THREADS

    # When 8 threads each increment its counter with a retry-on-conflict loop
    def increment(index: int) -> None:
        store: Store = stores[index % 2]
        for _ in range(INCREMENTS):
            while True:
                process = store.get_process("counter")
                assert process is not None
                process.starts += 1
                process.start_times.append(float(index))
                try:
                    store.update_process(process)
                    break
                except WriteConflictError:
                    conflicts[index] += 1

    run_threads(increment)

    # Then every increment is there, and the version counted every write
    final = stores[1].get_process("counter")
    assert final is not None
    assert final.starts == THREADS * INCREMENTS
    assert len(final.start_times) == THREADS * INCREMENTS
    assert final.version == THREADS * INCREMENTS + 1


def test_concurrent_adds_of_one_key_have_exactly_one_winner(store_factory: StoreFactory) -> None:
    # Given 8 threads released together, each adding the same upid and engine id
    stores = [store_factory(), store_factory()]
    barrier = threading.Barrier(THREADS)
    won: list[int] = []
    lost: list[int] = []

    def add(index: int) -> None:
        store = stores[index % 2]
        barrier.wait()
        try:
            store.add_process(Process(upid="only", definition={}, name=str(index)))
            won.append(index)
        except WriteConflictError:
            lost.append(index)
        with contextlib.suppress(WriteConflictError):
            store.add_engine("engine", {"by": index})

    run_threads(add)

    # Then exactly one add won, and the stored record is the winner's
    assert len(won) == 1 and len(lost) == THREADS - 1
    stored = stores[0].get_process("only")
    assert stored is not None and stored.name == str(won[0]) and stored.version == 1
    assert len(stores[1].list_engines()) == 1


def test_concurrent_queue_writers_keep_every_entry(store_factory: StoreFactory) -> None:
    # Given 8 threads enqueueing 20 entries each, then removing them concurrently
    stores = [store_factory(), store_factory()]

    def enqueue(index: int) -> None:
        for n in range(20):
            stores[index % 2].enqueue(f"p{index}", n)

    run_threads(enqueue)
    queued = stores[0].list_queued()
    assert len(queued) == THREADS * 20
    for index in range(THREADS):  # FIFO per writer
        assert [r for u, r in queued if u == f"p{index}"] == list(range(20))

    def remove(index: int) -> None:
        for n in range(20):
            stores[index % 2].remove_queued(f"p{index}", n)

    run_threads(remove)
    assert stores[1].list_queued() == []


def test_concurrent_removals_of_duplicate_entries_all_succeed(store_factory: StoreFactory) -> None:
    # Given 8 duplicate queue entries and one other
    stores = [store_factory(), store_factory()]
    for _ in range(THREADS):
        stores[0].enqueue("dup", 0)
    stores[0].enqueue("other", 0)
    barrier = threading.Barrier(THREADS)

    # When 8 threads each remove one duplicate at the same moment
    def remove(index: int) -> None:
        barrier.wait()
        stores[index % 2].remove_queued("dup", 0)

    run_threads(remove)

    # Then every removal found an entry, and only the other entry is left
    assert stores[1].list_queued() == [("other", 0)]

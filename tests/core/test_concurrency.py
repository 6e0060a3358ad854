"""Concurrency: many threads scheduling and terminating the same and different upids.

The core is called concurrently from every RPC worker thread; optimistic versions in
the store must reconcile them. After the storm:

* every process is in a state reachable by those calls (REQUESTED or TERMINATED);
* upids are unique;
* queue entries exist only for non-terminal processes, in their current round;
* every REQUESTED process is queued in its current round (none is lost to the
  matchmaker);
* rounds are consistent with the number of successful reschedules.
"""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from dashi.errors import BadRequestError, NotFoundError
from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.memory import MemoryStore
from pdcommon.states import ProcessState as S
from tests.support.wiring import make_core

THREADS = 16
CALLS_PER_THREAD = 150
SHARED_UPIDS = ["shared0", "shared1", "shared2"]


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads every few microseconds, so that races really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def storm(core: ProcessDispatcherCore, seed: int, errors: list[BaseException]) -> Counter[str]:
    """Random schedule/terminate calls on shared and thread-private upids."""
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    own = [f"t{seed}-{i}" for i in range(3)]
    try:
        for _ in range(CALLS_PER_THREAD):
            upid = rng.choice(SHARED_UPIDS + own)
            try:
                if rng.random() < 0.55:
                    core.schedule_process(upid, "d", subscribers=[["sub", "op"]])
                    outcomes["schedule"] += 1
                else:
                    core.terminate_process(upid)
                    outcomes["terminate"] += 1
            except BadRequestError as exc:
                # Heavy contention may exhaust the legacy five attempts; nothing else.
                assert "could not be updated" in exc.value, exc.value
                outcomes["gave-up"] += 1
            except NotFoundError:  # a terminate before any schedule of this upid
                outcomes["not-found"] += 1
    except BaseException as exc:  # surfaced by the test thread
        errors.append(exc)
    return outcomes


def test_concurrent_schedules_and_terminations_leave_consistent_state() -> None:
    # Given a dispatcher on the memory store with one definition
    store = MemoryStore()
    messenger = RecordingMessenger()
    core = make_core(store, messenger)
    core.create_definition("d", "supd", {"exec": "/bin/true"})
    errors: list[BaseException] = []
    # When 16 threads schedule and terminate shared and private upids at random
    threads = [threading.Thread(target=storm, args=(core, seed, errors)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    # Then upids are unique and every state is one those calls can produce
    processes = {p.upid: p for p in store.list_processes()}
    assert len(processes) == len(store.list_processes())
    assert {p.state for p in processes.values()} <= {S.REQUESTED, S.TERMINATED}
    # And queue entries exist only for non-terminal processes, in their current round
    queue = store.list_queued()
    for upid, round_ in queue:
        process = processes[upid]
        assert process.state == S.REQUESTED, (upid, round_, process.state)
        assert round_ == process.round
    # And every REQUESTED process is queued (the matchmaker will see it)
    for process in processes.values():
        if process.state == S.REQUESTED:
            assert (process.upid, process.round) in queue, process.upid
    # And every notification reports TERMINATED, once per termination round
    terminated = [m.args["process"] for m in messenger.messages]
    assert {p["state"] for p in terminated} <= {S.TERMINATED}
    rounds = Counter((p["upid"], p["round"]) for p in terminated)
    assert max(rounds.values(), default=1) == 1
    # And a process's round counts its reschedules after a termination
    for process in processes.values():
        ends = sum(1 for upid, _ in rounds if upid == process.upid)
        assert process.round == ends - (1 if process.state == S.TERMINATED else 0)


def test_concurrent_identical_schedules_of_one_new_process_create_it_once() -> None:
    # Given a dispatcher and a barrier so that all threads call at the same moment
    store = MemoryStore()
    core = make_core(store, RecordingMessenger())
    core.create_definition("d", "supd", {"exec": "/bin/true"})
    barrier = threading.Barrier(THREADS)
    results: list[dict[str, object]] = []
    lock = threading.Lock()

    def schedule() -> None:
        barrier.wait()
        result = core.schedule_process("p", "d", restart_mode="NEVER")
        with lock:
            results.append(result)

    # When every thread schedules the same new process with the same arguments
    threads = [threading.Thread(target=schedule) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then all succeed with REQUESTED round 0, and there is exactly one process
    assert len(results) == THREADS
    assert {(r["state"], r["round"]) for r in results} == {(S.REQUESTED, 0)}
    assert [p.upid for p in store.list_processes()] == ["p"]
    assert set(store.list_queued()) == {("p", 0)}

"""Concurrent schedule and terminate calls through the core on SQLite and PostgreSQL.

The same storm as :mod:`tests.core.test_concurrency`, but on the SQL store, where
the races are real database transactions: each thread is one RPC worker with its
own store (connection pool) on one database, as several workers or several
dispatcher instances would be.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from dispatcher.core import ProcessDispatcherCore
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.sql import SqlStore
from pdcommon.states import ProcessState as S
from tests.core import test_concurrency as storm_module
from tests.support.wiring import make_core

THREADS = 8
CALLS_PER_THREAD = 40


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/pd.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def stores(database_url: str) -> Iterator[list[SqlStore]]:
    """One store per thread on one freshly migrated database."""
    opened = [SqlStore(database_url, create=True)]
    opened += [SqlStore(database_url) for _ in range(THREADS - 1)]
    yield opened
    for store in opened:
        store.close()


@pytest.fixture
def fewer_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # SQL round trips are slower than the memory store: a shorter storm per thread.
    monkeypatch.setattr(storm_module, "CALLS_PER_THREAD", CALLS_PER_THREAD)


def run_threads(targets: list[threading.Thread]) -> None:
    for thread in targets:
        thread.start()
    for thread in targets:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in targets)


@pytest.mark.usefixtures("fewer_calls")
def test_concurrent_schedules_and_terminations_leave_consistent_sql_state(
    stores: list[SqlStore],
) -> None:
    # Given one core per worker, all on one database with one definition
    messenger = RecordingMessenger()
    cores = [make_core(store, messenger) for store in stores]
    cores[0].create_definition("d", "supd", {"exec": "/bin/true"})
    errors: list[BaseException] = []
    outcomes: list[Counter[str]] = []

    def work(seed: int) -> None:
        outcomes.append(storm_module.storm(cores[seed], seed, errors))

    # When every worker schedules and terminates shared and private upids at random
    run_threads([threading.Thread(target=work, args=(seed,)) for seed in range(THREADS)])
    assert errors == []
    total = sum(outcomes, Counter())
    assert total["schedule"] > 0 and total["terminate"] > 0

    # Then upids are unique and every state is one those calls can produce
    store = stores[0]
    listed = store.list_processes()
    processes = {p.upid: p for p in listed}
    assert len(processes) == len(listed)
    assert {p.state for p in processes.values()} <= {S.REQUESTED, S.TERMINATED}
    # And queue entries exist only for REQUESTED processes, in their current round
    queue = store.list_queued()
    for upid, round_ in queue:
        assert processes[upid].state == S.REQUESTED, (upid, round_)
        assert round_ == processes[upid].round
    # And every REQUESTED process is queued in its current round
    for process in processes.values():
        if process.state == S.REQUESTED:
            assert (process.upid, process.round) in queue, process.upid
    # And each termination round was notified exactly once, as TERMINATED
    terminated = [m.args["process"] for m in messenger.messages]
    assert {p["state"] for p in terminated} <= {S.TERMINATED}
    rounds = Counter((p["upid"], p["round"]) for p in terminated)
    assert max(rounds.values(), default=1) == 1
    # And a process's round counts its reschedules after a termination
    for process in processes.values():
        ends = sum(1 for upid, _ in rounds if upid == process.upid)
        assert process.round == ends - (1 if process.state == S.TERMINATED else 0)


def test_concurrent_identical_schedules_of_one_new_process_create_it_once_in_sql(
    stores: list[SqlStore],
) -> None:
    # Given one core per worker and a barrier so that all call at the same moment
    cores = [make_core(store, RecordingMessenger()) for store in stores]
    cores[0].create_definition("d", "supd", {"exec": "/bin/true"})
    barrier = threading.Barrier(THREADS)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def schedule(core: ProcessDispatcherCore) -> None:
        barrier.wait()
        result = core.schedule_process("p", "d", restart_mode="NEVER")
        with lock:
            results.append(result)

    # When every worker schedules the same new process with the same arguments
    run_threads([threading.Thread(target=schedule, args=(core,)) for core in cores])
    # Then all succeed with REQUESTED round 0, there is one process, queued in round 0
    # (every successful schedule appends a queue entry: the legacy "nudge")
    assert len(results) == THREADS
    assert {(r["state"], r["round"]) for r in results} == {(S.REQUESTED, 0)}
    assert [p.upid for p in stores[0].list_processes()] == ["p"]
    assert set(stores[0].list_queued()) == {("p", 0)}


def test_concurrent_terminations_of_one_process_notify_once_in_sql(
    stores: list[SqlStore],
) -> None:
    # Given a queued process
    messenger = RecordingMessenger()
    cores = [make_core(store, messenger) for store in stores]
    cores[0].create_definition("d", "supd", {"exec": "/bin/true"})
    cores[0].schedule_process("p", "d", subscribers=[["sub", "op"]])
    barrier = threading.Barrier(THREADS)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def terminate(core: ProcessDispatcherCore) -> None:
        barrier.wait()
        result = core.terminate_process("p")
        with lock:
            results.append(result)

    # When every worker terminates it at the same moment
    run_threads([threading.Thread(target=terminate, args=(core,)) for core in cores])
    # Then every call reports TERMINATED, the queue is empty and one notification went out
    assert len(results) == THREADS
    assert {r["state"] for r in results} == {S.TERMINATED}
    assert stores[0].list_queued() == []
    notified = [m.args["process"]["state"] for m in messenger.messages]
    assert notified == [S.TERMINATED]

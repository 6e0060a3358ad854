"""Leadership: one leader per database, handed over when the leader goes away."""

from __future__ import annotations

import threading
import time

import pytest

from dispatcher.leadership import (
    AdvisoryLock,
    AlwaysLeader,
    FileLock,
    LeaderElector,
    lock_for_database,
)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_the_lock_suits_the_database(tmp_path):
    assert isinstance(lock_for_database("sqlite://", "pd"), AlwaysLeader)
    assert isinstance(lock_for_database(f"sqlite:///{tmp_path}/db.sqlite", "pd"), FileLock)
    assert isinstance(
        lock_for_database("postgresql+psycopg://u:p@127.0.0.1:1/db", "pd"), AdvisoryLock
    )


def test_only_one_holder_of_a_sqlite_file_lock_and_it_passes_on_release(tmp_path):
    first, second = FileLock(tmp_path / "db.leader"), FileLock(tmp_path / "db.leader")
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def _electors(make_lock, count=2):
    terms: list[tuple[int, threading.Event]] = []
    electors = []
    for index in range(count):
        elector = LeaderElector(
            make_lock(),
            lambda term, index=index: terms.append((index, term)),
            poll_interval=0.1,
        )
        elector.start()
        electors.append(elector)
    return electors, terms


def _check_handover(electors, terms):
    # Given two instances / Then exactly one leads
    assert wait_for(lambda: len(terms) == 1)
    time.sleep(0.5)
    assert len(terms) == 1
    leader, term = terms[0]
    assert electors[leader].is_leader
    assert not electors[1 - leader].is_leader
    # When the leader stops / Then its term ends and the other takes over
    electors[leader].stop()
    assert term.is_set()
    assert wait_for(lambda: len(terms) == 2)
    assert terms[1][0] == 1 - leader
    electors[1 - leader].stop()
    assert terms[1][1].is_set()


def test_two_electors_on_one_sqlite_file_hand_over(tmp_path):
    electors, terms = _electors(lambda: FileLock(tmp_path / "db.leader"))
    _check_handover(electors, terms)


@pytest.mark.postgres
def test_two_electors_on_one_postgres_hand_over(postgres_url):
    electors, terms = _electors(lambda: AdvisoryLock(postgres_url, "pd"))
    _check_handover(electors, terms)


@pytest.mark.postgres
def test_leadership_is_lost_when_postgres_restarts_and_regained_after(postgres, postgres_url):
    terms: list[threading.Event] = []
    elector = LeaderElector(AdvisoryLock(postgres_url, "pd"), terms.append, poll_interval=0.1)
    elector.start()
    try:
        assert wait_for(lambda: len(terms) == 1)
        postgres.restart()
        assert wait_for(lambda: terms[0].is_set(), timeout=15)
        assert wait_for(lambda: len(terms) == 2, timeout=30)
    finally:
        elector.stop()

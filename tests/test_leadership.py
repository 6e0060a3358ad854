"""Leadership: one leader per database, handed over when the leader goes away.

The lock is the database's, not the instance's: instances with other names on one
database compete for the same lock, and a database belongs to the first
dispatcher system that starts on it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest

from dispatcher.leadership import (
    AdvisoryLock,
    AlwaysLeader,
    FileLock,
    LeaderElector,
    claim_database,
    lock_for_database,
)
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore
from pdcommon.errors import ConfigError, DatabaseOwnerError
from tests.support.waiting import wait_for


def test_the_lock_suits_the_database(tmp_path):
    assert isinstance(lock_for_database("sqlite://"), AlwaysLeader)
    assert isinstance(lock_for_database(f"sqlite:///{tmp_path}/db.sqlite"), FileLock)
    assert isinstance(lock_for_database("postgresql+psycopg://u:p@127.0.0.1:1/db"), AdvisoryLock)


def test_a_sqlite_database_has_one_lock_however_it_is_named(tmp_path, monkeypatch):
    # Given one database file reached by an absolute and by a relative path
    monkeypatch.chdir(tmp_path)
    first = lock_for_database(f"sqlite:///{tmp_path}/db.sqlite")
    second = lock_for_database("sqlite:///db.sqlite")
    assert isinstance(first, FileLock) and isinstance(second, FileLock)
    # Then both instances compete for one lock
    assert first.path == second.path == tmp_path / "db.sqlite.leader"
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_database_belongs_to_the_first_system_that_claims_it(tmp_path, backend):
    store = (
        MemoryStore()
        if backend == "memory"
        else SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    )
    url = f"sqlite:///{tmp_path}/pd.db"
    try:
        # Given system "alpha" started first on the database
        claim_database(store, url, "alpha", "process_dispatcher")
        # Then its other instances (same names) may use it too
        claim_database(store, url, "alpha", "process_dispatcher")
        # But a dispatcher with another sysname or service name is refused, in one line
        for sysname, service in (
            ("beta", "process_dispatcher"),
            ("alpha", "other_pd"),
            (None, "process_dispatcher"),
        ):
            with pytest.raises(DatabaseOwnerError) as refused:
                claim_database(store, url, sysname, service)
            message = str(refused.value)
            assert "\n" not in message
            assert "dashi.sysname 'alpha'" in message
            assert (f"dashi.sysname {sysname!r}" if sysname else "dashi.sysname (none)") in message
            assert f"service_name {service!r}" in message
            assert isinstance(refused.value, ConfigError)
    finally:
        store.close()


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


def test_a_standby_says_so_once_at_info(tmp_path, caplog):
    # Given a leader holding the lock
    leader = FileLock(tmp_path / "db.leader")
    assert leader.try_acquire()
    elected = threading.Event()
    standby = LeaderElector(
        FileLock(tmp_path / "db.leader"), lambda term: elected.set(), poll_interval=0.05
    )
    # When a second dispatcher's elector polls several times
    with caplog.at_level(logging.INFO, logger="dispatcher.leadership"):
        standby.start()
        try:
            assert wait_for(lambda: any("standing by" in r.getMessage() for r in caplog.records))
            time.sleep(0.3)  # several more polls, to check it is said once
            # Then it said once, at INFO, that it stands by
            said = [r for r in caplog.records if "standing by" in r.getMessage()]
            assert len(said) == 1 and said[0].levelno == logging.INFO
            # And it takes over when the leader goes
            leader.release()
            assert wait_for(elected.is_set)
        finally:
            standby.stop()


@pytest.mark.postgres
def test_two_electors_on_one_postgres_hand_over(postgres_url):
    electors, terms = _electors(lambda: lock_for_database(postgres_url))
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


@pytest.mark.postgres
def test_a_postgres_lock_is_per_database(postgres, postgres_url):
    # Given two locks on one database, and one on another database of the server
    other = f"pdtest_{uuid.uuid4().hex[:12]}"
    postgres.create_database(other)
    first, second = lock_for_database(postgres_url), lock_for_database(postgres_url)
    elsewhere = lock_for_database(postgres.url(other))
    try:
        # Then only one of the first two holds it, and the other database has its own
        assert first.try_acquire()
        assert not second.try_acquire()
        assert elsewhere.try_acquire()
    finally:
        for lock in (first, second, elsewhere):
            lock.release()
        postgres.drop_database(other)

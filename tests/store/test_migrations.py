"""The Alembic migrations build the schema of dispatcher/store/schema.py, idempotently."""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from dispatcher.model import Definition, Process
from dispatcher.store import migrate
from dispatcher.store.engine import make_engine
from dispatcher.store.schema import metadata
from dispatcher.store.sql import SqlStore
from pdcommon.errors import StoreError
from tests.store.conftest import SQL_BACKENDS


@pytest.fixture(params=SQL_BACKENDS)
def empty_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty SQLite or PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{request.getfixturevalue('tmp_path')}/new/pd.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_head_creates_every_table(empty_url: str) -> None:
    # Given an empty database
    assert migrate.current(empty_url) is None
    # When upgraded to head
    migrate.upgrade(empty_url)
    # Then every table of the schema exists and the revision is the head
    assert table_names(empty_url) == set(metadata.tables) | {"alembic_version"}
    assert migrate.current(empty_url) == migrate.head()


def test_migrations_match_the_schema_module(empty_url: str) -> None:
    # Given a database upgraded to head
    migrate.upgrade(empty_url)
    # When autogenerate compares it with the metadata the store uses
    engine = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    # Then there is nothing to migrate
    assert diff == []


def test_upgrade_twice_is_a_no_op(empty_url: str) -> None:
    # Given a migrated database holding data
    store = SqlStore(empty_url, create=True)
    store.add_process(Process(upid="p1", definition={}))
    store.close()
    # When upgraded again (directly and through create=True)
    migrate.upgrade(empty_url)
    store = SqlStore(empty_url, create=True)
    # Then nothing changed
    assert migrate.current(empty_url) == migrate.head()
    assert [p.upid for p in store.list_processes()] == ["p1"]
    store.close()


def test_concurrent_upgrades_migrate_once(empty_url: str) -> None:
    # Given four dispatchers starting together on an empty database
    errors: list[BaseException] = []

    def start() -> None:
        try:
            SqlStore(empty_url, create=True).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Then all of them started and the schema is at head
    assert errors == []
    assert migrate.current(empty_url) == migrate.head()


def test_store_refuses_an_unmigrated_database(empty_url: str) -> None:
    # Given an empty database, When opened without create, Then StoreError says why
    with pytest.raises(StoreError, match="no schema"):
        SqlStore(empty_url)
    # And once migrated it opens
    migrate.upgrade(empty_url)
    SqlStore(empty_url).close()


def test_upgrade_does_not_depend_on_the_working_directory(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a working directory with no alembic.ini or migrations folder
    monkeypatch.chdir(str(tmp_path))
    url = f"sqlite:///{tmp_path}/pd.db"
    # When upgraded, Then it works
    migrate.upgrade(url)
    assert migrate.current(url) == migrate.head()


def test_downgrade_to_base_drops_every_table(empty_url: str) -> None:
    # Given a migrated database, When downgraded to base, Then only Alembic's table is left
    migrate.upgrade(empty_url)
    migrate.downgrade(empty_url, "base")
    assert table_names(empty_url) == {"alembic_version"}
    assert migrate.current(empty_url) is None
    # And it can be upgraded again
    migrate.upgrade(empty_url)
    assert migrate.current(empty_url) == migrate.head()


def test_0005_adds_the_definition_default_runtime_and_keeps_existing_definitions(
    empty_url: str,
) -> None:
    # Given a database at 0004 holding a definition
    migrate.upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO definitions (definition_id, definition_type, executable, name)"
                    " VALUES ('d1', 'supd', '{\"exec\": \"/bin/true\"}', 'n')"
                )
            )
    finally:
        engine.dispose()
    # When upgraded to 0005
    migrate.upgrade(empty_url, "0005")
    # Then the definition is there with no default, and a default can be stored
    store = SqlStore(empty_url)
    try:
        kept = store.get_definition("d1")
        assert kept == Definition("d1", "supd", {"exec": "/bin/true"}, "n")
        store.add_definition(Definition("d2", "supd", "x", max_runtime_seconds=60))
        got = store.get_definition("d2")
        assert got is not None and got.max_runtime_seconds == 60
    finally:
        store.close()
    # When downgraded to 0004, Then the column is gone and the definitions stay
    migrate.downgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("definitions")}
        with engine.connect() as conn:
            ids = conn.execute(text("SELECT definition_id FROM definitions")).scalars().all()
    finally:
        engine.dispose()
    assert "max_runtime_seconds" not in columns
    assert sorted(ids) == ["d1", "d2"]


def test_0006_adds_process_groups_and_labels_and_keeps_existing_processes(
    empty_url: str,
) -> None:
    # Given a database at 0005 holding a process written before groups existed
    migrate.upgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO processes (upid, state, round, definition, starts,"
                    " dispatches, version) VALUES ('old', '100-UNSCHEDULED', 0, '{}', 0, 0, 1)"
                )
            )
    finally:
        engine.dispose()
    # When upgraded to 0006
    migrate.upgrade(empty_url, "0006")
    # Then the old process has no group and no labels (its record shows neither key)
    store = SqlStore(empty_url)
    try:
        old = store.get_process("old")
        assert old is not None and old.group is None and old.labels is None
        assert "group" not in old.to_dict() and "labels" not in old.to_dict()
        # And a grouped, labelled process round trips, and group_name is indexed
        store.add_process(Process(upid="new", definition={}, group="exp-17", labels={"app": "web"}))
        new = store.get_process("new")
        assert new is not None and new.group == "exp-17" and new.labels == {"app": "web"}
    finally:
        store.close()
    engine = make_engine(empty_url)
    try:
        indexes = {i["name"] for i in inspect(engine).get_indexes("processes")}
    finally:
        engine.dispose()
    assert "ix_processes_group_name" in indexes
    # When downgraded to 0005, Then the columns are gone and the processes stay
    migrate.downgrade(empty_url, "0005")
    engine = make_engine(empty_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("processes")}
        with engine.connect() as conn:
            upids = conn.execute(text("SELECT upid FROM processes")).scalars().all()
    finally:
        engine.dispose()
    assert not {"group_name", "labels"} & columns
    assert sorted(upids) == ["new", "old"]

"""Database failures leave the SQL store as dispatcher errors, never as SQLAlchemy ones."""

from __future__ import annotations

import inspect as pyinspect
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import make_url

from dispatcher.model import Process
from dispatcher.store import engine as engine_module
from dispatcher.store.sql import SqlStore
from pdcommon.errors import ConfigError, StoreError
from tests.infra import PostgresServer, free_port

PASSWORD = "s3cr3t-Pa55"


def test_unreachable_postgres_raises_store_error_without_password() -> None:
    # Given a PostgreSQL URL with a password, on a port where nothing listens
    url = f"postgresql+psycopg://pduser:{PASSWORD}@127.0.0.1:{free_port()}/pd"
    for create in (True, False):
        # When the store is opened
        with pytest.raises(StoreError) as info:
            SqlStore(url, create=create)
        # Then the error is ours, names the server, and hides the password
        assert type(info.value) is StoreError
        assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)
        assert "127.0.0.1" in str(info.value)
        assert isinstance(info.value.__cause__, sa_exc.SQLAlchemyError)


def test_unopenable_sqlite_file_raises_store_error(tmp_path: Path) -> None:
    # Given a database path that is a directory
    (tmp_path / "db").mkdir()
    with pytest.raises(StoreError):
        SqlStore(f"sqlite:///{tmp_path}/db", create=True)


@pytest.mark.parametrize("url", ["nonsense", "mysql://u:p@h/db", "postgresql+nodriver://h/db"])
def test_bad_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        SqlStore(url)
    assert "p@h" not in str(info.value)


def test_non_json_values_raise_type_error(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    with pytest.raises(TypeError):
        store.add_process(Process(upid="p", definition={"x": object()}))
    assert store.get_process("p") is None
    store.close()


def _instances() -> list[sa_exc.SQLAlchemyError]:
    """One instance of every SQLAlchemy error class."""
    found: list[sa_exc.SQLAlchemyError] = []
    for _, cls in pyinspect.getmembers(sa_exc, pyinspect.isclass):
        if not issubclass(cls, sa_exc.SQLAlchemyError):
            continue
        if issubclass(cls, sa_exc.DBAPIError):
            found.append(cls("SELECT 1", {}, Exception(f"driver said {PASSWORD}")))
        elif issubclass(cls, sa_exc.StatementError):
            found.append(cls("failed", "SELECT 1", {}, Exception("boom")))
        else:
            try:
                found.append(cls("failed"))
            except TypeError:
                continue
    return found


@pytest.mark.parametrize("error", _instances(), ids=lambda e: type(e).__name__)
def test_every_sqlalchemy_error_is_translated(
    tmp_path: Path, error: sa_exc.SQLAlchemyError
) -> None:
    # Given a store whose database raises any SQLAlchemy error
    store = SqlStore(f"sqlite:///{tmp_path}/pd.db", create=True)
    store._url = make_url(f"postgresql+psycopg://pd:{PASSWORD}@db.example/pd")

    def fail(*_args: object) -> None:
        raise error

    # When a read and a write run into it, Then StoreError comes out, without the password
    for operation in (store.list_processes, lambda: store.enqueue("p", 0)):
        store._engine.connect = fail  # type: ignore[method-assign]
        with pytest.raises(StoreError) as info:
            operation()
        assert PASSWORD not in str(info.value)
    store.close()


@pytest.mark.postgres
def test_store_recovers_after_postgres_restarts(
    postgres: PostgresServer, postgres_url: str
) -> None:
    # Given a working store with pooled connections
    store = SqlStore(postgres_url, create=True)
    store.add_process(Process(upid="p1", definition={}))
    # When the server stops, Then calls fail with StoreError
    postgres.stop()
    try:
        with pytest.raises(StoreError):
            store.get_process("p1")
        with pytest.raises(StoreError):
            store.enqueue("p1", 0)
    finally:
        postgres.start()
    # And once it is back, the same store works again (stale connections are replaced)
    assert store.get_process("p1") is not None
    store.enqueue("p1", 0)
    assert store.list_queued() == [("p1", 0)]
    store.close()


@pytest.mark.postgres
def test_idle_connections_are_checked_before_a_write(
    postgres: PostgresServer, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a store whose pooled connections count as idle at once
    monkeypatch.setattr(engine_module, "PG_IDLE_PING_SECONDS", 0.0)
    store = SqlStore(postgres_url, create=True)
    store.enqueue("p1", 0)
    # When the server restarts behind the pool's back
    postgres.restart()
    # Then the next write succeeds on a fresh connection
    store.enqueue("p1", 1)
    assert store.list_queued() == [("p1", 0), ("p1", 1)]
    store.close()

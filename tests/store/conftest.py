"""Fixtures for the store tests: one ``store`` fixture per backend.

``store`` runs each contract test against the memory fake, SQLite (a file under
``tmp_path``) and PostgreSQL (a fresh database per test, ``@pytest.mark.postgres``).
``store_factory`` opens further stores on the same database, as further
dispatcher instances would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from dispatcher.store.sql import SqlStore

BACKENDS = [
    pytest.param("memory"),
    pytest.param("sqlite"),
    pytest.param("postgres", marks=pytest.mark.postgres),
]
SQL_BACKENDS = BACKENDS[1:]

StoreFactory = Callable[[], Store]


def _url(backend: str, request: pytest.FixtureRequest) -> str | None:
    if backend == "memory":
        return None
    if backend == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return f"sqlite:///{tmp_path}/state/pd.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name: ``memory``, ``sqlite`` or ``postgres``."""
    name: str = request.param
    return name


@pytest.fixture
def store_factory(backend: str, request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    """Open stores on one database (the memory backend always hands back the same store)."""
    url = _url(backend, request)
    opened: list[Store] = []
    memory = MemoryStore()

    def open_store() -> Store:
        store: Store = memory if url is None else SqlStore(url, create=True)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    """A fresh, empty store of the parametrized backend."""
    return store_factory()

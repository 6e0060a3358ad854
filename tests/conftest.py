"""Session-wide test fixtures.

Real servers: ``rabbitmq`` and ``postgres`` start one private server each (see
:mod:`tests.infra`) the first time a test needs it, and stop it at the end of the
session. When a server cannot be run here, tests needing it are skipped - or fail
when ``CI=true``, where every test must really run.

Tests marked ``@pytest.mark.rabbitmq`` / ``postgres`` / ``supervisord`` get the
matching fixture automatically, so they skip (or fail in CI) even when they only
reach the server indirectly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.infra import PostgresServer, RabbitMQServer, supervisord_path
from tests.support.hypothesis_profiles import load_profile


def in_ci() -> bool:
    """True when the test run must not skip anything (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: required here)", pytrace=False)
    pytest.skip(reason)


# Derandomized property tests in CI, random ones elsewhere (see the module).
load_profile(in_ci())


# --------------------------------------------------------------------------- markers

MARKER_FIXTURES = {
    "rabbitmq": "rabbitmq",
    "postgres": "postgres",
    "supervisord": "supervisord_bin",
}


#: Fixtures that need a server: a test using one gets the marker, so that marker
#: selections (``scripts/test.sh --quick``) leave it out without a hand-kept list.
FIXTURE_MARKERS = {
    "rabbitmq": "rabbitmq",
    "amqp_uri": "rabbitmq",
    "postgres": "postgres",
    "postgres_url": "postgres",
    "supervisord_bin": "supervisord",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = FIXTURE_MARKERS.get(fixture)
            if marker is not None and item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.fixture(autouse=True)
def _marker_requirements(request: pytest.FixtureRequest) -> None:
    """Set up the server fixture matching each infrastructure marker of the test."""
    for marker, fixture in MARKER_FIXTURES.items():
        if request.node.get_closest_marker(marker) is not None:
            ensure_running(request.getfixturevalue(fixture))


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kill what a test started under its ``tmp_path`` and left running.

    Local agents outlive a stopped dispatcher by design (the next start adopts
    them), so a test that stops a dispatcher with a local pool leaves its agents,
    their supervisords and the processes they run. They are found by their
    command line naming the test's ``tmp_path``, with all their descendants.
    """
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp_path = request.getfixturevalue("tmp_path")  # torn down after this fixture
    yield
    kill_processes_under(tmp_path)


def kill_processes_under(directory: Path) -> list[int]:
    """SIGKILL every process whose command line names ``directory``, and their
    descendants; return their pids."""
    # the directory itself, or a path under it (not a sibling named like it plus more)
    needle = re.compile(re.escape(str(directory).encode()) + rb"(?:/|\x00|$)")
    parents: dict[int, int] = {}
    roots: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if needle.search(cmdline.read()):
                    roots.append(pid)
            with open(f"/proc/{pid}/stat", "rb") as stat:
                parents[pid] = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    doomed = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in doomed and pid not in doomed:
                doomed.add(pid)
                grew = True
    for pid in doomed:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return sorted(doomed)


def ensure_running(server: object) -> None:
    """Restart a session server that an earlier test stopped and left down."""
    if isinstance(server, RabbitMQServer | PostgresServer) and not server.running:
        server.start()


# --------------------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQServer]:
    """A private RabbitMQ broker shared by the session (``.uri``, ``.restart()``...)."""
    reason = RabbitMQServer.missing_reason()
    if reason:
        unavailable(reason)
    server = RabbitMQServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def amqp_uri(rabbitmq: RabbitMQServer) -> str:
    """``amqp://guest:guest@127.0.0.1:<port>//`` of the session broker."""
    ensure_running(rabbitmq)
    return rabbitmq.uri


@pytest.fixture
def sysname() -> str:
    """A unique dashi sysname per test, isolating its exchanges and queues."""
    return f"t{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A private PostgreSQL server shared by the session (``.url(db)``, ``.restart()``...)."""
    reason = PostgresServer.missing_reason()
    if reason:
        unavailable(reason)
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database, dropped after the test."""
    name = f"pdtest_{uuid.uuid4().hex[:12]}"
    ensure_running(postgres)
    postgres.create_database(name)
    try:
        yield postgres.url(name)
    finally:
        ensure_running(postgres)
        postgres.drop_database(name)


# --------------------------------------------------------------------------- supervisord


@pytest.fixture(scope="session")
def supervisord_bin() -> str:
    """Path of the ``supervisord`` executable (the venv's, else the one on PATH)."""
    path = supervisord_path()
    if path is None:
        unavailable("supervisord is not installed (pip install supervisor)")
    return path

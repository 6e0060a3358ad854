"""Fixtures for the provisioner tests.

``provisioner`` is a :class:`Provisioner` over a :class:`MemoryStore`, one
``FakeDriver`` site (boot timeout 60 s), an :class:`InlineExecutor` (each pass is
deterministic) and a :class:`FakeClock` moved by hand. Nodes are recorded and
evacuated by the dispatcher's real :class:`~dispatcher.registration.Registration`
(from a :class:`HeartbeatHandler`), so an agent "boots" when
:func:`register_agents` records its first heartbeat.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dispatcher.engines import EngineRegistry
from dispatcher.messaging import RecordingMessenger
from dispatcher.provisioner.base import agent_name
from dispatcher.provisioner.fake import FakeDriver, InlineExecutor
from dispatcher.provisioner.manager import Provisioner
from dispatcher.provisioner.sites import Site
from dispatcher.registration import Registration
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings, ProvisionerSettings
from tests.support.clock import FakeClock
from tests.support.wiring import health_parts

NOW = 1_700_000_000.0
BOOT_TIMEOUT = 60.0


def make_engines() -> EngineRegistry:
    return EngineRegistry(
        {
            "engine1": EngineSettings(slots=2),
            "engine2": EngineSettings(slots=1, replicas=2),
        },
        default_engine="engine1",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def engines() -> EngineRegistry:
    return make_engines()


@pytest.fixture
def registration(store: MemoryStore, engines: EngineRegistry, clock: FakeClock) -> Registration:
    return health_parts(store, RecordingMessenger(), engines, clock=clock).registration


@pytest.fixture
def driver(clock: FakeClock) -> FakeDriver:
    return FakeDriver(clock=clock)


@pytest.fixture
def settings() -> ProvisionerSettings:
    return ProvisionerSettings(retry_initial=2, retry_max=16, max_parallel=8, history=600)


def build(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
    clock: FakeClock,
    settings: ProvisionerSettings,
) -> Provisioner:
    sites = {"default": Site("default", driver, BOOT_TIMEOUT)}
    return Provisioner(
        store,
        engines,
        sites,
        registration,
        settings=settings,
        executor=InlineExecutor(),
        clock=clock,
    )


@pytest.fixture
def provisioner(
    store: MemoryStore,
    engines: EngineRegistry,
    driver: FakeDriver,
    registration: Registration,
    clock: FakeClock,
    settings: ProvisionerSettings,
) -> Provisioner:
    return build(store, engines, driver, registration, clock, settings)


def register_agents(registration: Registration, node_id: str, replicas: int = 1) -> None:
    """The first heartbeat of each agent of ``node_id``."""
    for index in range(replicas):
        registration.register_agent(agent_name(node_id, index), node_id, datetime.now(UTC))

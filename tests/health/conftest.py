"""Fixtures for the health tests: heartbeats, node states, evacuation and the doctor.

The standard engine here is the legacy doctor tests' fixture (``engine1``: 4 slots,
heartbeat period 5 s, warning 10 s, missing 20 s); ``engine2`` has no heartbeat
monitoring. Time comes from a :class:`FakeClock` the tests move by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from dispatcher.doctor import Doctor
from dispatcher.engines import EngineRegistry
from dispatcher.evacuation import Evacuation
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.model import Node, Process, Resource
from dispatcher.store.base import Store
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from tests.support.clock import FakeClock
from tests.support.wiring import Health, health_parts, make_heartbeats

#: The time the fake clock starts at (epoch seconds): 2023-11-14T22:13:20Z.
NOW = 1_700_000_000.0
DOMAIN1 = "pd_domain_engine1"
SUBSCRIBERS = [["sub", "process_state"]]


def iso(epoch: float) -> str:
    """An RFC 3339 timestamp (UTC offset) for epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def make_engines() -> EngineRegistry:
    return EngineRegistry(
        {
            "engine1": EngineSettings(
                slots=4, heartbeat_period=5, heartbeat_warning=10, heartbeat_missing=20
            ),
            "engine2": EngineSettings(slots=2, heartbeat_warning=None, heartbeat_missing=None),
        },
        default_engine="engine1",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A MemoryStore; ``parametrize("store", ["sql"], indirect=True)`` gives SQLite."""
    backend = getattr(request, "param", "memory")
    if backend == "memory":
        yield MemoryStore()
        return
    from dispatcher.store.sql import SqlStore

    sql = SqlStore(f"sqlite:///{tmp_path}/dispatcher.db", create=True)
    try:
        yield sql
    finally:
        sql.close()


#: Parametrize a test over both stores: ``@BOTH_STORES``.
BOTH_STORES = pytest.mark.parametrize("store", ["memory", "sql"], indirect=True)


@pytest.fixture
def messenger() -> RecordingMessenger:
    return RecordingMessenger()


@pytest.fixture
def engines() -> EngineRegistry:
    return make_engines()


@pytest.fixture
def parts(
    store: Store, messenger: RecordingMessenger, engines: EngineRegistry, clock: FakeClock
) -> Health:
    """The one state machine, evacuation and registration the handler and doctor share."""
    return health_parts(store, messenger, engines, clock=clock)


@pytest.fixture
def evacuation(parts: Health) -> Evacuation:
    return parts.evacuation


@pytest.fixture
def handler(
    store: Store,
    messenger: RecordingMessenger,
    engines: EngineRegistry,
    clock: FakeClock,
    parts: Health,
) -> HeartbeatHandler:
    return make_heartbeats(store, messenger, engines, clock=clock, parts=parts)


@pytest.fixture
def doctor(
    store: Store,
    messenger: RecordingMessenger,
    engines: EngineRegistry,
    clock: FakeClock,
    parts: Health,
) -> Doctor:
    return Doctor(
        store,
        messenger,
        engines,
        transitions=parts.transitions,
        evacuation=parts.evacuation,
        clock=clock,
    )


# -- building state -----------------------------------------------------------------------


def report(upid: str, round_: int | str, state: Any) -> dict[str, Any]:
    """One heartbeat process entry, as the real agent sends it."""
    return {"upid": upid, "round": round_, "state": state, "msg": "None"}


def beat(
    processes: list[dict[str, Any]] | None = None,
    *,
    at: float = NOW,
    node_id: str | None = "node1",
    eeagent_id: str = "eeagent_1",
) -> dict[str, Any]:
    """A heartbeat message stamped ``at`` (epoch seconds)."""
    message: dict[str, Any] = {
        "eeagent_id": eeagent_id,
        "timestamp": iso(at),
        "processes": processes or [],
    }
    if node_id is not None:
        message["node_id"] = node_id
    return message


def bring_up(
    handler: HeartbeatHandler,
    node_id: str = "node1",
    agents: tuple[str, ...] = ("eeagent_1",),
    *,
    domain: str = DOMAIN1,
    properties: dict[str, Any] | None = None,
    at: float = NOW,
) -> None:
    """``node_state`` RUNNING, then a first heartbeat from each agent."""
    handler.node_state(node_id, domain, "600-RUNNING", properties)
    for agent in agents:
        handler.heartbeat(beat(at=at, node_id=node_id, eeagent_id=agent), sender=f"sys.{agent}")


def put_process(
    store: Store,
    upid: str,
    state: str,
    *,
    round_: int = 0,
    assigned: str | None = None,
    **fields: Any,
) -> Process:
    """Store a process directly in ``state``; if ``assigned``, hold a slot on that agent.

    The agent (and its node ``node1``) is created when missing.
    """
    process = Process(
        upid=upid,
        definition={"definition_id": "D", "executable": {"exec": "/bin/true", "argv": []}},
        state=state,
        round=round_,
        assigned=assigned,
        **fields,
    )
    store.add_process(process)
    if assigned is not None:
        resource = store.get_resource(assigned) or add_agent(store, assigned)
        resource.assigned.append((upid, round_))
        store.update_resource(resource)
    return process


def add_agent(
    store: Store,
    resource_id: str = "eeagent_1",
    node_id: str = "node1",
    *,
    last_heartbeat: float = NOW,
    state: str = "OK",
    engine: str = "engine1",
) -> Resource:
    """Store an agent (and its node, if missing) as a first heartbeat would."""
    node = store.get_node(node_id)
    if node is None:
        store.add_node(Node(node_id=node_id, domain_id=f"pd_domain_{engine}", state_time=NOW))
        node = store.get_node(node_id)
        assert node is not None
    node.resources.append(resource_id)
    store.update_node(node)
    resource = Resource(
        resource_id=resource_id,
        node_id=node_id,
        slot_count=4,
        state=state,
        properties={"engine": engine, "resource_id": resource_id},
        last_heartbeat=iso(last_heartbeat),
    )
    store.add_resource(resource)
    stored = store.get_resource(resource_id)
    assert stored is not None
    return stored


def process(store: Store, upid: str) -> Process:
    found = store.get_process(upid)
    assert found is not None, upid
    return found


def resource(store: Store, resource_id: str = "eeagent_1") -> Resource:
    found = store.get_resource(resource_id)
    assert found is not None, resource_id
    return found


def snapshot(store: Store) -> dict[str, Any]:
    """Everything the store holds, versions included, for "nothing was written" checks."""
    return {
        "processes": [(p.to_dict(), p.version) for p in store.list_processes()],
        "queue": store.list_queued(),
        "resources": [(r.to_dict(), r.version) for r in store.list_resources()],
        "nodes": [(n.to_dict(), n.version) for n in store.list_nodes()],
        "engines": store.list_engines(),
        "state": (store.get_pd_state(), store.is_system_boot(), store.is_initialized()),
    }


def orders(messenger: RecordingMessenger, agent: str = "eeagent_1") -> list[tuple[str, str, int]]:
    """The commands sent to an agent, as ``(op, upid, round)``."""
    return [(m.op, m.args["u_pid"], m.args["round"]) for m in messenger.sent_to(agent)]


def notified(messenger: RecordingMessenger) -> list[tuple[str, str, int]]:
    """The notifications sent to the ``sub`` subscriber, as ``(upid, state, round)``."""
    return [
        (m.args["process"]["upid"], m.args["process"]["state"], m.args["process"]["round"])
        for m in messenger.sent_to("sub", "process_state")
    ]

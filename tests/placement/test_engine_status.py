"""Engine status: each engine's need, why, nodes and retire-first order."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.engine_status import engine_statuses, system_status
from dispatcher.engines import EngineRegistry
from dispatcher.model import VM, Node, Process, Resource
from dispatcher.store.memory import MemoryStore
from pdcommon.settings import EngineSettings
from pdcommon.states import ExecutionResourceState, ProcessDispatcherState, ProcessState

S = ProcessState


@pytest.fixture
def engines() -> EngineRegistry:
    return EngineRegistry(
        {
            "engine1": EngineSettings(slots=2, base_need=1),
            "engine2": EngineSettings(slots=2, replicas=2, spare_slots=1, maximum_vms=2),
            "engine3": EngineSettings(slots=4),
        },
        default_engine="engine1",
    )


def put(store: MemoryStore, upid: str, state: str, engine: str | None = None, **kw: Any) -> None:
    constraints = {"engine": engine} if engine else {}
    store.add_process(Process(upid=upid, definition={}, state=state, constraints=constraints, **kw))


def agent(
    store: MemoryStore, resource_id: str, node_id: str, engine: str, *upids: str, **kw: Any
) -> None:
    store.add_node(Node(node_id, domain_id=f"pd_domain_{engine}", resources=[resource_id], **kw))
    store.add_resource(
        Resource(
            resource_id=resource_id,
            node_id=node_id,
            slot_count=2,
            properties={"engine": engine},
            assigned=[(upid, 0) for upid in upids],
        )
    )


def booting(store: MemoryStore) -> None:
    store.set_pd_state(ProcessDispatcherState.SYSTEM_BOOTING)
    store.set_initialized()


def test_during_system_boot_the_need_counts_held_back_processes_per_engine(
    engines: EngineRegistry,
) -> None:
    # Given a booting dispatcher: 5 held back for engine1 (the default), 3 for engine3
    store = MemoryStore()
    booting(store)
    for index in range(5):
        put(store, f"a{index}", S.UNSCHEDULED_PENDING)
    for index in range(3):
        put(store, f"c{index}", S.UNSCHEDULED_PENDING, "engine3")
    put(store, "ended", S.TERMINATED, "engine3")
    # When the status is computed
    status = engine_statuses(store, engines)
    # Then each engine counts its own held-back processes in its need
    assert status["engine1"]["why"]["held_back"] == 5
    assert status["engine1"]["need"] == 3  # ceil(5 / 2)
    assert status["engine3"]["why"]["held_back"] == 3
    assert status["engine3"]["need"] == 1
    assert status["engine2"]["why"]["held_back"] == 0
    assert status["engine2"]["need"] == 1  # one spare slot
    assert system_status(store) == {
        "state": "SYSTEM_BOOTING",
        "system_boot": False,
        "boot_init_pending": False,
        "held_back": 8,
    }


def test_held_back_processes_count_only_while_booting(engines: EngineRegistry) -> None:
    # Given leftover UNSCHEDULED_PENDING processes on an OK dispatcher
    store = MemoryStore()
    store.set_pd_state(ProcessDispatcherState.OK)
    store.set_initialized()
    put(store, "a0", S.UNSCHEDULED_PENDING)
    # Then they are not part of any need (legacy)
    status = engine_statuses(store, engines)["engine1"]
    assert (status["why"]["held_back"], status["need"]) == (0, 1)  # base_need


def test_queued_and_running_processes_nodes_and_retire_first_order(
    engines: EngineRegistry,
) -> None:
    store = MemoryStore()
    # Given engine1 with two queued processes and two nodes running one process
    put(store, "q1", S.WAITING)
    put(store, "q2", S.REQUESTED)
    store.enqueue("q1", 0)
    store.enqueue("q2", 0)
    put(store, "r1", S.RUNNING)
    agent(store, "ee1", "node1", "engine1", "r1", state_time=10.0)
    agent(store, "ee2", "node2", "engine1", state_time=20.0)
    agent(store, "ee3", "node3", "engine1", state_time=30.0)
    agent(store, "ee4", "node4", "engine1", state_time=40.0)
    retired = store.get_resource("ee4")
    assert retired is not None
    retired.state = ExecutionResourceState.DISABLED
    store.update_resource(retired)
    store.add_vm(VM("node2", "engine1", "default", state="running"))
    # When the status is computed
    status = engine_statuses(store, engines, lambda engine_id: "local")["engine1"]
    # Then the need and the facts behind it
    assert status["need"] == 2  # ceil(3 processes / 2 slots)
    assert status["why"] == {
        "base_need": 1,
        "queued": 2,
        "running": 1,
        "held_back": 0,
        "processes": 3,
        "spare_slots": 0,
        "slots": 2,
        "replicas": 1,
        "process_need": 2,
        "occupied_nodes": 1,
        "maximum_vms": None,
        "capped": False,
    }
    assert status["nodes"] == {
        "node1": "announced",
        "node2": "running",
        "node3": "announced",
        "node4": "retiring",
    }
    assert status["nodes_by_state"] == {
        "announced": ["node1", "node3"],
        "retiring": ["node4"],
        "running": ["node2"],
    }
    # idle nodes retire newest first; a retiring one is not listed again
    assert status["idle_nodes"] == ["node2", "node3"]
    assert status["retire_first"] == ["node3", "node2"]
    assert (status["driver"], status["provisioned"]) == ("local", True)
    assert status["config"]["slots"] == 2


def test_maximum_vms_caps_the_need_and_says_so(engines: EngineRegistry) -> None:
    store = MemoryStore()
    for index in range(20):
        put(store, f"p{index}", S.REQUESTED, "engine2")
        store.enqueue(f"p{index}", 0)
    status = engine_statuses(store, engines)["engine2"]
    assert status["why"]["process_need"] == 6  # ceil((20 + 1) / 4)
    assert (status["need"], status["why"]["capped"]) == (2, True)


def test_on_a_static_site_the_need_is_informational(engines: EngineRegistry) -> None:
    store = MemoryStore()
    status = engine_statuses(store, engines, lambda engine_id: "static")["engine1"]
    assert (status["need"], status["driver"], status["provisioned"]) == (1, "static", False)

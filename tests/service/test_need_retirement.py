"""Scale-down retirement across successive drops of an engine's need, and across terms.

Found by the end-to-end neediness scenario: in a static deployment a retired node stays listed (its
agents ``DISABLED``) until it is removed, and must not be chosen again. A new
leadership term (a restart, another instance taking over) does not remember the
need registered before: it compares with the provisioned nodes still running.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.model import VM, Node, Resource
from dispatcher.needs import EngineNeed, NeedRegistrar, NeedRegistration, RecordingNeedSink
from dispatcher.provisioner.base import VMState
from dispatcher.store.memory import MemoryStore
from pdcommon import procfs
from pdcommon.states import ExecutionResourceState
from tests.e2e.test_local_pool import Pool, pool_settings
from tests.e2e.test_real_agents import wait_for


def test_a_node_already_retired_is_not_retired_again() -> None:
    # Given three empty engine1 nodes (n3 the newest) and a registered need of 3
    store = MemoryStore()
    for index in (1, 2, 3):
        store.add_node(Node(f"n{index}", "pd_domain_engine1", state_time=float(index)))
        store.add_resource(
            Resource(f"n{index}_r", f"n{index}", 4, properties={"engine": "engine1"})
        )
    sink = RecordingNeedSink()
    registrar = NeedRegistrar(store, sink)
    nodes = {node.node_id: node for node in store.list_nodes()}

    def report(need: int) -> None:
        resources = {r.resource_id: r for r in store.list_resources()}
        empty = frozenset(nodes)  # a retired node stays listed until it is removed
        registrar.report(
            {"engine1": EngineNeed("engine1", need, 0, frozenset(), empty)}, resources, nodes
        )

    report(3)
    # When the need drops to 2, then to 1
    report(2)
    report(1)
    # Then each scale-down retires a different node, newest first
    assert [(r.need, r.retirable_nodes) for r in sink.registrations] == [
        (3, []),
        (2, ["n3"]),
        (1, ["n2"]),
    ]
    states = {r.node_id: r.state for r in store.list_resources()}
    assert states == {
        "n1": ExecutionResourceState.OK,
        "n2": ExecutionResourceState.DISABLED,
        "n3": ExecutionResourceState.DISABLED,
    }


def _provisioned(store: MemoryStore, node_id: str, created: float, *, busy: bool = False) -> None:
    """A running engine1 node the provisioner launched, with one agent."""
    store.add_vm(VM(node_id, "engine1", "default", state=VMState.RUNNING, requested_at=created))
    store.add_node(Node(node_id, "pd_domain_engine1", state_time=created))
    assigned = [("p-" + node_id, 0)] if busy else []
    store.add_resource(
        Resource(f"{node_id}_r", node_id, 4, assigned=assigned, properties={"engine": "engine1"})
    )


def test_a_new_term_retires_the_provisioned_nodes_beyond_the_need() -> None:
    # Given three running provisioned nodes (n1 busy) and a static node, left by a
    # previous leader whose need was 4; the need is now 1 (n1's process)
    store = MemoryStore()
    for index in (1, 2, 3):
        _provisioned(store, f"n{index}", float(index), busy=index == 1)
    store.add_node(Node("static", "pd_domain_engine1", state_time=9.0))
    store.add_resource(Resource("static_r", "static", 4, properties={"engine": "engine1"}))
    sink = RecordingNeedSink()
    registrar = NeedRegistrar(store, sink)
    registrar.reset()  # a new leadership term
    resources = {r.resource_id: r for r in store.list_resources()}
    nodes = {node.node_id: node for node in store.list_nodes()}
    need = EngineNeed("engine1", 1, 1, frozenset({"n1"}), frozenset({"n2", "n3", "static"}))
    # When the term's first pass reports the need
    registrar.report({"engine1": need}, resources, nodes)
    # Then the idle provisioned nodes are named retirable, newest first, and disabled;
    # the busy one and the static one are left alone
    assert [(r.need, r.retirable_nodes) for r in sink.registrations] == [(1, ["n3", "n2"])]
    states = {r.node_id: r.state for r in store.list_resources()}
    assert states == {
        "n1": ExecutionResourceState.OK,
        "n2": ExecutionResourceState.DISABLED,
        "n3": ExecutionResourceState.DISABLED,
        "static": ExecutionResourceState.OK,
    }
    # And the next term does not count the nodes already retiring
    registrar.reset()
    resources = {r.resource_id: r for r in store.list_resources()}
    registrar.report({"engine1": need}, resources, nodes)
    assert sink.registrations[-1] == NeedRegistration("engine1", 1, [])


@pytest.mark.supervisord
@pytest.mark.slow
def test_a_restart_with_a_lower_base_need_retires_the_idle_local_nodes(tmp_path: Path) -> None:
    # Given a local pool kept at base_need 2, with no work
    pool = Pool(tmp_path, base_need=2)
    try:
        pool.start()
        wait_for(lambda: len(pool.running_vms()) == 2, 60, "two nodes at base_need")
        pids = [pid for vm in pool.vms().values() for pid in vm["properties"]["pids"]]
        assert len(pids) == 2 and all(procfs.pid_alive(pid) for pid in pids)
        # When the dispatcher restarts with base_need 0
        pool.stop()
        pool.settings = pool_settings(tmp_path, str(pool.settings.dashi.sysname), 0)
        pool.start()
        # Then both idle nodes are retired and their agents stopped
        wait_for(lambda: pool.running_vms() == [], 60, "idle nodes retired")
        wait_for(lambda: not any(procfs.pid_alive(pid) for pid in pids), 30, "agents stopped")
        assert {vm["state"] for vm in pool.vms().values()} <= {"terminating", "terminated"}
    finally:
        pool.stop()
        pool.destroy_all()

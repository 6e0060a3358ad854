"""Scale-down retirement across successive drops of an engine's need.

Found by scenario 70: in a static deployment a retired node stays listed (its
agents ``DISABLED``) until it is removed, and must not be chosen again.
"""

from __future__ import annotations

from dispatcher.model import Node, Resource
from dispatcher.needs import EngineNeed, NeedRegistrar, RecordingNeedSink
from dispatcher.states import ExecutionResourceState
from dispatcher.store.memory import MemoryStore


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

"""The scale-down grace: a node is retired only once it has been unneeded that long.

The registered need is the highest need computed during the engine's
``scale_down_grace`` (its provisioner site's), so a burst of short processes
does not start and stop nodes every few seconds; a rise is registered at once.
"""

from __future__ import annotations

import pytest

from dispatcher.model import VM, Node, Resource
from dispatcher.needs import EngineNeed, NeedRegistrar, RecordingNeedSink, held_need
from dispatcher.provisioner.base import VMState
from dispatcher.store.memory import MemoryStore
from pdcommon.errors import ConfigError
from pdcommon.settings import load_settings
from pdcommon.states import ExecutionResourceState
from tests.placement.test_matchmaker import (
    NOW,
    RUN_TYPE,
    FakeClock,
    add_resource,
    make_engines,
    queue,
)
from tests.support.wiring import make_matchmaker

GRACE = 30.0


@pytest.mark.parametrize(
    ("samples", "now", "grace", "expected"),
    [
        # no grace: the last need, at once
        ([(0.0, 5), (1.0, 2)], 1.0, 0.0, (2, [(1.0, 2)], None)),
        # a drop within the grace: the earlier, higher need holds until 1 + 30
        ([(0.0, 5), (1.0, 2)], 20.0, GRACE, (5, [(0.0, 5), (1.0, 2)], 31.0)),
        # the drop has lasted the grace: registered
        ([(0.0, 5), (1.0, 2)], 31.0, GRACE, (2, [(1.0, 2)], None)),
        # 5 was needed until 10: it holds until 10 + 30, then the highest since
        (
            [(0.0, 5), (10.0, 1), (20.0, 3)],
            35.0,
            GRACE,
            (5, [(0.0, 5), (10.0, 1), (20.0, 3)], 40.0),
        ),
        ([(0.0, 5), (10.0, 1), (20.0, 3)], 45.0, GRACE, (3, [(10.0, 1), (20.0, 3)], 50.0)),
        ([(0.0, 5), (10.0, 1), (20.0, 3)], 50.0, GRACE, (3, [(20.0, 3)], None)),
        # a rise is registered at once
        ([(0.0, 1), (5.0, 4)], 5.0, GRACE, (4, [(0.0, 1), (5.0, 4)], 35.0)),
    ],
)
def test_the_held_need_is_the_highest_of_the_grace_window(
    samples: list[tuple[float, int]],
    now: float,
    grace: float,
    expected: tuple[int, list[tuple[float, int]], float | None],
) -> None:
    assert held_need(samples, now, grace) == expected


def _nodes(store: MemoryStore, count: int, *, vms: bool = False) -> None:
    """``count`` empty engine1 nodes n1..n<count> (the last the newest)."""
    for index in range(1, count + 1):
        node_id = f"n{index}"
        if vms:
            store.add_vm(
                VM(node_id, "engine1", "default", state=VMState.RUNNING, requested_at=index)
            )
        store.add_node(Node(node_id, "pd_domain_engine1", state_time=float(index)))
        store.add_resource(Resource(f"{node_id}_r", node_id, 4, properties={"engine": "engine1"}))


class Reporter:
    """A registrar with a grace of 30 s on a fake clock, fed needs by hand."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.clock = FakeClock()
        self.sink = RecordingNeedSink()
        self.registrar = NeedRegistrar(
            store, self.sink, grace=lambda engine_id: GRACE, clock=self.clock
        )

    def report(self, need: int, after: float = 0.0) -> None:
        self.clock.now += after
        resources = {r.resource_id: r for r in self.store.list_resources()}
        nodes = {node.node_id: node for node in self.store.list_nodes()}
        empty = frozenset(n for n in nodes if not any(r.assigned for r in resources.values()))
        self.registrar.report(
            {"engine1": EngineNeed("engine1", need, need, frozenset(), empty)}, resources, nodes
        )

    def registered(self) -> list[tuple[int, list[str]]]:
        return [(r.need, r.retirable_nodes) for r in self.sink.registrations]

    def disabled(self) -> set[str]:
        return {
            r.node_id
            for r in self.store.list_resources()
            if r.state == ExecutionResourceState.DISABLED
        }


def test_a_node_unneeded_for_less_than_the_grace_is_kept_then_retired() -> None:
    # Given three empty nodes and a registered need of 3
    store = MemoryStore()
    _nodes(store, 3)
    reporter = Reporter(store)
    reporter.report(3)
    # When the need drops to 1 and stays there for less than the grace
    reporter.report(1, after=1)
    reporter.report(1, after=GRACE - 1)
    # Then nothing is retired: the nodes can still take work
    assert reporter.registered() == [(3, [])]
    assert reporter.disabled() == set()
    assert reporter.registrar.next_due() == NOW + 1 + GRACE
    # When the grace has passed since the drop
    reporter.report(1, after=1)
    # Then the two newest nodes are retired (and disabled) in one scale-down
    assert reporter.registered() == [(3, []), (1, ["n3", "n2"])]
    assert reporter.disabled() == {"n2", "n3"}
    assert reporter.registrar.next_due() is None


def test_a_need_that_rises_again_within_the_grace_keeps_the_nodes() -> None:
    # Given three empty nodes and a registered need of 3
    store = MemoryStore()
    _nodes(store, 3)
    reporter = Reporter(store)
    reporter.report(3)
    # When the need drops to 0, rises to 2 within the grace, and stays there
    reporter.report(0, after=1)
    reporter.report(2, after=10)
    reporter.report(2, after=GRACE - 11)
    # Then the need of 3 holds until the grace after the drop
    assert reporter.registered() == [(3, [])]
    assert reporter.disabled() == set()
    reporter.report(2, after=1)
    # And then only the node beyond 2 is retired: the rise kept the others
    assert reporter.registered() == [(3, []), (2, ["n3"])]
    assert reporter.disabled() == {"n3"}


def test_a_rise_is_registered_at_once() -> None:
    store = MemoryStore()
    reporter = Reporter(store)
    reporter.report(1)
    reporter.report(0, after=1)
    reporter.report(4, after=1)
    assert reporter.registered() == [(1, []), (4, [])]


def test_a_new_term_keeps_the_running_nodes_for_the_grace_then_retires_the_idle_ones() -> None:
    # Given three running provisioned nodes and a need of 1 at a term's start
    store = MemoryStore()
    _nodes(store, 3, vms=True)
    reporter = Reporter(store)
    reporter.registrar.reset()
    reporter.report(1)
    # Then the nodes found running are kept for the grace (a restart mid-burst)
    assert reporter.registered() == [(3, [])]
    assert reporter.disabled() == set()
    # When the grace has passed
    reporter.report(1, after=GRACE)
    # Then the idle nodes beyond the need are retired, newest first
    assert reporter.registered() == [(3, []), (1, ["n3", "n2"])]
    assert reporter.disabled() == {"n2", "n3"}


def test_without_a_grace_a_new_term_retires_at_once() -> None:
    store = MemoryStore()
    _nodes(store, 3, vms=True)
    sink = RecordingNeedSink()
    registrar = NeedRegistrar(store, sink, grace=lambda engine_id: 0.0)
    resources = {r.resource_id: r for r in store.list_resources()}
    nodes = {node.node_id: node for node in store.list_nodes()}
    empty = frozenset(nodes)
    registrar.report({"engine1": EngineNeed("engine1", 1, 0, frozenset(), empty)}, resources, nodes)
    assert [(r.need, r.retirable_nodes) for r in sink.registrations] == [(1, ["n3", "n2"])]


def test_the_matchmaker_reports_a_drop_when_the_grace_ends_without_any_other_change() -> None:
    from dispatcher.messaging import RecordingMessenger

    # Given a matchmaker whose registrar holds needs for 30 s, and two queued
    # engine1 processes (1 slot per node): a need of 2
    store = MemoryStore()
    clock = FakeClock()
    sink = RecordingNeedSink()
    registrar = NeedRegistrar(store, sink, grace=lambda engine_id: GRACE, clock=clock)
    matchmaker = make_matchmaker(
        store,
        RecordingMessenger(),
        make_engines(),
        run_type=RUN_TYPE,
        registrar=registrar,
        clock=clock,
    )
    matchmaker.initialize()
    queue(store, "p1")
    queue(store, "p2")
    matchmaker.run_once()
    assert sink.current("engine1") == 2
    # When a node arrives and the queue empties (the work went elsewhere)
    add_resource(store, "r1", "n1")
    store.remove_queued("p1", 0)
    store.remove_queued("p2", 0)
    clock.now += 1
    matchmaker.run_once()
    # Then the need of 2 is held, and the loop knows when to look again
    assert sink.current("engine1") == 2
    assert matchmaker.next_deadline() <= NOW + 1 + GRACE
    clock.now += GRACE - 1
    matchmaker.run_once(look=False)
    assert sink.current("engine1") == 2
    # When the grace ends, with no store change at all
    clock.now += 1
    matchmaker.run_once(look=False)
    # Then the pass reports the lower need, retiring the idle node
    assert sink.for_engine("engine1")[-1].need == 0
    assert sink.for_engine("engine1")[-1].retirable_nodes == ["n1"]


def test_each_driver_has_its_own_grace_and_sites_can_set_it() -> None:
    local = load_settings(environ={"PD_STATE_DIR": "/nonexistent"})
    assert local.provisioner.scale_down_grace(None) == 30.0
    static = load_settings(
        environ={"PD_STATE_DIR": "/nonexistent"}, overrides={"provisioner.driver": "static"}
    )
    assert static.provisioner.scale_down_grace(None) == 0.0
    configured = load_settings(
        environ={"PD_STATE_DIR": "/nonexistent"},
        overrides={
            "provisioner.sites": {
                "default": {"driver": "local", "scale_down_grace": 5},
                "cloud": {"driver": "libcloud", "provider": "dummy", "image": "i", "size": "s"},
            }
        },
    )
    assert configured.provisioner.scale_down_grace("default") == 5.0
    assert configured.provisioner.scale_down_grace("cloud") == 600.0


@pytest.mark.parametrize("grace", [-1, "soon", [30]])
def test_a_negative_or_non_numeric_grace_is_a_configuration_error_naming_it(grace: object) -> None:
    # Given a site whose scale_down_grace is not a number of seconds >= 0
    with pytest.raises(ConfigError) as info:
        load_settings(
            environ={"PD_STATE_DIR": "/nonexistent"},
            overrides={
                "provisioner.sites": {"default": {"driver": "local", "scale_down_grace": grace}}
            },
        )
    # Then the error names the key
    assert "scale_down_grace" in str(info.value)

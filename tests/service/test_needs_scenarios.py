"""Service-level end-to-end needs scenarios: needs follow waiting processes, and retirement.

The dispatcher's matchmaker reports each engine's need to a recording sink (the
provisioner's seat) after every complete pass; the legacy "reconfigure with
``preserve_n``" is a :class:`~dispatcher.needs.NeedRegistration` here.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from dispatcher.needs import NeedRegistration, RecordingNeedSink
from tests.service.conftest import DEFINITION, Harness, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture
def sink() -> RecordingNeedSink:
    return RecordingNeedSink()


@pytest.fixture
def pd(harness_factory: Callable[..., Harness], sink: RecordingNeedSink) -> Harness:
    harness = harness_factory(sink=sink)
    harness.define()
    return harness


def test_53_needs_follow_waiting_processes(pd: Harness, sink: RecordingNeedSink) -> None:
    # Given no engine2 nodes: the first pass registers need 0 for engine2
    wait_for(lambda: sink.for_engine("engine2"), what="initial engine2 need")
    assert sink.for_engine("engine2") == [NeedRegistration("engine2", 0, [])]
    # and every engine's base need
    assert {e: sink.current(e) for e in ("engine1", "engine3", "engine4")} == {
        "engine1": 1,
        "engine3": 0,
        "engine4": 1,
    }
    # When three engine2 processes are scheduled, they wait and need one node
    upids = ["proc1", "proc2", "proc3"]
    for upid in upids:
        pd.client.schedule_process(
            upid, DEFINITION, restart_mode="NEVER", execution_engine_id="engine2"
        )
    pd.wait_states(upids, "300-WAITING")
    wait_for(lambda: sink.current("engine2") == 1, what="engine2 need 1")
    # When one is terminated, the need does not change (ceil(2 / 4) is still 1)
    assert pd.client.terminate_process("proc1")["state"] == "700-TERMINATED"
    # When the other two are terminated, the need drops to 0, with nothing to retire
    for upid in ("proc2", "proc3"):
        assert pd.client.terminate_process(upid)["state"] == "700-TERMINATED"
    wait_for(lambda: sink.current("engine2") == 0, what="engine2 need back to 0")
    # Then engine2 saw exactly three registrations: 0, 1, 0 (none after the first
    # termination), and the other engines none beyond the first
    assert sink.for_engine("engine2") == [
        NeedRegistration("engine2", 0, []),
        NeedRegistration("engine2", 1, []),
        NeedRegistration("engine2", 0, []),
    ]
    assert [r.need for r in sink.for_engine("engine1")] == [1]


def test_70_neediness_grows_with_waiting_work_and_retires_empty_nodes(
    pd: Harness, sink: RecordingNeedSink
) -> None:
    # Given 20 processes and no nodes: all wait, and engine1 needs 5 nodes of 4 slots
    upids = [f"proc{i}" for i in range(20)]
    for upid in upids:
        pd.client.schedule_process(upid, DEFINITION)
    pd.wait_states(upids, "300-WAITING")
    wait_for(lambda: sink.current("engine1") == 5, what="engine1 need 5")
    # When five nodes with one 4-slot agent each come up, all 20 run
    nodes = [f"node{i}" for i in range(1, 6)]
    for node in nodes:
        pd.add_node(node)
    running = pd.wait_states(upids, "500-RUNNING")
    per_agent: dict[str, int] = {}
    for record in running.values():
        per_agent[record["assigned"]] = per_agent.get(record["assigned"], 0) + 1
    assert sorted(per_agent.values()) == [4] * 5
    # and the need stayed 5 throughout
    assert max(r.need for r in sink.for_engine("engine1")) == 5
    peak = len(sink.for_engine("engine1"))
    # When all are terminated, in random order
    order = list(upids)
    random.Random(70).shuffle(order)
    for upid in order:
        pd.client.terminate_process(upid)
    pd.wait_states(upids, "700-TERMINATED")
    # Then the need drops to base_need 1, with 4 of the 5 nodes retired
    wait_for(lambda: sink.current("engine1") == 1, what="engine1 need back to base_need")
    scale_down = sink.for_engine("engine1")[peak:]
    assert [r.need for r in scale_down] == sorted((r.need for r in scale_down), reverse=True)
    retired = [node for r in scale_down for node in r.retirable_nodes]
    assert len(retired) == len(set(retired)) == 4
    assert set(retired) < set(nodes)
    # and the retired nodes' agents are DISABLED: they never get new work
    states = {r["node_id"]: r["state"] for r in pd.resources().values()}
    assert {node for node, state in states.items() if state == "DISABLED"} == set(retired)
    (kept,) = set(nodes) - set(retired)
    assert states[kept] == "OK"
    # so new work goes to the one node kept
    pd.client.schedule_process("late", DEFINITION)
    assert pd.wait_state("late", "500-RUNNING")["assigned"] == f"{kept}_ee0"

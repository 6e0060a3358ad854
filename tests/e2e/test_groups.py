"""End to end, process groups: real dispatcher, real ``pd-eeagent`` and supervisord,
RabbitMQ. Fifty processes in two labelled groups, listings filtered by the
dispatcher, one group terminated in one call while the other runs on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_real_agents import Cluster, define, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

#: Processes in the first group (web, half front and half back) and the second (batch).
WEB, BATCH = 30, 20
#: Seconds the fifty processes may take to start, or to end.
SETTLE = 120.0


@pytest.fixture
def cluster(tmp_path: Path, amqp_uri: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, amqp_uri, slots=25)
    try:
        made.add_node("node1", agents=2)
        yield made
    finally:
        made.close()


def _upids(cluster: Cluster, **selected: object) -> list[str]:
    return [record["upid"] for record in cluster.client.describe_processes(**selected)]


def test_fifty_processes_in_two_groups_filtered_and_one_group_terminated(
    cluster: Cluster,
) -> None:
    # Given 30 web processes in group exp-17 (front and back) and 20 batch ones in exp-18
    define(cluster, "sleeper", "/bin/sleep", "600")
    web = [f"web-{i:02d}" for i in range(WEB)]
    batch = [f"batch-{i:02d}" for i in range(BATCH)]
    for i, upid in enumerate(web):
        tier = "front" if i % 2 == 0 else "back"
        cluster.client.schedule_process(
            upid, "sleeper", group="exp-17", labels={"app": "web", "tier": tier}
        )
    for upid in batch:
        cluster.client.schedule_process(upid, "sleeper", group="exp-18", labels={"app": "batch"})
    # When all of them run on the real agents
    wait_for(
        lambda: len(_upids(cluster, states=["RUNNING"])) == WEB + BATCH,
        SETTLE,
        "all fifty processes running",
    )

    # Then the dispatcher's filters select each set, in creation order
    assert _upids(cluster, group="exp-17") == web
    assert _upids(cluster, group="exp-18", states=["500-RUNNING"]) == batch
    assert _upids(cluster, label_selector="app=web,tier=front") == web[0::2]
    assert _upids(cluster, label_selector="app=web,tier notin (front)") == web[1::2]
    assert _upids(cluster, label_selector="app in (batch),!tier") == batch
    assert _upids(cluster, group="exp-18", label_selector="tier") == []
    assert _upids(cluster, upid_prefix="batch-1") == batch[10:]
    records = cluster.client.describe_processes(group="exp-17", label_selector="tier=back")
    assert all(r["labels"] == {"app": "web", "tier": "back"} for r in records)

    # When group exp-17 is terminated in one call
    result = cluster.client.terminate_processes(group="exp-17")
    # Then the call says it terminated exactly that group
    assert result == {"terminated": web, "already_ended": [], "failed": []}
    # And the agents stop every one of them
    wait_for(
        lambda: _upids(cluster, group="exp-17", states=["TERMINATED"]) == web,
        SETTLE,
        "group exp-17 terminated",
    )
    # And the other group is untouched: still running, still round 0
    others = cluster.client.describe_processes(group="exp-18")
    assert [(r["upid"], r["state"], r["round"]) for r in others] == [
        (upid, "500-RUNNING", 0) for upid in batch
    ]
    # And a second call finds the group ended and changes nothing
    again = cluster.client.terminate_processes(group="exp-17")
    assert again == {"terminated": [], "already_ended": web, "failed": []}
    assert _upids(cluster, group="exp-18", states=["RUNNING"]) == batch


def test_a_groups_time_to_live_terminates_its_running_processes_for_good(
    cluster: Cluster,
) -> None:
    # Given three processes that restart on any end, in a group, and one outside it
    define(cluster, "sleeper", "/bin/sleep", "600")
    doomed = [f"doomed-{i}" for i in range(3)]
    for upid in doomed:
        cluster.client.schedule_process(upid, "sleeper", group="exp-19", restart_mode="ALWAYS")
    cluster.client.schedule_process("kept", "sleeper", group="exp-20", restart_mode="ALWAYS")
    wait_for(
        lambda: len(_upids(cluster, states=["RUNNING"])) == 4, SETTLE, "four processes running"
    )
    # When the group gets a time to live of one second
    cluster.client.set_group_ttl("exp-19", 1)
    # Then its processes end TERMINATED with the reason, on the real agents
    for upid in doomed:
        record = cluster.wait_state(upid, "700-TERMINATED", timeout=SETTLE)
        assert record["reason"] == "group time to live exceeded"
    # And they are not restarted (still round 0), while the other group runs on
    records = cluster.client.describe_processes(group="exp-19")
    assert [(r["state"], r["round"]) for r in records] == [("700-TERMINATED", 0)] * 3
    assert cluster.state("kept") == "500-RUNNING"

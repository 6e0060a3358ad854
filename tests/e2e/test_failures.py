"""End to end, why a process failed: real dispatcher, real ``pd-eeagent`` and
supervisord, RabbitMQ. A missing executable, an exit with stderr, a kill by a
signal, a crash loop the restart policy ends, a max-runtime kill, and the output
and events of an ended process read after its agent is gone."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_real_agents import Cluster, define, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

#: A small restart policy: 1 s, 2 s, 4 s ... and FAILED at the 4th failure in a minute.
POLICY = {"initial_delay": 1, "max_delay": 8, "failure_limit": 4, "interval": 60, "jitter": 0}


@pytest.fixture
def cluster(tmp_path: Path, amqp_uri: str) -> Iterator[Cluster]:
    made = Cluster(
        tmp_path,
        amqp_uri,
        overrides={
            "processdispatcher.restart_policy": POLICY,
            # no legacy throttling: the delays between rounds are the policy's
            "processdispatcher.restart_throttling_config": {},
        },
    )
    try:
        made.add_node("node1")
        yield made
    finally:
        made.close()


def test_a_missing_executable_says_it_cannot_start(cluster: Cluster) -> None:
    define(cluster, "ghost", "/usr/bin/does-not-exist")
    cluster.client.schedule_process("ghost-1", "ghost", restart_mode="NEVER")
    record = cluster.wait_state("ghost-1", "850-FAILED")
    assert record["reason"] is not None and record["reason"].startswith("cannot start")
    assert record["exit_code"] is None
    events = cluster.client.describe_process_events("ghost-1")
    assert [e["state"] for e in events][-1] == "850-FAILED"
    assert events[-1]["agent"] == "node1_agent0" and events[-1]["node"] == "node1"


def test_an_exit_3_keeps_code_reason_and_stderr_after_the_agent_is_gone(
    cluster: Cluster,
) -> None:
    # Given a process that writes to stderr and exits 3
    define(cluster, "bad", "/bin/sh", "-c", "echo starting; echo 'bad config: x' >&2; exit 3")
    cluster.client.schedule_process("bad-1", "bad", restart_mode="NEVER")
    # Then it is FAILED with its exit code and the agent's reason
    record = cluster.wait_state("bad-1", "850-FAILED")
    assert (record["exit_code"], record["reason"]) == (3, "exited with code 3")
    # (it may end before any heartbeat shows it running: the agent says when it began)
    assert record["started_at"] is not None and record["ended_at"] is not None
    assert record["started_at"] <= record["ended_at"]
    # When its agent is stopped
    for agent in cluster.agents.values():
        agent.stop()
    # Then its output and events are still there
    wait_for(
        lambda: "bad config: x" in cluster.client.get_process_logs("bad-1", stream="stderr"),
        what="kept stderr",
    )
    assert "starting" in cluster.client.get_process_logs("bad-1")
    events = cluster.client.describe_process_events("bad-1")
    states = [e["state"] for e in events]
    assert states[0] == "200-REQUESTED" and states[-1] == "850-FAILED"
    assert events[-1]["exit_code"] == 3
    assert "bad config: x" in events[-1]["output"]["stderr"]


def test_a_kill_by_a_signal_is_said(cluster: Cluster) -> None:
    define(cluster, "killed", "/bin/sh", "-c", "sleep 0.5; kill -KILL $$")
    cluster.client.schedule_process("killed-1", "killed", restart_mode="NEVER")
    record = cluster.wait_state("killed-1", "850-FAILED")
    assert record["reason"] == "killed by signal SIGKILL (9)"
    assert (record["signal"], record["exit_code"]) == (9, None)
    # And its last event says the same
    last = cluster.client.describe_process_events("killed-1")[-1]
    assert (last["state"], last["signal"], last["reason"]) == (
        "850-FAILED",
        9,
        "killed by signal SIGKILL (9)",
    )


def test_a_crash_loop_backs_off_then_ends_failed_at_the_limit(cluster: Cluster) -> None:
    # Given a process that fails at once, with the default restart mode
    define(cluster, "crash", "/bin/sh", "-c", "sleep 0.2; echo crashing >&2; exit 1")
    cluster.client.schedule_process("crash-1", "crash")
    # Then after 4 failures it is FAILED with the limit's reason
    record = cluster.wait_state("crash-1", "850-FAILED", timeout=60)
    assert record["reason"] == "restart limit reached: 4 failures in 60 s"
    assert (record["restarts"], record["round"], record["exit_code"]) == (3, 3, 1)
    assert record["effective_restart_mode"] == "ABNORMAL"
    # And the rounds started further and further apart: at least 1 s, 2 s, 4 s of
    # backoff after each end (a round never starts before its next_restart_at)
    starts = record["start_times"]
    assert len(starts) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert [gap >= delay for gap, delay in zip(gaps, (1, 2, 4), strict=True)] == [True] * 3
    # And every round's end is in its events
    events = cluster.client.describe_process_events("crash-1", limit=100)
    ended = [e for e in events if e["state"] == "850-FAILED"]
    assert [(e["round"], e["exit_code"]) for e in ended] == [(0, 1), (1, 1), (2, 1), (3, 1)]
    assert "crashing" in ended[0]["output"]["stderr"]
    restarts = [e["reason"] for e in events if e["state"] == "250-DIED_REQUESTED"]
    assert restarts == [f"restarting by restart mode ABNORMAL in {d} s" for d in (1, 2, 4)]


def test_a_round_past_its_max_runtime_is_terminated_and_not_restarted(
    cluster: Cluster,
) -> None:
    define(cluster, "long", "/bin/sleep", "600")
    cluster.client.schedule_process("long-1", "long", restart_mode="ALWAYS", max_runtime_seconds=1)
    record = cluster.wait_state("long-1", "700-TERMINATED")
    assert record["reason"] is not None
    assert record["reason"].startswith("max runtime exceeded: ran ")
    assert record["reason"].endswith("(limit 1 s)")
    assert (record["round"], record["restarts"]) == (0, 0)


def test_a_round_past_its_definitions_max_runtime_is_terminated_and_not_restarted(
    cluster: Cluster,
) -> None:
    # Given a definition whose processes may run 1 s, and a process scheduled
    # without a limit of its own, that would restart on any end
    cluster.client.create_definition(
        "capped", "supd", {"exec": "/bin/sleep", "argv": ["600"]}, max_runtime_seconds=1
    )
    cluster.client.schedule_process("capped-1", "capped", restart_mode="ALWAYS")
    # Then it is terminated with the reason, at round 0, not restarted
    record = cluster.wait_state("capped-1", "700-TERMINATED")
    assert record["max_runtime_seconds"] == 1
    assert record["reason"] is not None
    assert record["reason"].startswith("max runtime exceeded: ran ")
    assert record["reason"].endswith("(limit 1 s)")
    assert (record["round"], record["restarts"]) == (0, 0)
    states = [e["state"] for e in cluster.client.describe_process_events("capped-1", limit=100)]
    assert "500-RUNNING" in states and states[-1] == "700-TERMINATED"

"""Fault: two ``pd-dispatcher`` daemons on one PostgreSQL and one broker; the leader is killed.

Both daemons serve RPCs; only the one holding the advisory lock matchmakes. While
clients schedule work through both, the leader is killed with SIGKILL. PostgreSQL
drops its session (and its lock) when the kernel closes the socket, the other daemon
takes the lock within a poll interval and places the rest. No process is placed twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.faultkit import (
    DEFINITION,
    EXECUTABLE,
    SLACK_HEARTBEATS,
    Agents,
    FaultDaemon,
    Load,
    assert_started_once_each,
    figure,
    running_count,
    wait_for,
)

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

PROCESSES = 300


def test_the_other_dispatcher_takes_over_matchmaking_when_the_leader_is_killed(
    tmp_path: Path, amqp_uri: str, postgres_url: str, record_property: Callable[..., None]
) -> None:
    sysname = f"lead{uuid.uuid4().hex[:8]}"
    first, second = (
        FaultDaemon(
            tmp_path / name,
            amqp_uri,
            postgres_url,
            sysname=sysname,
            slots=40,
            heartbeats=SLACK_HEARTBEATS,
        )
        for name in ("a", "b")
    )
    agents = Agents(first.broker())
    load: Load | None = None
    try:
        # Given two daemons on one database and broker, the first one leading
        first.start()
        wait_for(first.leads, what="the first daemon leading")
        second.start()
        with first.client("setup") as setup:
            setup.create_definition(DEFINITION, "supd", EXECUTABLE)
            for node in range(4):
                agents.add(setup, f"node{node}", 2)
        assert not second.leads()
        # When clients schedule 300 processes through both
        upids = [f"p{i:03d}" for i in range(PROCESSES)]
        load = Load(lambda name: first.client(name, timeout=5), upids, threads=6).start()
        with first.client("check", timeout=30) as check:
            wait_for(
                lambda: running_count(check, set(upids)) >= PROCESSES // 4,
                what="a quarter running",
                interval=0.2,
            )
        # and the leader is killed with SIGKILL
        acked_at_kill = load.count()
        killed_at = time.monotonic()
        first.kill()
        # and a process is scheduled after the kill
        with second.client("sentinel", timeout=30) as sentinel:
            wait_for(
                lambda: sentinel.schedule_process("after-kill", DEFINITION, restart_mode="NEVER"),
                what="the sentinel scheduled",
            )
            # Then the other daemon leads and places it, and the rest
            wait_for(second.leads, timeout=30, what="the second daemon leading", interval=0.05)
            leading_at = time.monotonic()
            wait_for(
                lambda: sentinel.describe_process("after-kill")["state"] == "500-RUNNING",
                timeout=30,
                what="the sentinel placed by the new leader",
                interval=0.05,
            )
            first_placement_at = time.monotonic()
        load.join(timeout=120)
        upids.append("after-kill")
        with second.client("check", timeout=30) as check:
            wait_for(
                lambda: running_count(check, set(upids)) == len(upids),
                timeout=90,
                what="every process running",
                interval=0.5,
            )
            all_running_at = time.monotonic()
            # and nothing was placed twice
            assert load.acked == set(upids) - {"after-kill"}
            assert_started_once_each(agents, set(upids))
            assigned = [
                entry[1]
                for resource in check.dump()["resources"].values()
                for entry in resource["assigned"]
            ]
            assert sorted(assigned) == sorted(upids)
        print(
            f"acknowledged at the kill: {acked_at_kill}; failed calls retried: {dict(load.failures)}; repeats: {agents.repeats()}"
        )
        figure(record_property, "leader_kill.kill_to_new_leader", leading_at - killed_at)
        figure(
            record_property,
            "leader_kill.kill_to_first_new_placement",
            first_placement_at - killed_at,
        )
        figure(record_property, "leader_kill.kill_to_all_running", all_running_at - killed_at)
    finally:
        if load is not None:
            load.stop()
        agents.stop()
        first.kill()
        second.kill()

"""Fault: ``kill -9`` of the dispatcher while 1,000 ``schedule_process`` calls are in flight.

A real ``pd-dispatcher`` on RabbitMQ and PostgreSQL, ten recording agents with room
for every process, eight client threads. The daemon is killed once a third of the
calls are acknowledged and started again a second later. Clients retry each call
until it is acknowledged (``schedule_process`` is idempotent). Every process must
run exactly once: started once, on one agent, never lost.
"""

from __future__ import annotations

import time
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

PROCESSES = 1000
CLIENT_THREADS = 8
#: Ten agents of 120 slots: room for every process.
NODES, AGENTS_PER_NODE, SLOTS = 5, 2, 120


def test_a_killed_dispatcher_restarts_and_runs_every_acknowledged_process_once(
    tmp_path: Path, amqp_uri: str, postgres_url: str, record_property: Callable[..., None]
) -> None:
    # Given a dispatcher with ten agents and room for 1,000 processes
    daemon = FaultDaemon(
        tmp_path / "pd", amqp_uri, postgres_url, slots=SLOTS, heartbeats=SLACK_HEARTBEATS
    )
    agents = Agents(daemon.broker())
    load: Load | None = None
    try:
        daemon.start()
        with daemon.client("setup") as setup:
            setup.create_definition(DEFINITION, "supd", EXECUTABLE)
            for node in range(NODES):
                agents.add(setup, f"node{node}", AGENTS_PER_NODE)
        upids = [f"p{i:04d}" for i in range(PROCESSES)]
        # When eight clients schedule 1,000 processes
        load = Load(
            lambda name: daemon.client(name, timeout=5), upids, threads=CLIENT_THREADS
        ).start()
        wait_for(lambda: load.count() >= PROCESSES // 3, what="a third acknowledged")
        # and the dispatcher is killed with SIGKILL in the middle of it
        acked_before = load.count()
        killed_at = time.monotonic()
        daemon.kill()
        time.sleep(1.0)
        # and started again
        restarted_at = time.monotonic()
        daemon.start()
        ready_at = time.monotonic()
        load.join(timeout=120)
        all_acked_at = load.last_ack()
        # Then every call is acknowledged in the end, and every process runs
        assert load.acked == set(upids)
        with daemon.client("check", timeout=30) as check:
            wait_for(
                lambda: running_count(check, set(upids)) == PROCESSES,
                timeout=120,
                what="all 1,000 running",
                interval=0.5,
            )
            all_running_at = time.monotonic()
            # exactly once: one start each, on one agent, one slot each
            assert_started_once_each(agents, set(upids))
            assigned = [
                entry[1]
                for resource in check.dump()["resources"].values()
                for entry in resource["assigned"]
            ]
            assert sorted(assigned) == sorted(upids)
        first_ack = load.first_ack_after(restarted_at)
        assert first_ack is not None
        print(
            f"acknowledged before the kill: {acked_before}; failed calls retried: "
            f"{dict(load.failures)}; repeated launch messages ignored: {agents.repeats()}"
        )
        figure(record_property, "dispatcher_kill.restart_to_ready", ready_at - restarted_at)
        figure(record_property, "dispatcher_kill.kill_to_first_ack", first_ack - killed_at)
        figure(
            record_property, "dispatcher_kill.kill_to_all_acknowledged", all_acked_at - killed_at
        )
        figure(record_property, "dispatcher_kill.kill_to_all_running", all_running_at - killed_at)
    finally:
        if load is not None:
            load.stop()
        agents.stop()
        daemon.kill()

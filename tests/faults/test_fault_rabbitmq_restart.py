"""Fault: RabbitMQ restarts while clients schedule processes.

A real ``pd-dispatcher`` on RabbitMQ and PostgreSQL, four recording agents and six
client threads scheduling 400 processes. A third of the way through, the broker is
stopped and started again (its queues are not durable: they and the messages in
them are gone). Nobody is told: the dispatcher, the agents and the clients reconnect
by themselves, the agents' heartbeats reach the dispatcher again, launches lost with
the broker are re-sent, and every process runs exactly once.

The engine's heartbeat thresholds are longer than the outage: an outage longer than
``heartbeat_missing`` makes every agent MISSING (see docs/operations/reliability.md).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.faultkit import (
    DEFINITION,
    EXECUTABLE,
    Agents,
    FaultDaemon,
    Load,
    assert_started_once_each,
    figure,
    running_count,
    wait_for,
)
from tests.infra import RabbitMQServer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

PROCESSES = 400
#: Thresholds longer than a broker restart (~10 s here).
HEARTBEATS = {"heartbeat_period": 1, "heartbeat_warning": 20, "heartbeat_missing": 40}


def _stamp(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    stamp = dt.datetime.fromisoformat(value)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def test_everyone_reconnects_after_a_rabbitmq_restart_and_nothing_is_lost_or_doubled(
    tmp_path: Path,
    rabbitmq: RabbitMQServer,
    amqp_uri: str,
    postgres_url: str,
    record_property: Callable[..., None],
) -> None:
    daemon = FaultDaemon(tmp_path / "pd", amqp_uri, postgres_url, slots=120, heartbeats=HEARTBEATS)
    agents = Agents(daemon.broker())
    load: Load | None = None
    try:
        # Given a dispatcher with four agents, and clients scheduling 400 processes
        daemon.start()
        with daemon.client("setup") as setup:
            setup.create_definition(DEFINITION, "supd", EXECUTABLE)
            for node in range(2):
                agents.add(setup, f"node{node}", 2)
        upids = [f"p{i:03d}" for i in range(PROCESSES)]
        load = Load(lambda name: daemon.client(name, timeout=5), upids, threads=6).start()
        wait_for(lambda: load.count() >= PROCESSES // 3, what="a third acknowledged")
        # When the broker restarts
        acked_before = load.count()
        down_at = time.monotonic()
        rabbitmq.restart()
        up_at = time.monotonic()
        up_wall = dt.datetime.now(dt.UTC)
        # Then clients are answered again
        first_ack = wait_for(lambda: load.first_ack_after(up_at), what="an acknowledgement")
        # and every agent's heartbeats reach the dispatcher again
        with daemon.client("check", timeout=10) as check:

            def heartbeats_back() -> bool:
                resources = wait_for(lambda: check.dump()["resources"], what="a dump")
                return all(
                    (stamp := _stamp(resources[a.name].get("last_heartbeat"))) is not None
                    and stamp > up_wall
                    for a in agents.all
                )

            wait_for(heartbeats_back, timeout=60, what="heartbeats of every agent")
            heartbeats_at = time.monotonic()
            load.join(timeout=120)
            all_acked_at = load.last_ack()
            # and every process runs, started exactly once
            assert load.acked == set(upids)
            wait_for(
                lambda: running_count(check, set(upids)) == PROCESSES,
                timeout=60,
                what="all 400 running",
                interval=0.5,
            )
            all_running_at = time.monotonic()
            assert_started_once_each(agents, set(upids))
            resources = check.dump()["resources"]
            assert {r["state"] for r in resources.values()} == {"OK"}
            assigned = [e[1] for r in resources.values() for e in r["assigned"]]
            assert sorted(assigned) == sorted(upids)
        # and the daemon lived through it, reconnecting by itself
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert "reconnected" in daemon.logs()
        print(
            f"acknowledged before the restart: {acked_before}; failed calls retried: "
            f"{dict(load.failures)}; repeated launch messages ignored: {agents.repeats()}"
        )
        figure(record_property, "rabbitmq_restart.broker_down", up_at - down_at)
        figure(record_property, "rabbitmq_restart.up_to_first_ack", first_ack - up_at)
        figure(record_property, "rabbitmq_restart.up_to_heartbeats", heartbeats_at - up_at)
        figure(record_property, "rabbitmq_restart.up_to_all_acknowledged", all_acked_at - up_at)
        figure(record_property, "rabbitmq_restart.up_to_all_running", all_running_at - up_at)
    finally:
        if not rabbitmq.running:
            rabbitmq.start()
        if load is not None:
            load.stop()
        agents.stop()
        daemon.kill()

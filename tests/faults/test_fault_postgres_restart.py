"""Fault: PostgreSQL goes away for a few seconds under a running ``pd-dispatcher``.

While the database is down, RPCs that need it fail with a clear error (a
``StoreError`` naming the operation and the database, without credentials) or time
out; the daemon stays up. Once the database is back the daemon recovers by itself:
RPCs succeed, the leadership lock is taken again, the matchmaker places new work and
the doctor still judges agents (a stopped agent becomes MISSING and its process is
rescheduled).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dashi.errors import RemoteError
from pdcommon.errors import DispatcherError
from tests.faults.faultkit import (
    DEFINITION,
    EXECUTABLE,
    Agents,
    FaultDaemon,
    assert_started_once_each,
    figure,
    running_count,
    wait_for,
)
from tests.infra import PostgresServer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.postgres, pytest.mark.slow]

#: Seconds the database stays down (longer than the engine's heartbeat_missing).
OUTAGE = 6.0


def test_the_dispatcher_recovers_by_itself_after_a_postgres_restart(
    tmp_path: Path,
    amqp_uri: str,
    postgres: PostgresServer,
    postgres_url: str,
    record_property: Callable[..., None],
) -> None:
    daemon = FaultDaemon(tmp_path / "pd", amqp_uri, postgres_url, slots=30)
    agents = Agents(daemon.broker())
    try:
        # Given a dispatcher on PostgreSQL with 20 processes running on two agents
        daemon.start()
        with daemon.client("setup", timeout=10) as client:
            client.create_definition(DEFINITION, "supd", EXECUTABLE)
            agents.add(client, "node0", 1)
            agents.add(client, "node1", 1)
            before = {f"p{i:02d}" for i in range(20)}
            for upid in sorted(before):
                client.schedule_process(upid, DEFINITION, restart_mode="ALWAYS")
            wait_for(lambda: running_count(client, before) == 20, what="20 running")
            # When PostgreSQL stops
            postgres.stop()
            down_at = time.monotonic()
            # Then RPCs needing it fail with a clear error (or time out), and the daemon lives
            errors: list[DispatcherError] = []
            while time.monotonic() - down_at < OUTAGE:
                try:
                    client.schedule_process("during", DEFINITION, restart_mode="NEVER")
                except DispatcherError as exc:
                    errors.append(exc)
                time.sleep(0.5)
            assert errors, "an RPC succeeded with the database down"
            remote = [e for e in errors if isinstance(e, RemoteError)]
            for error in remote:
                assert error.exc_type.endswith("StoreError"), error
                assert "failed" in str(error) and "postgres" in str(error).lower(), error
            assert daemon.proc is not None and daemon.proc.poll() is None
            print(f"errors while down: {sorted({type(e).__name__ for e in errors})}")
            print(f"first error: {errors[0]}")
            # When it comes back
            postgres.start()
            up_at = time.monotonic()
            # Then the daemon answers again without an operator
            wait_for(
                lambda: client.schedule_process("after", DEFINITION, restart_mode="NEVER"),
                what="schedule_process answered",
                interval=0.05,
            )
            first_rpc_at = time.monotonic()
            # and the matchmaker places new work
            wait_for(
                lambda: client.describe_process("after")["state"] == "500-RUNNING",
                what="the new process placed",
                interval=0.05,
            )
            placed_at = time.monotonic()
            # (the schedule calls that failed during the outage created nothing)
            assert client.describe_process("during") is None
            everything = before | {"after"}
            wait_for(lambda: running_count(client, everything) == 21, what="all running")
            # and the agents, silent to it while the database was down, are OK again
            wait_for(
                lambda: {r["state"] for r in client.dump()["resources"].values()} == {"OK"},
                what="every agent OK",
            )
            # and nothing was lost or started twice across the outage
            assert_started_once_each(agents, everything)
            # and the doctor still judges agents: one stops, its processes move
            lost = agents.all[0]
            moved = {upid for upid in everything if upid in lost.processes}
            restartable = moved & before
            lost.stop()
            stopped_at = time.monotonic()

            def rescheduled() -> bool:
                records = {p["upid"]: p for p in client.describe_processes()}
                return all(
                    records[u]["state"] == "500-RUNNING" and records[u]["round"] == 1
                    for u in restartable
                )

            wait_for(rescheduled, what="the stopped agent's processes rescheduled")
            rescheduled_at = time.monotonic()
            resource = client.dump()["resources"][lost.name]
            assert resource["state"] == "MISSING"
        figure(record_property, "postgres_restart.up_to_first_rpc", first_rpc_at - up_at)
        figure(record_property, "postgres_restart.up_to_new_placement", placed_at - up_at)
        figure(
            record_property,
            "postgres_restart.agent_stop_to_rescheduled",
            rescheduled_at - stopped_at,
        )
    finally:
        if not postgres.running:
            postgres.start()
        agents.stop()
        daemon.kill()

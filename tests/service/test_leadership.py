"""Two dispatchers on one database and one broker (docs/architecture.md, decision 8).

Both serve RPCs (they compete for the one service queue); only the instance holding
the database's lock runs the matchmaker and the doctor. Work scheduled through both
is placed exactly once, and when the leader stops the other takes over. A
dispatcher of another system (another ``dashi.sysname``) refuses to start on a
database that one system already uses, instead of leading it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from pdcommon.errors import DatabaseOwnerError
from tests.service.conftest import DEFINITION, Harness, make_settings, wait_for
from tests.support.fake_eeagent import FakeEEAgent

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


class Instance:
    """One dispatcher of the pair, counting the requests it serves."""

    def __init__(self, tmp_path: Path, amqp_uri: str, sysname: str, database_url: str) -> None:
        self.settings = make_settings(
            tmp_path, amqp_uri, sysname=sysname, database_url=database_url
        )
        self.service = DispatcherService.build(self.settings)
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()
        inner = self.service.rpc.dispatch

        def counting(
            body: Any, headers: Any, request_id: str | None = None, **options: Any
        ) -> dict[str, Any]:
            op = body.get("op") if isinstance(body, dict) else None
            with self._lock:
                self.served[str(op)] += 1
            return inner(body, headers, request_id, **options)

        self.service.rpc.dispatch = counting  # type: ignore[method-assign]

    @property
    def leads(self) -> bool:
        return self.service.is_leader


@pytest.fixture
def pair(tmp_path: Path, amqp_uri: str, postgres_url: str) -> Iterator[tuple[Instance, Instance]]:
    sysname = f"lead{uuid.uuid4().hex[:8]}"
    first = Instance(tmp_path / "a", amqp_uri, sysname, postgres_url)
    second = Instance(tmp_path / "b", amqp_uri, sysname, postgres_url)
    try:
        yield first, second
    finally:
        second.service.stop()
        first.service.stop()


def matchmaker_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "pd-matchmaker" and t.is_alive())


def placements(agents: list[FakeEEAgent]) -> dict[str, set[str]]:
    """upid → the agents a launch of it (any round) was sent to."""
    where: dict[str, set[str]] = {}
    for agent in agents:
        for launch in agent.ops("launch_process"):
            where.setdefault(launch["u_pid"], set()).add(agent.name)
    return where


def assert_never_placed_twice(harness: Harness, agents: list[FakeEEAgent]) -> None:
    doubled = {upid: names for upid, names in placements(agents).items() if len(names) > 1}
    assert doubled == {}
    resources = harness.resources()
    seen: Counter[str] = Counter()
    for resource in resources.values():
        assert len(resource["assigned"]) <= resource["slot_count"], resource
        seen.update(entry[1] for entry in resource["assigned"])
    assert [upid for upid, count in seen.items() if count > 1] == []
    # every running process is on the agent its record names, and only there
    for record in harness.client.describe_processes():
        if record["state"] == "500-RUNNING":
            holders = [a.name for a in agents if record["upid"] in a.processes]
            assert holders == [record["assigned"]], record


@pytest.mark.postgres
def test_two_dispatchers_share_the_work_and_place_each_process_once(
    pair: tuple[Instance, Instance],
) -> None:
    first, second = pair
    # Given the first dispatcher leads
    first.service.start()
    wait_for(lambda: first.leads, what="first instance leading")
    second.service.start()
    harness = Harness(first.settings, first.service, start=False)
    other_client = ProcessDispatcherClient.from_settings(second.settings, timeout=20)
    try:
        harness.define()
        # and three nodes with two 4-slot agents each (24 slots)
        agents = [a for n in ("node1", "node2", "node3") for a in harness.add_node(n, agents=2)]
        # Then only it runs a matchmaker, though both are up
        assert (first.leads, second.leads) == (True, False)
        assert matchmaker_threads() == 1
        # When 40 processes are scheduled through two clients
        upids = [f"p{i:02d}" for i in range(40)]
        for index, upid in enumerate(upids):
            client = harness.client if index % 2 else other_client
            client.schedule_process(upid, DEFINITION, restart_mode="NEVER")

        def settled() -> Any:
            states = Counter(p["state"] for p in harness.client.describe_processes())
            return states if states == {"500-RUNNING": 24, "300-WAITING": 16} else None

        wait_for(settled, timeout=60, what="24 running and 16 waiting")
        # Then both dispatchers served requests, and nothing was placed twice
        assert first.served["schedule_process"] > 0
        assert second.served["schedule_process"] > 0
        assert second.served["heartbeat"] > 0
        assert_never_placed_twice(harness, agents)
        assert {r["state"] for r in harness.resources().values()} == {"OK"}
        # When half of the running ones are terminated (through both), the waiting take over
        running = sorted(
            p["upid"] for p in harness.client.describe_processes() if p["state"] == "500-RUNNING"
        )
        for index, upid in enumerate(running[:12]):
            (harness.client if index % 2 else other_client).terminate_process(upid)

        def churned() -> Any:
            states = Counter(p["state"] for p in harness.client.describe_processes())
            want = {"500-RUNNING": 24, "300-WAITING": 4, "700-TERMINATED": 12}
            return states if states == want else None

        wait_for(churned, timeout=60, what="freed slots reused")
        assert_never_placed_twice(harness, agents)
        assert matchmaker_threads() == 1

        # When the leader stops
        first.service.stop()
        # Then the other takes over and places new work
        wait_for(lambda: second.leads, timeout=30, what="second instance leading")
        wait_for(lambda: matchmaker_threads() == 1, what="one matchmaker again")
        for upid in running[12:16]:
            other_client.terminate_process(upid)
        for index in range(4):
            other_client.schedule_process(f"late{index}", DEFINITION, restart_mode="NEVER")
        harness.client.close()
        harness.client = other_client
        harness.wait_states([f"late{index}" for index in range(4)], "300-WAITING")

        def taken_over() -> Any:
            states = Counter(p["state"] for p in other_client.describe_processes())
            want = {"500-RUNNING": 24, "300-WAITING": 4, "700-TERMINATED": 16}
            return states if states == want else None

        wait_for(taken_over, timeout=60, what="the new leader placing the waiting work")
        assert_never_placed_twice(harness, agents)
    finally:
        harness.close()
        other_client.close()


def _refused(tmp_path: Path, amqp_uri: str, database_url: str) -> None:
    # Given a dispatcher of system "alpha" leading on the database
    alpha = Instance(tmp_path / "a", amqp_uri, f"alpha{uuid.uuid4().hex[:6]}", database_url)
    try:
        alpha.service.start()
        wait_for(lambda: alpha.leads, what="alpha leading")
        # When a dispatcher of system "beta" is started on the same database
        beta_name = f"beta{uuid.uuid4().hex[:6]}"
        with pytest.raises(DatabaseOwnerError) as refused:
            Instance(tmp_path / "b", amqp_uri, beta_name, database_url)
        # Then it refuses, in one line naming both systems, and alpha alone leads
        message = str(refused.value)
        assert "\n" not in message
        assert repr(alpha.settings.dashi.sysname) in message and repr(beta_name) in message
        assert alpha.leads
        assert matchmaker_threads() == 1
    finally:
        alpha.service.stop()


def test_a_dispatcher_of_another_system_refuses_a_sqlite_database_in_use(
    tmp_path: Path, amqp_uri: str
) -> None:
    _refused(tmp_path, amqp_uri, f"sqlite:///{tmp_path}/shared.db")


@pytest.mark.postgres
def test_a_dispatcher_of_another_system_refuses_a_postgres_database_in_use(
    tmp_path: Path, amqp_uri: str, postgres_url: str
) -> None:
    _refused(tmp_path, amqp_uri, postgres_url)


def test_pd_dispatcher_names_both_systems_in_one_line_when_refused(tmp_path: Path) -> None:
    # Given a database that system "alpha" started on
    database = f"sqlite:///{tmp_path}/shared.db"
    alpha = DispatcherService.build(
        make_settings(tmp_path, "embedded://", sysname="alpha", database_url=database)
    )
    alpha.stop()
    # When pd-dispatcher is started on it as system "beta"
    config = tmp_path / "beta.yml"
    config.write_text(
        f"dashi: {{sysname: beta}}\nprocessdispatcher: {{database_url: '{database}'}}\n"
    )
    script = Path(sys.executable).with_name("pd-dispatcher")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.dispatcher"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    done = subprocess.run(
        [*command, "--config", str(config)],
        env={**env, "PD_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then it exits with the status of a configuration error (2) and one line naming
    # both, with no traceback
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (error,) = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert "dashi.sysname 'alpha'" in error and "dashi.sysname 'beta'" in error

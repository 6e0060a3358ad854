"""End to end: terminates that race with their launches, from several clients at once.

A real dispatcher, real ``pd-eeagent`` processes over real supervisord, RabbitMQ.
The matchmaker stores ``350-ASSIGNED`` for a batch before it fires the launches, so
a ``terminate_process`` served in between reaches the agent before the launch. The
order must not matter: every process ends ``700-TERMINATED`` and nothing is left
running on the agents.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.client import ProcessDispatcherClient
from eeagent.supervisor import SupervisorControl
from tests.e2e.test_real_agents import Cluster, define, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

#: Client threads, and schedule-then-terminate pairs each sends.
CLIENTS = 4
PAIRS_PER_CLIENT = 100
#: Slots per agent (two agents): enough that most processes get assigned at once.
SLOTS = 16


@pytest.fixture
def cluster(tmp_path: Path, amqp_uri: str) -> Iterator[Cluster]:
    made = Cluster(tmp_path, amqp_uri, slots=SLOTS)
    try:
        yield made
    finally:
        made.close()


def _alive_programs(cluster: Cluster, agents: list[str]) -> list[str]:
    alive = []
    for name in agents:
        statuses = SupervisorControl(cluster.tmp_path / "supd" / name).poll()
        alive += [f"{name}:{s.name}" for s in statuses.values() if s.state.alive]
    return alive


def test_schedule_then_terminate_pairs_from_several_clients_all_end_terminated(
    cluster: Cluster,
) -> None:
    # Given two agents with free slots, and a definition of a long-running process
    agents = cluster.add_node("node1", agents=2)
    define(cluster, "sleeper", "/bin/sleep", "600")
    errors: list[BaseException] = []

    def pairs(client_index: int) -> None:
        client = ProcessDispatcherClient.from_settings(cluster.service.settings, timeout=20)
        try:
            for index in range(PAIRS_PER_CLIENT):
                upid = f"c{client_index}-{index}"
                client.schedule_process(upid, "sleeper", restart_mode="NEVER")
                client.terminate_process(upid)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            client.close()

    # When several clients each schedule processes and terminate them at once
    threads = [threading.Thread(target=pairs, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    upids = {f"c{c}-{i}" for c in range(CLIENTS) for i in range(PAIRS_PER_CLIENT)}

    # Then every process ends TERMINATED (none stays TERMINATING)
    def states() -> Counter[str]:
        return Counter(
            str(p["state"]) for p in cluster.client.describe_processes() if p["upid"] in upids
        )

    def all_terminated() -> Any:
        counted = states()
        return counted if counted == Counter({"700-TERMINATED": len(upids)}) else None

    try:
        wait_for(all_terminated, timeout=30, what="every process 700-TERMINATED")
    except AssertionError:
        stuck = sorted(
            (p["upid"], p["state"], p["assigned"])
            for p in cluster.client.describe_processes()
            if p["upid"] in upids and p["state"] != "700-TERMINATED"
        )
        raise AssertionError(f"{len(stuck)} processes did not end TERMINATED: {stuck}") from None
    # And no slot is held and nothing runs on the agents
    resources = cluster.client.dump()["resources"]
    assert {name: resources[name]["assigned"] for name in agents} == {name: [] for name in agents}
    wait_for(lambda: not _alive_programs(cluster, agents), timeout=15, what="no program alive")

"""Service-level end-to-end lifecycle scenarios.

Outcomes the agent reports (failed, exited), restarts, rescheduling, idempotent
create/schedule, launch retries and subscriber notifications, over the real broker.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dashi.service import RpcService
from tests.service.conftest import DEFINITION, FlakyLaunches, Harness, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


class Subscriber:
    """A dashi service that records the ``process_state`` notifications it gets."""

    def __init__(self, harness: Harness) -> None:
        self.name = f"subscriber_{uuid.uuid4().hex[:8]}"
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.service = RpcService(harness.broker, self.name)
        self.service.handle("process_state", self.process_state, validate=False)
        self.service.start()

    def process_state(self, process: dict[str, Any]) -> None:
        with self._lock:
            self.received.append(process)

    def states_of(self, upid: str) -> list[str]:
        with self._lock:
            return [p["state"] for p in self.received if p["upid"] == upid]

    def wait(self, upid: str, state: str) -> dict[str, Any]:
        def seen() -> Any:
            with self._lock:
                found = [p for p in self.received if p["upid"] == upid and p["state"] == state]
            return found[-1] if found else None

        return dict(wait_for(seen, what=f"notification {upid} {state}"))


@pytest.fixture
def subscriber(pd: Harness) -> Iterator[Subscriber]:
    made = Subscriber(pd)
    yield made
    made.service.stop()


def test_64_restart_never_process_reported_failed_is_failed(pd: Harness) -> None:
    # Given a running process that must never restart
    (agent,) = pd.add_node("node1")
    pd.client.schedule_process("proc1", DEFINITION, queueing_mode="ALWAYS", restart_mode="NEVER")
    pd.wait_state("proc1", "500-RUNNING")
    # When its agent reports it failed
    agent.set_state("proc1", "850-FAILED")
    # Then it is FAILED in round 0, and its slot is free
    failed = pd.wait_state("proc1", "850-FAILED")
    assert failed["round"] == 0
    assert failed["starts"] == 1
    pd.wait_held(agent, set())
    assert agent.ops("launch_process") == [{"u_pid": "proc1", "round": 0}]


def test_67_restart_process_counts_a_second_start(pd: Harness) -> None:
    # Given proc1 running once
    (agent,) = pd.add_node("node1")
    pd.client.schedule_process("proc1", DEFINITION)
    first = pd.wait_state("proc1", "500-RUNNING")
    assert (first["starts"], first["round"]) == (1, 0)
    # When it is restarted
    pd.client.restart_process("proc1")

    def restarted() -> Any:
        record = pd.describe("proc1")
        return record if record["state"] == "500-RUNNING" and record["round"] == 1 else None

    # Then it runs again on the same agent, in round 1, with two starts
    again = wait_for(restarted, what="proc1 running in round 1")
    assert again["assigned"] == agent.name
    assert again["starts"] == 2
    assert agent.ops("restart_process") == [{"u_pid": "proc1", "round": 1}]
    # and the agent's slot follows the new round (docs/architecture.md, decision 4)
    wait_for(
        lambda: pd.resources()[agent.name]["assigned"] == [[None, "proc1", 1]],
        what="slot under round 1",
    )


def test_69_a_process_reported_exited_is_exited_and_subscribers_told(
    pd: Harness, subscriber: Subscriber
) -> None:
    # Given one agent and a running process with a subscriber
    (agent,) = pd.add_node("node1")
    pd.client.schedule_process(
        "proc1", DEFINITION, subscribers=[(subscriber.name, "process_state")]
    )
    pd.wait_state("proc1", "500-RUNNING")
    # When the agent reports it exited (default restart mode: not restarted)
    agent.set_state("proc1", "800-EXITED")
    # Then it is EXITED and the subscriber hears so
    exited = pd.wait_state("proc1", "800-EXITED")
    assert exited["round"] == 0
    notification = subscriber.wait("proc1", "800-EXITED")
    assert notification["round"] == 0
    assert subscriber.states_of("proc1")[-1] == "800-EXITED"
    assert "500-RUNNING" in subscriber.states_of("proc1")


def test_71_an_exited_process_can_be_scheduled_again(pd: Harness) -> None:
    # Given a created, then scheduled, NEVER-restart process
    (agent,) = pd.add_node("node1")
    assert pd.client.create_process("proc1", DEFINITION)["state"] == "100-UNSCHEDULED"
    pd.client.schedule_process("proc1", restart_mode="NEVER")
    pd.wait_state("proc1", "500-RUNNING")
    # When it exits
    agent.set_state("proc1", "800-EXITED")
    pd.wait_state("proc1", "800-EXITED")
    # Then scheduling it again starts round 1
    again = pd.client.schedule_process("proc1")
    assert (again["state"], again["round"]) == ("200-REQUESTED", 1)

    def running_again() -> Any:
        record = pd.describe("proc1")
        return record if record["state"] == "500-RUNNING" and record["round"] == 1 else None

    record = wait_for(running_again, what="proc1 running in round 1")
    assert record["assigned"] == agent.name
    assert agent.ops("launch_process") == [
        {"u_pid": "proc1", "round": 0},
        {"u_pid": "proc1", "round": 1},
    ]


def test_72_create_then_schedule_are_idempotent(pd: Harness) -> None:
    pd.add_node("node1")
    # create twice: harmless
    assert pd.client.create_process("proc1", DEFINITION)["state"] == "100-UNSCHEDULED"
    assert pd.client.create_process("proc1", DEFINITION)["state"] == "100-UNSCHEDULED"
    # schedule: it runs
    pd.client.schedule_process("proc1")
    pd.wait_state("proc1", "500-RUNNING")
    # schedule again: no error, the current state, the same round
    again = pd.client.schedule_process("proc1")
    assert (again["state"], again["round"]) == ("500-RUNNING", 0)
    record = pd.describe("proc1")
    assert (record["starts"], record["dispatches"]) == (1, 1)
    assert len(pd.client.describe_processes()) == 1


def test_75_lost_and_failed_launches_are_retried(
    harness_factory: Callable[..., Harness],
) -> None:
    # Given a dispatcher retrying launches every 0.5 s, whose launches are lost
    # (the first silently, the next ones with a send error) until the broker recovers
    made: list[FlakyLaunches] = []

    def flaky(inner: Any) -> FlakyLaunches:
        made.append(FlakyLaunches(inner))
        return made[-1]

    pd = harness_factory(
        launches=flaky, overrides={"processdispatcher.dispatch_retry_seconds": 0.5}
    )
    pd.define()
    (launches,) = made
    (agent,) = pd.add_node("node1")
    # When two processes are scheduled
    pd.client.schedule_process("proc1", DEFINITION)
    pd.client.schedule_process("proc2", DEFINITION)
    # Then both are ASSIGNED to the agent, which received nothing
    for upid in ("proc1", "proc2"):
        assert pd.wait_state(upid, "350-ASSIGNED")["assigned"] == agent.name
    wait_for(lambda: len(launches.outcomes()) >= 4, what="launch retries while failing")
    outcomes = launches.outcomes()
    assert outcomes[:2] == ["lost", "error"]
    assert set(outcomes) == {"lost", "error"}
    assert {upid for _, upid, _ in launches.attempts} == {"proc1", "proc2"}
    assert agent.ops("launch_process") == []
    assert {pd.describe(u)["state"] for u in ("proc1", "proc2")} == {"350-ASSIGNED"}
    # When sending works again, the retries get both running
    launches.failing = False
    for upid in ("proc1", "proc2"):
        record = pd.wait_state(upid, "500-RUNNING")
        assert (record["round"], record["dispatches"], record["starts"]) == (0, 1, 1)
    launched = {(op["u_pid"], op["round"]) for op in agent.ops("launch_process")}
    assert launched == {("proc1", 0), ("proc2", 0)}
    assert "sent" in launches.outcomes()


def test_76_subscribers_receive_process_and_state(pd: Harness, subscriber: Subscriber) -> None:
    # Given an agent that runs what it launches, and one that leaves it pending
    (runner,) = pd.add_node("node1")
    (pender,) = pd.add_node("node2", "engine2", launch_state="400-PENDING")
    subscribers = [(subscriber.name, "process_state")]
    # When a process runs, its subscriber gets {"process": {upid, state, ...}}
    pd.client.schedule_process("proc1", DEFINITION, subscribers=subscribers)
    running = subscriber.wait("proc1", "500-RUNNING")
    assert running == {"upid": "proc1", "round": 0, "state": "500-RUNNING", "assigned": runner.name}
    # When another stays pending, its subscriber gets PENDING
    pd.client.schedule_process(
        "proc2", DEFINITION, subscribers=subscribers, execution_engine_id="engine2"
    )
    pending = subscriber.wait("proc2", "400-PENDING")
    assert pending["upid"] == "proc2"
    assert pending["assigned"] == pender.name
    assert pd.describe("proc2")["state"] == "400-PENDING"
    # and each notification followed the states in order
    assert subscriber.states_of("proc1")[:2] == ["350-ASSIGNED", "500-RUNNING"]
    assert subscriber.states_of("proc2")[:2] == ["350-ASSIGNED", "400-PENDING"]

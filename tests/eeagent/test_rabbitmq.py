"""Heartbeats over a real RabbitMQ, byte-level: the legacy field names, types and
state strings a legacy dispatcher parses."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import kombu
import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from eeagent.agent import EEAgent
from eeagent.service import AgentService
from eeagent.supervisor import SupervisorControl
from tests.eeagent.conftest import sleeper, stop_supervisord, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord]


class RawDispatcherQueue:
    """The dispatcher's queue, read as raw AMQP messages (no RPC layer in between)."""

    def __init__(self, broker: BrokerConfig) -> None:
        self.connection = kombu.Connection(broker.uri)
        name = broker.prefixed("process_dispatcher")
        self.queue = kombu.Queue(
            name, broker.kombu_exchange(), routing_key=name, durable=False, auto_delete=True
        )
        self.messages: queue.Queue[tuple[dict[str, Any], dict[str, Any], str]] = queue.Queue()
        self.consumer = kombu.Consumer(
            self.connection, [self.queue], callbacks=[self._on_message], accept=["json"]
        )
        self.consumer.consume()

    def _on_message(self, body: Any, message: kombu.Message) -> None:
        self.messages.put((json.loads(message.body), dict(message.headers), message.content_type))
        message.ack()

    def next_heartbeat(
        self, predicate: Any = lambda m: True, timeout: float = 15.0
    ) -> tuple[dict[str, Any], dict[str, Any], str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get_nowait()
            except queue.Empty:
                with contextlib.suppress(TimeoutError):
                    self.connection.drain_events(timeout=0.2)
                continue
            if predicate(item[0]["args"]["message"]):
                return item
        raise AssertionError("no matching heartbeat arrived")

    def close(self) -> None:
        self.consumer.cancel()
        self.connection.release()


def state_of(message: dict[str, Any], upid: str) -> list[Any] | None:
    for entry in message["processes"]:
        if entry["upid"] == upid:
            return entry["state"]
    return None


@pytest.fixture
def broker(amqp_uri: str, sysname: str) -> BrokerConfig:
    return BrokerConfig(uri=amqp_uri, sysname=sysname)


@pytest.fixture
def raw(broker: BrokerConfig) -> Iterator[RawDispatcherQueue]:
    reader = RawDispatcherQueue(broker)
    yield reader
    reader.close()


@pytest.fixture
def service(
    broker: BrokerConfig, tmp_path: Path, raw: RawDispatcherQueue
) -> Iterator[AgentService]:
    control = SupervisorControl(tmp_path / "agent1")
    agent = EEAgent(name="agent1", node_id="node-7", slots=2, control=control)
    svc = AgentService(agent, broker=broker, pd_name="process_dispatcher", heartbeat=30)
    svc.start()
    yield svc
    svc.stop()
    stop_supervisord(control)


@pytest.fixture
def client(broker: BrokerConfig) -> Iterator[RpcClient]:
    with RpcClient(broker, name="process_dispatcher") as rpc:
        yield rpc


def test_the_heartbeat_on_the_wire_is_the_legacy_message(
    service: AgentService, raw: RawDispatcherQueue, client: RpcClient, sysname: str
) -> None:
    # The start-up heartbeat: op, args, sender header, JSON
    body, headers, content_type = raw.next_heartbeat()
    assert content_type == "application/json"
    assert set(body) == {"op", "args"} and body["op"] == "heartbeat"
    assert list(body["args"]) == ["message"]
    assert headers["sender"] == f"{sysname}.agent1"
    message = body["args"]["message"]
    assert set(message) == {"eeagent_id", "node_id", "timestamp", "processes"}
    assert message["eeagent_id"] == "agent1" and message["node_id"] == "node-7"
    assert datetime.fromisoformat(message["timestamp"]).utcoffset() is not None
    assert message["processes"] == []
    # A launch: the process appears with string round, [code, NAME] state, msg "None"
    client.fire(
        "agent1", "launch_process", u_pid="p1", round=3, run_type="supd", parameters=sleeper()
    )
    body, _, _ = raw.next_heartbeat(lambda m: state_of(m, "p1") == [500, "RUNNING"])
    (entry,) = body["args"]["message"]["processes"]
    assert entry == {"upid": "p1", "round": "3", "state": [500, "RUNNING"], "msg": "None"}


@pytest.mark.parametrize(
    ("parameters", "state", "msg"),
    [
        ({"exec": "true"}, [800, "EXITED"], "None"),
        ({"exec": "sh", "argv": ["-c", "exit 3"]}, [850, "FAILED"], "exited with code 3"),
        (
            {"exec": "/no/such/program"},
            [850, "FAILED"],
            "cannot start: NO_FILE: can't find command '/no/such/program'",
        ),
        (
            {"exec": "true", "working_directory": "/no/such/dir"},
            [850, "FAILED"],
            "cannot start: working directory '/no/such/dir' does not exist",
        ),
        ({"argv": ["600"]}, [850, "FAILED"], "invalid parameters: exec: Field required"),
    ],
)
def test_each_end_of_a_process_is_reported_with_its_legacy_state(
    service: AgentService,
    raw: RawDispatcherQueue,
    client: RpcClient,
    parameters: dict[str, Any],
    state: list[Any],
    msg: str,
) -> None:
    raw.next_heartbeat()
    client.fire(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=parameters
    )
    body, _, _ = raw.next_heartbeat(lambda m: state_of(m, "p1") == state)
    assert body["args"]["message"]["processes"][0]["msg"] == msg


def test_terminated_and_rejected_processes_are_reported_with_their_legacy_states(
    service: AgentService, raw: RawDispatcherQueue, client: RpcClient
) -> None:
    raw.next_heartbeat()
    for upid in ("a", "b", "c"):
        client.fire(
            "agent1", "launch_process", u_pid=upid, round=1, run_type="supd", parameters=sleeper()
        )
    body, _, _ = raw.next_heartbeat(lambda m: state_of(m, "c") == [900, "REJECTED"])
    entry = next(p for p in body["args"]["message"]["processes"] if p["upid"] == "c")
    assert entry["msg"] == "no free slot: all 2 slots are in use"
    client.fire("agent1", "terminate_process", u_pid="a", round=1)
    raw.next_heartbeat(lambda m: state_of(m, "a") == [700, "TERMINATED"])


def test_an_unknown_run_type_is_reported_failed_with_the_reason(
    service: AgentService, raw: RawDispatcherQueue, client: RpcClient
) -> None:
    raw.next_heartbeat()
    client.fire(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="pyon", parameters=sleeper()
    )
    body, _, _ = raw.next_heartbeat(lambda m: state_of(m, "p1") == [850, "FAILED"])
    (entry,) = body["args"]["message"]["processes"]
    assert entry["msg"] == "unknown run type 'pyon': this agent runs 'supd'"


def supervisord_children(pid: int) -> list[int]:
    children = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            children += [int(child) for child in path.read_text().split()]
    return children


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_supervisord_killed_under_the_agent_is_replaced_and_its_processes_reported_lost(
    service: AgentService, raw: RawDispatcherQueue, client: RpcClient
) -> None:
    # Given a running process
    raw.next_heartbeat()
    client.fire(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=sleeper()
    )
    raw.next_heartbeat(lambda m: state_of(m, "p1") == [500, "RUNNING"])
    control = service.agent.control
    assert isinstance(control, SupervisorControl)
    old = int(Path(control.files.pidfile).read_text())
    (child,) = supervisord_children(old)
    # When its supervisord is killed with SIGKILL
    os.kill(old, signal.SIGKILL)
    # Then a heartbeat reports the process lost, with the reason
    body, _, _ = raw.next_heartbeat(lambda m: state_of(m, "p1") == [850, "FAILED"])
    (entry,) = body["args"]["message"]["processes"]
    assert entry["msg"].startswith("lost: supervisord died (")
    # and its orphan is killed, and a new supervisord runs new work
    wait_for(lambda: not alive(child))
    new = int(Path(control.files.pidfile).read_text())
    assert new != old and alive(new)
    client.fire(
        "agent1", "launch_process", u_pid="p2", round=1, run_type="supd", parameters=sleeper()
    )
    raw.next_heartbeat(lambda m: state_of(m, "p2") == [500, "RUNNING"])

"""The agent on the wire, broker-less (the embedded transport): operations,
heartbeats at start-up, on change and periodically, and a clean stop."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import BadRequestError, NotFoundError, TransportError
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.service import AgentService, Heartbeater
from eeagent.supervisor import SupervisorControl
from tests.eeagent.conftest import PdSink, process_state, sleeper, stop_supervisord


@pytest.fixture
def broker(tmp_path: Path, sysname: str) -> BrokerConfig:
    # A sysname per test: the embedded transport keeps exchange state per process.
    return BrokerConfig(uri="embedded://", state_dir=tmp_path / "state", sysname=sysname)


@pytest.fixture
def pd(broker: BrokerConfig) -> Iterator[PdSink]:
    sink = PdSink(broker)
    sink.service.start()
    yield sink
    sink.service.stop()


@pytest.fixture
def client(broker: BrokerConfig) -> Iterator[RpcClient]:
    with RpcClient(broker, name="process_dispatcher") as rpc:
        yield rpc


def serve(agent: EEAgent, broker: BrokerConfig, heartbeat: float = 30.0) -> AgentService:
    service = AgentService(agent, broker=broker, pd_name="process_dispatcher", heartbeat=heartbeat)
    service.start()
    return service


@pytest.fixture
def fake_service(
    broker: BrokerConfig, pd: PdSink
) -> Iterator[tuple[AgentService, FakeProcessControl]]:
    control = FakeProcessControl()
    agent = EEAgent(name="agent1", node_id="node1", slots=2, control=control)
    # No periodic heartbeat during a test: every one after the first is a change report.
    service = serve(agent, broker, heartbeat=3600)
    yield service, control
    service.stop()


def test_the_agent_sends_a_heartbeat_at_start_up_under_its_own_name(
    fake_service: tuple[AgentService, FakeProcessControl], pd: PdSink, sysname: str
) -> None:
    message, sender = pd.next()
    assert sender == f"{sysname}.agent1"
    assert message["eeagent_id"] == "agent1"
    assert message["node_id"] == "node1"
    assert message["processes"] == []


def test_a_launch_is_answered_by_a_heartbeat_reporting_it_running(
    fake_service: tuple[AgentService, FakeProcessControl], pd: PdSink, client: RpcClient
) -> None:
    pd.next()
    client.fire(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=sleeper()
    )
    beat = pd.wait_for(lambda m: process_state(m, "p1") == [500, "RUNNING"])
    assert beat["processes"] == [
        {"upid": "p1", "round": "1", "state": [500, "RUNNING"], "msg": "None"}
    ]


def test_a_state_change_seen_by_the_monitor_is_reported_at_once(
    fake_service: tuple[AgentService, FakeProcessControl], pd: PdSink, client: RpcClient
) -> None:
    # (periodic heartbeats are an hour apart here: every beat after the first one
    # reports a change, and the dispatcher receives them in the order they are sent)
    _, control = fake_service
    assert pd.next()[0]["processes"] == []
    client.fire(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=sleeper()
    )
    assert process_state(pd.next()[0], "p1") == [500, "RUNNING"]
    # When the monitor sees the process exit
    control.exit("p1-1", 3)
    # Then the very next heartbeat reports it, and it is the only one
    beat = pd.next()[0]
    assert [
        {k: v for k, v in entry.items() if k != "started_at"} for entry in beat["processes"]
    ] == [
        {
            "upid": "p1",
            "round": "1",
            "state": [850, "FAILED"],
            "msg": "exited with code 3",
            "exit_code": 3,
        }
    ]
    assert isinstance(beat["processes"][0]["started_at"], float)
    heartbeater = fake_service[0].heartbeater
    heartbeater.stop(final=False)  # joined: its count is final
    assert heartbeater.sent == 3


def test_the_operations_are_served_with_their_legacy_names(
    fake_service: tuple[AgentService, FakeProcessControl], pd: PdSink, client: RpcClient
) -> None:
    _, control = fake_service
    client.call(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=sleeper()
    )
    control.write_log("p1-1", "stdout", b"hello\n")
    assert client.call("agent1", "get_process_logs", u_pid="p1", round=1) == "hello\n"
    client.call("agent1", "restart_process", u_pid="p1", round=2)
    dumped = client.call("agent1", "dump_state", rpc=True)
    assert [(p["upid"], p["round"]) for p in dumped["processes"]] == [("p1", "2")]
    client.call("agent1", "terminate_process", u_pid="p1", round=2)
    pd.wait_for(lambda m: process_state(m, "p1") == [700, "TERMINATED"])
    client.call("agent1", "cleanup", u_pid="p1", round=2)
    assert client.call("agent1", "dump_state", rpc=True)["processes"] == []


def test_dump_state_without_rpc_sends_a_heartbeat(
    fake_service: tuple[AgentService, FakeProcessControl], pd: PdSink, client: RpcClient
) -> None:
    pd.next()
    assert client.call("agent1", "dump_state") is None
    message, _ = pd.next(timeout=5)
    assert message["eeagent_id"] == "agent1"


def test_bad_requests_get_typed_errors_over_the_wire(
    fake_service: tuple[AgentService, FakeProcessControl], client: RpcClient
) -> None:
    with pytest.raises(NotFoundError, match="no process nobody round 1"):
        client.call("agent1", "get_process_logs", u_pid="nobody", round=1)
    with pytest.raises(BadRequestError, match="round"):
        client.call("agent1", "launch_process", u_pid="p1", round="one", run_type="supd")
    with pytest.raises(BadRequestError, match="u_pid"):
        client.call("agent1", "terminate_process", round=1)


#: Requests with bad arguments, and the text the BadRequestError must contain.
BAD_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    ("launch_process", {"u_pid": "p1", "round": "one", "run_type": "supd"}, "round"),
    ("launch_process", {"u_pid": "p1", "round": True, "run_type": "supd"}, "round"),
    ("launch_process", {"u_pid": "p1", "round": -1, "run_type": "supd"}, "round"),
    ("launch_process", {"u_pid": "p1", "round": 1.5, "run_type": "supd"}, "round"),
    ("launch_process", {"u_pid": 7, "round": 1, "run_type": "supd"}, "u_pid"),
    ("launch_process", {"u_pid": "", "round": 1, "run_type": "supd"}, "u_pid"),
    ("launch_process", {"u_pid": "p1", "round": 1}, "run_type"),
    ("launch_process", {"u_pid": "p1", "round": 1, "run_type": "supd", "x": 1}, "x"),
    ("terminate_process", {"u_pid": "p1", "round": [1]}, "round"),
    ("restart_process", {"u_pid": "p1"}, "round"),
    ("cleanup", {"round": 1}, "u_pid"),
    ("get_process_logs", {"u_pid": "p1", "round": 1, "stream": "stdin"}, "stream"),
    ("get_process_logs", {"u_pid": "p1", "round": 1, "tail_bytes": -1}, "tail_bytes"),
    ("get_process_logs", {"u_pid": "p1", "round": 1, "tail_bytes": "all"}, "tail_bytes"),
]


@pytest.mark.parametrize(("op", "args", "named"), BAD_REQUESTS)
def test_a_request_with_bad_arguments_is_a_bad_request_and_changes_nothing(
    fake_service: tuple[AgentService, FakeProcessControl],
    client: RpcClient,
    op: str,
    args: dict[str, Any],
    named: str,
) -> None:
    # Given an agent running one process
    _, control = fake_service
    client.call(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=sleeper()
    )
    before = client.call("agent1", "dump_state", rpc=True)["processes"]
    calls = len(control.calls)
    # When a request with a bad argument is called, and the same is fired
    with pytest.raises(BadRequestError, match=named):
        client.call("agent1", op, **args)
    client.fire("agent1", op, **args)
    # Then (requests are served in order) nothing changed
    assert client.call("agent1", "dump_state", rpc=True)["processes"] == before
    assert before == [{"upid": "p1", "round": "1", "state": [500, "RUNNING"], "msg": "None"}]
    assert [c for c in control.calls[calls:] if c != "poll"] == []  # no start, stop, remove


def test_heartbeats_are_sent_periodically(broker: BrokerConfig, pd: PdSink) -> None:
    agent = EEAgent(name="agent1", node_id="n", slots=1, control=FakeProcessControl())
    service = serve(agent, broker, heartbeat=0.2)
    try:
        first = pd.next()[0]["timestamp"]
        stamps = [pd.next(timeout=2)[0]["timestamp"] for _ in range(3)]
    finally:
        service.stop()
    assert stamps == sorted(stamps) and first < stamps[0]


def test_a_stopped_service_sends_a_last_heartbeat_and_stops_its_processes(
    broker: BrokerConfig, pd: PdSink, client: RpcClient
) -> None:
    control = FakeProcessControl()
    agent = EEAgent(name="agent1", node_id="n", slots=1, control=control)
    service = serve(agent, broker)
    client.call(
        "agent1", "launch_process", u_pid="p1", round=1, run_type="supd", parameters=sleeper()
    )
    service.stop()
    last = pd.wait_for(lambda m: process_state(m, "p1") == [850, "FAILED"])
    assert last["processes"][0]["msg"] == "stopped: the agent shut down"
    assert control.closed and not control.alive


def test_a_heartbeat_that_cannot_be_sent_does_not_stop_the_next_ones() -> None:
    sent: list[dict[str, Any]] = []
    failures = iter([TransportError("broker down"), RuntimeError("bug")])

    def send(message: dict[str, Any]) -> None:
        error = next(failures, None)
        if error is not None:
            raise error
        sent.append(message)

    beats = Heartbeater(lambda: {"n": len(sent)}, send, interval=30)
    beats.start()
    for _ in range(2):
        time.sleep(0.05)
        beats.request()
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        beats.request()
        time.sleep(0.05)
    beats.stop(final=False)
    assert sent


def test_change_requests_are_coalesced_into_one_heartbeat() -> None:
    sending, release = threading.Event(), threading.Event()
    sent: list[int] = []

    def send(message: dict[str, Any]) -> None:
        sending.set()
        release.wait(10)
        sent.append(1)

    beats = Heartbeater(lambda: {}, send, interval=3600)
    beats.start()
    assert sending.wait(10)  # the start-up beat is being sent
    # When 20 changes are announced while it is sent
    for _ in range(20):
        beats.request()
    release.set()
    deadline = time.monotonic() + 10
    while beats.sent < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    beats.stop(final=False)
    # Then they went out as one heartbeat (nothing else asked for one)
    assert sent == [1, 1]


@pytest.mark.supervisord
def test_end_to_end_over_the_embedded_transport_with_a_real_supervisord(
    broker: BrokerConfig, pd: PdSink, client: RpcClient, tmp_path: Path
) -> None:
    # Given an agent with a real supervisord, reachable without any broker server
    control = SupervisorControl(tmp_path / "agent1")
    agent = EEAgent(name="agent1", node_id="node1", slots=2, control=control)
    service = serve(agent, broker)
    try:
        # When the dispatcher fires a launch, as it does
        client.fire(
            "agent1",
            "launch_process",
            u_pid="p1",
            round=1,
            run_type="supd",
            parameters={"exec": "sh", "argv": ["-c", "echo started; sleep 600"]},
        )
        # Then a heartbeat reports it running, and its output can be read
        pd.wait_for(lambda m: process_state(m, "p1") == [500, "RUNNING"])
        deadline = time.monotonic() + 5
        while client.call("agent1", "get_process_logs", u_pid="p1", round=1) != "started\n":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        client.fire("agent1", "terminate_process", u_pid="p1", round=1)
        pd.wait_for(lambda m: process_state(m, "p1") == [700, "TERMINATED"])
    finally:
        service.stop()
        stop_supervisord(control)

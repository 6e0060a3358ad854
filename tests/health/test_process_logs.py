"""get_process_logs: the dispatcher asks the agent that runs the process."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dashi.errors import (
    BadRequestError,
    NotFoundError,
    RemoteError,
    RpcTimeoutError,
    TransportError,
    UnknownOperationError,
)
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.messaging import RecordingMessenger
from dispatcher.store.base import Store
from pdcommon.states import ProcessState
from tests.health.conftest import make_engines, put_process
from tests.support.wiring import make_heartbeats


class FakeCaller:
    """Answers agent calls with ``answer`` (or raises it), recording each call."""

    def __init__(self, answer: Any = "hello\n") -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, float | None, dict[str, Any]]] = []

    def call(self, service: str, op: str, timeout: float | None = None, **args: Any) -> Any:
        self.calls.append((service, op, timeout, args))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


@pytest.fixture
def caller() -> FakeCaller:
    return FakeCaller()


@pytest.fixture
def logs(store: Store, messenger: RecordingMessenger, caller: FakeCaller) -> HeartbeatHandler:
    return make_heartbeats(store, messenger, make_engines(), caller=caller, logs_timeout=2.5)


def test_the_logs_come_from_the_assigned_agent(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller
) -> None:
    # Given proc1 RUNNING in round 3 on eeagent_1
    put_process(store, "proc1", ProcessState.RUNNING, round_=3, assigned="eeagent_1")
    # When its stderr tail is asked for
    text = logs.get_process_logs("proc1", stream="stderr", tail_bytes=100)
    # Then the agent was called for that round, with a short timeout, and its text returned
    assert text == "hello\n"
    assert caller.calls == [
        (
            "eeagent_1",
            "get_process_logs",
            2.5,
            {"u_pid": "proc1", "round": 3, "stream": "stderr", "tail_bytes": 100},
        )
    ]


def test_the_defaults_are_stdout_and_64_kib(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller
) -> None:
    # Given a running process, When logs are asked without options
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    logs.get_process_logs("proc1")
    # Then stdout and 65536 bytes are asked for
    assert caller.calls[0][3] == {
        "u_pid": "proc1",
        "round": 0,
        "stream": "stdout",
        "tail_bytes": 65536,
    }


def test_an_unknown_process_is_not_found(logs: HeartbeatHandler, caller: FakeCaller) -> None:
    # Given/When logs of an unknown process are asked for, Then NotFoundError, no call
    with pytest.raises(NotFoundError, match="process ghost does not exist"):
        logs.get_process_logs("ghost")
    assert caller.calls == []


@pytest.mark.parametrize("state", [ProcessState.WAITING, ProcessState.EXITED])
def test_an_unassigned_process_has_no_agent_to_ask(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller, state: str
) -> None:
    # Given a process not placed on an agent
    put_process(store, "proc1", state)
    # When its logs are asked for, Then a clear BadRequestError and no call
    with pytest.raises(
        BadRequestError, match=f"process proc1 is not assigned to an agent \\(it is {state}\\)"
    ):
        logs.get_process_logs("proc1")
    assert caller.calls == []


def test_an_agent_that_does_not_answer_is_named(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller
) -> None:
    # Given a running process whose agent does not answer
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    caller.answer = RpcTimeoutError("no reply")
    # When its logs are asked for, Then the timeout names the agent, process and round
    with pytest.raises(
        RpcTimeoutError,
        match=re.escape(
            "eeagent eeagent_1 did not answer get_process_logs for process proc1 round 0 "
            "within 2.5 s"
        ),
    ):
        logs.get_process_logs("proc1")


def test_an_unreachable_broker_names_the_agent(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller
) -> None:
    # Given the broker is down
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    caller.answer = TransportError("connection refused")
    # When logs are asked for, Then a TransportError names the agent
    with pytest.raises(TransportError, match="cannot reach eeagent eeagent_1"):
        logs.get_process_logs("proc1")


@pytest.mark.parametrize(
    "error",
    [NotFoundError("no process proc1 round 0 on agent eeagent_1"), RemoteError("OSError", "disk")],
)
def test_errors_raised_by_the_agent_are_passed_on(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller, error: Exception
) -> None:
    # Given an agent that raises
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    caller.answer = error
    # When logs are asked for, Then the agent's error reaches the caller
    with pytest.raises(type(error)):
        logs.get_process_logs("proc1")


def test_a_legacy_agent_without_the_operation_is_explained(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller
) -> None:
    # Given an agent that has no get_process_logs operation
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    caller.answer = UnknownOperationError("Unknown operation: get_process_logs")
    # When logs are asked for, Then the error says the agent cannot serve logs
    with pytest.raises(BadRequestError, match="eeagent eeagent_1 cannot serve logs"):
        logs.get_process_logs("proc1")


def test_a_dispatcher_without_a_caller_says_so(handler: HeartbeatHandler, store: Store) -> None:
    # Given a handler built without a caller, When logs are asked for, Then TransportError
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    with pytest.raises(TransportError, match="not set up to call eeagents"):
        handler.get_process_logs("proc1")


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"upid": "bad upid"}, "upid"),
        ({"upid": 5}, "upid"),
        ({"upid": "proc1", "stream": "stdin"}, "stream"),
        ({"upid": "proc1", "tail_bytes": 0}, "tail_bytes"),
        ({"upid": "proc1", "tail_bytes": -5}, "tail_bytes"),
        ({"upid": "proc1", "tail_bytes": 4 * 1024 * 1024 + 1}, "tail_bytes"),
        ({"upid": "proc1", "tail_bytes": "100"}, "tail_bytes"),
        ({"upid": "proc1", "tail_bytes": True}, "tail_bytes"),
        ({"upid": "proc1", "tail_bytes": 10.0}, "tail_bytes"),
    ],
)
def test_bad_arguments_are_rejected_before_anything_is_asked(
    logs: HeartbeatHandler, store: Store, caller: FakeCaller, args: dict[str, Any], field: str
) -> None:
    # Given a running process
    put_process(store, "proc1", ProcessState.RUNNING, assigned="eeagent_1")
    # When logs are asked for with a bad argument, Then BadRequestError naming it
    with pytest.raises(BadRequestError, match=f"invalid {field}"):
        logs.get_process_logs(**args)
    assert caller.calls == []

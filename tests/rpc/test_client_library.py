"""The client library's methods are derived from the operations' request models.

Each method of :class:`~dispatcher.client.ProcessDispatcherClient` calls the
operation of the same name with exactly the request model's fields as arguments
(the legacy wire form); the identifying arguments legacy callers pass by position
still may be, every other one is keyword-only.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

import pytest

from dashi.operations import operations_of
from dispatcher.client import ProcessDispatcherClient
from dispatcher.core import ProcessDispatcherCore
from dispatcher.heartbeats import HeartbeatHandler
from dispatcher.requests import QueueingModeName, RestartModeName
from pdcommon.heartbeat_messages import InstanceStateName
from pdcommon.states import InstanceState, QueueingMode, RestartMode

#: Operations no client method calls: eeagents send heartbeats.
NOT_IN_CLIENT = {"heartbeat"}

#: Arguments legacy callers pass by position (the legacy Process Dispatcher client's
#: signatures; the rest were passed by keyword).
LEGACY_POSITIONAL = {
    "create_definition": ["definition_id", "definition_type", "executable"],
    "update_definition": ["definition_id", "definition_type", "executable"],
    "describe_definition": ["definition_id"],
    "remove_definition": ["definition_id"],
    "create_process": ["upid", "definition_id"],
    "schedule_process": ["upid", "definition_id"],
    "describe_process": ["upid"],
    "restart_process": ["upid"],
    "terminate_process": ["upid"],
    "set_system_boot": ["system_boot"],
    "node_state": ["node_id", "domain_id", "state"],
    "add_engine": ["definition"],
    "get_process_logs": ["upid"],
    "describe_process_events": ["upid"],
    # new operations take keyword arguments only
    "terminate_processes": [],
    "set_group_ttl": ["group", "ttl_seconds"],
}


class Recorder:
    """Stands in for the RPC client: records each call, answers ``None``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any] | None]] = []

    def call(self, service: str, op: str, *, timeout: float, args: Any = None) -> Any:
        self.calls.append((service, op, args))
        return None

    def close(self) -> None:
        pass


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> ProcessDispatcherClient:
    return ProcessDispatcherClient(recorder, "pd")  # type: ignore[arg-type]


SERVED = [*operations_of(ProcessDispatcherCore), *operations_of(HeartbeatHandler)]


@pytest.mark.parametrize("op", SERVED, ids=lambda op: op.name)
def test_every_operation_has_a_client_method_with_the_models_fields(op: Any) -> None:
    if op.name in NOT_IN_CLIENT:
        assert not hasattr(ProcessDispatcherClient, op.name)
        return
    parameters = list(inspect.signature(getattr(ProcessDispatcherClient, op.name)).parameters)
    assert parameters == ["self", *op.model.model_fields]


@pytest.mark.parametrize("op", SERVED, ids=lambda op: op.name)
def test_only_the_legacy_positional_arguments_may_be_passed_by_position(op: Any) -> None:
    if op.name in NOT_IN_CLIENT:
        return
    parameters = list(
        inspect.signature(getattr(ProcessDispatcherClient, op.name)).parameters.values()
    )[1:]
    positional = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keyword_only = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert positional == LEGACY_POSITIONAL.get(op.name, [])
    assert positional + keyword_only == [p.name for p in parameters]


def test_the_modes_are_typed_with_the_states_values() -> None:
    assert typing.get_args(QueueingModeName) == QueueingMode.ALL
    assert typing.get_args(RestartModeName) == RestartMode.ALL
    states = {v for k, v in vars(InstanceState).items() if k.isupper() and isinstance(v, str)}
    assert set(typing.get_args(InstanceStateName)) == states
    hints = typing.get_type_hints(ProcessDispatcherClient.schedule_process)
    assert hints["queueing_mode"] == QueueingModeName | None
    assert hints["restart_mode"] == RestartModeName | None


def test_schedule_process_sends_every_legacy_argument_by_name(
    client: ProcessDispatcherClient, recorder: Recorder
) -> None:
    client.schedule_process(
        "p1",
        "D",
        configuration={"k": 1},
        subscribers=[("sub", "op")],
        restart_mode="NEVER",
    )
    assert recorder.calls == [
        (
            "pd",
            "schedule_process",
            {
                "upid": "p1",
                "definition_id": "D",
                "configuration": {"k": 1},
                "subscribers": [["sub", "op"]],
                "constraints": None,
                "queueing_mode": None,
                "restart_mode": "NEVER",
                "execution_engine_id": None,
                "node_exclusive": None,
                "name": None,
            },
        )
    ]


def test_legacy_positional_calls_keep_working_and_the_rest_is_keyword_only(
    client: ProcessDispatcherClient, recorder: Recorder
) -> None:
    client.create_definition("D", "supd", {"exec": "/bin/true"})
    client.create_process("p1", "D")
    client.node_state("node1", "pd_domain_e1", "600-RUNNING")
    client.describe_processes()
    assert [(op, args) for _, op, args in recorder.calls] == [
        (
            "create_definition",
            {
                "definition_id": "D",
                "definition_type": "supd",
                "executable": {"exec": "/bin/true"},
                "name": None,
                "description": None,
            },
        ),
        ("create_process", {"upid": "p1", "definition_id": "D", "name": None}),
        ("node_state", {"node_id": "node1", "domain_id": "pd_domain_e1", "state": "600-RUNNING"}),
        ("describe_processes", None),
    ]
    with pytest.raises(TypeError):
        client.schedule_process("p1", "D", {"k": 1})  # type: ignore[misc]
    with pytest.raises(TypeError):
        client.get_process_logs("p1", "stderr")  # type: ignore[misc]
    assert len(recorder.calls) == 4


def test_a_definition_max_runtime_is_sent_only_when_given(
    client: ProcessDispatcherClient, recorder: Recorder
) -> None:
    # Given definitions created and updated with and without the new argument
    client.create_definition("D", "supd", {"exec": "/bin/true"}, max_runtime_seconds=30)
    client.update_definition("D", "supd", {"exec": "/bin/true"}, max_runtime_seconds=60.5)
    client.update_definition("D", "supd", {"exec": "/bin/true"})
    # Then it is sent when given; without it the request has the legacy arguments only
    sent = [args for _, _, args in recorder.calls]
    assert [args and args.get("max_runtime_seconds") for args in sent] == [30, 60.5, None]
    assert sent[2] is not None and set(sent[2]) == {
        "definition_id", "definition_type", "executable", "name", "description",
    }  # fmt: skip

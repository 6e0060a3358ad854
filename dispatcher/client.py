"""The Python client library of the Process Dispatcher.

Example (runs against a dispatcher started with ``pd-dispatcher`` on the embedded
defaults, or any broker given by ``PD_AMQP_URI``)::

    from dispatcher.client import ProcessDispatcherClient

    with ProcessDispatcherClient.from_environment() as pd:
        pd.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["60"]})
        pd.schedule_process("sleep-1", "sleeper", restart_mode="NEVER")
        print(pd.describe_process("sleep-1")["state"])   # "200-REQUESTED" ... "500-RUNNING"
        pd.terminate_process("sleep-1")

A complete, runnable example is ``docs/examples/client_quickstart.py`` (a test runs
it against a real ``pd-dispatcher``).

Every method is one RPC with the legacy operation and keyword-argument names,
both taken from the operation's request model (:mod:`dispatcher.requests`,
:mod:`pdcommon.heartbeat_messages`): a method's parameters are the model's
fields. The identifying arguments that legacy callers pass by position
(``upid``, ``definition_id`` ...) may still be; every other argument is
keyword-only, and the modes are typed (:data:`~dispatcher.requests.RestartModeName`
...). Results are plain JSON values (typed below as ``TypedDict``\\ s); errors are the
types of :mod:`dashi.errors`: ``BadRequestError``, ``NotFoundError``,
``WriteConflictError``, ``UnknownOperationError``, ``RemoteError``, and
``RpcTimeoutError`` when no reply arrives in time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from dashi.client import DEFAULT_TIMEOUT, RpcClient
from dispatcher.requests import (
    CreateDefinitionRequest,
    CreateProcessRequest,
    DescribeDefinitionRequest,
    DescribeProcessesRequest,
    DescribeProcessEventsRequest,
    DescribeProcessRequest,
    DumpRequest,
    ListDefinitionsRequest,
    QueueingModeName,
    RemoveDefinitionRequest,
    RestartModeName,
    RestartProcessRequest,
    ScheduleProcessRequest,
    SetGroupTtlRequest,
    SetSystemBootRequest,
    TerminateProcessesRequest,
    TerminateProcessRequest,
    UpdateDefinitionRequest,
)
from pdcommon.heartbeat_messages import (
    AddEngineRequest,
    GetProcessLogsRequest,
    InstanceStateName,
    ListEnginesRequest,
    LogStream,
    NodeStateRequest,
)
from pdcommon.requests import Request
from pdcommon.settings import DEFAULT_SERVICE_NAME, Settings, load_settings
from pdcommon.wire import broker_config, client_signer

__all__ = [
    "DefinitionRecord",
    "DumpResult",
    "ProcessDispatcherClient",
    "ProcessEvent",
    "ProcessRecord",
    "ProcessSummary",
    "TerminateProcessesResult",
]


class ProcessSummary(TypedDict):
    """The legacy "process dict" returned by create/schedule/restart/terminate."""

    upid: str
    state: str
    round: int
    assigned: str | None


class ProcessRecord(ProcessSummary, total=False):
    """The full process record returned by ``describe_process(es)`` and in ``dump``."""

    owner: None
    name: str | None
    definition: dict[str, Any]
    configuration: Any
    constraints: dict[str, Any]
    subscribers: list[list[str]] | None
    queueing_mode: str | None
    restart_mode: str | None
    node_exclusive: str | None
    hostname: str | None
    starts: int
    start_times: list[float]
    dispatches: int
    dispatch_times: list[float]
    # new, additive keys
    exit_code: int | None
    signal: int | None
    reason: str | None
    started_at: float | None
    ended_at: float | None
    restarts: int
    next_restart_at: float | None
    max_runtime_seconds: float | None
    restart_policy: dict[str, Any] | None
    failure_times: list[float]
    effective_restart_mode: str
    # only when set
    group: str
    labels: dict[str, str]


class TerminateProcessesResult(TypedDict):
    """The reply of ``terminate_processes``: what it did, upids in creation order."""

    terminated: list[str]
    already_ended: list[str]
    failed: list[str]


class ProcessEvent(TypedDict):
    """One entry of ``describe_process_events``."""

    id: int
    upid: str
    round: int
    time: float
    state: str
    reason: str | None
    agent: str | None
    node: str | None
    exit_code: int | None
    signal: int | None
    output: dict[str, str] | None


class _LegacyDefinitionRecord(TypedDict):
    definition_id: str
    definition_type: str | None
    executable: Any
    name: str | None
    description: str | None
    version: None


class DefinitionRecord(_LegacyDefinitionRecord, total=False):
    """``describe_definition()``: the six legacy keys, and ``max_runtime_seconds``
    (new) only when the definition has one."""

    max_runtime_seconds: float


class DumpResult(TypedDict, total=False):
    """``dump()``: the legacy three maps, plus ``vms`` (the provisioner's nodes) and,
    once the matchmaker has set a process aside, ``set_aside`` (upid → ``round``,
    ``reason``, ``time``); ``system`` (dispatcher state, boot flag, pending boot
    initialisation, held-back count) and ``engines`` (engine id → status, need
    and why: :mod:`dispatcher.engine_status`); ``group_expiries`` (group → epoch
    seconds of its deadline) once a group has a time to live."""

    resources: dict[str, dict[str, Any]]
    processes: dict[str, ProcessRecord]
    nodes: dict[str, dict[str, Any]]
    vms: dict[str, dict[str, Any]]
    set_aside: dict[str, dict[str, Any]]
    system: dict[str, Any]
    engines: dict[str, dict[str, Any]]
    group_expiries: dict[str, float]


class ProcessDispatcherClient:
    """One method per dispatcher RPC.

    Args:
        rpc: the RPC client to send through.
        service_name: the dispatcher's service name (``processdispatcher.service_name``).
        timeout: seconds each call waits for its reply.
    """

    def __init__(
        self,
        rpc: RpcClient,
        service_name: str = DEFAULT_SERVICE_NAME,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.rpc = rpc
        self.service_name = service_name
        self.timeout = timeout

    @classmethod
    def from_settings(
        cls, settings: Settings, *, name: str = "pd-client", timeout: float = DEFAULT_TIMEOUT
    ) -> ProcessDispatcherClient:
        """A client for the dispatcher the settings describe.

        With ``security.client`` set (or ``PD_PRINCIPAL``/``PD_SECRET``), every
        request is signed as that principal (see :mod:`pdcommon.auth`).
        """
        rpc = RpcClient(
            broker_config(settings), name, timeout=timeout, signer=client_signer(settings)
        )
        return cls(rpc, settings.processdispatcher.service_name, timeout=timeout)

    @classmethod
    def from_environment(
        cls, config_files: Sequence[str] = (), *, timeout: float = DEFAULT_TIMEOUT
    ) -> ProcessDispatcherClient:
        """A client configured like ``pd-cli``: config files, then ``PD_*`` variables."""
        return cls.from_settings(load_settings(config_files, os.environ), timeout=timeout)

    def close(self) -> None:
        self.rpc.close()

    def __enter__(self) -> ProcessDispatcherClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(
        self, model: type[Request], arguments: Mapping[str, Any], *, omit_none: Sequence[str] = ()
    ) -> Any:
        """Call ``model``'s operation with the arguments named by its fields.

        Args:
            model: the operation's request model (its name and argument names).
            arguments: the calling method's ``locals()``: its parameters, named
                as the model's fields.
            omit_none: fields left out of the request when ``None``.
        """
        args = {
            name: _plain(arguments[name])
            for name in model.model_fields
            if name in arguments and not (name in omit_none and arguments[name] is None)
        }
        return self.rpc.call(
            self.service_name, model.operation, timeout=self.timeout, args=args or None
        )

    # -- definitions --------------------------------------------------------------

    def create_definition(
        self,
        definition_id: str,
        definition_type: str | None,
        executable: Any,
        *,
        name: str | None = None,
        description: str | None = None,
        max_runtime_seconds: float | None = None,
    ) -> None:
        """Store a new definition; an existing id raises ``WriteConflictError``.

        ``max_runtime_seconds`` (new: the default of the processes scheduled with
        it) is sent only when given, so a legacy dispatcher still takes the call.
        """
        self._send(CreateDefinitionRequest, locals(), omit_none=("max_runtime_seconds",))

    def describe_definition(self, definition_id: str) -> DefinitionRecord | None:
        """The definition, or ``None`` if it is unknown."""
        result: DefinitionRecord | None = self._send(DescribeDefinitionRequest, locals())
        return result

    def update_definition(
        self,
        definition_id: str,
        definition_type: str | None,
        executable: Any,
        *,
        name: str | None = None,
        description: str | None = None,
        max_runtime_seconds: float | None = None,
    ) -> None:
        """Replace a definition whole; an unknown id raises ``NotFoundError``.

        Omitting ``max_runtime_seconds`` leaves the definition without a default,
        like ``name`` and ``description``; it is sent only when given.
        """
        self._send(UpdateDefinitionRequest, locals(), omit_none=("max_runtime_seconds",))

    def remove_definition(self, definition_id: str) -> None:
        self._send(RemoveDefinitionRequest, locals())

    def list_definitions(self) -> list[str]:
        result: list[str] = self._send(ListDefinitionsRequest, locals())
        return result

    # -- processes ----------------------------------------------------------------

    def create_process(
        self, upid: str, definition_id: str, *, name: str | None = None
    ) -> ProcessSummary:
        result: ProcessSummary = self._send(CreateProcessRequest, locals())
        return result

    def schedule_process(
        self,
        upid: str,
        definition_id: str | None = None,
        *,
        configuration: Mapping[str, Any] | None = None,
        subscribers: Sequence[Sequence[str]] | None = None,
        constraints: Mapping[str, Any] | None = None,
        queueing_mode: QueueingModeName | None = None,
        restart_mode: RestartModeName | None = None,
        execution_engine_id: str | None = None,
        node_exclusive: str | None = None,
        name: str | None = None,
        restart_policy: Mapping[str, Any] | None = None,
        max_runtime_seconds: float | None = None,
        group: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> ProcessSummary:
        """Schedule (or reschedule) a process; idempotent while it is in play.

        ``restart_policy``, ``max_runtime_seconds``, ``group`` and ``labels`` are
        new: sent only when given, so a legacy dispatcher still takes the call
        without them.
        """
        result: ProcessSummary = self._send(
            ScheduleProcessRequest,
            locals(),
            omit_none=("restart_policy", "max_runtime_seconds", "group", "labels"),
        )
        return result

    def describe_process(self, upid: str) -> ProcessRecord | None:
        result: ProcessRecord | None = self._send(DescribeProcessRequest, locals())
        return result

    def describe_process_events(self, upid: str, *, limit: int = 20) -> list[ProcessEvent]:
        """The last ``limit`` events of a process, oldest first."""
        result: list[ProcessEvent] = self._send(DescribeProcessEventsRequest, locals())
        return result

    def describe_processes(
        self,
        *,
        states: Sequence[str] | None = None,
        engine: str | None = None,
        group: str | None = None,
        label_selector: str | None = None,
        name_prefix: str | None = None,
        upid_prefix: str | None = None,
    ) -> list[ProcessRecord]:
        """Every process's record, or those the (new, optional) filter selects.

        ``states`` are full (``500-RUNNING``) or bare (``RUNNING``) names;
        ``label_selector`` is Kubernetes-style (``app=web,tier!=db,env in (a,b),!x``).
        Filter arguments are sent only when given, so without them a legacy
        dispatcher still takes the call.
        """
        result: list[ProcessRecord] = self._send(
            DescribeProcessesRequest, locals(), omit_none=_FILTER_FIELDS
        )
        return result

    def restart_process(self, upid: str) -> ProcessSummary:
        result: ProcessSummary = self._send(RestartProcessRequest, locals())
        return result

    def terminate_process(self, upid: str) -> ProcessSummary:
        result: ProcessSummary = self._send(TerminateProcessRequest, locals())
        return result

    def terminate_processes(
        self,
        *,
        states: Sequence[str] | None = None,
        engine: str | None = None,
        group: str | None = None,
        label_selector: str | None = None,
        name_prefix: str | None = None,
        upid_prefix: str | None = None,
        all: bool = False,
    ) -> TerminateProcessesResult:
        """Terminate every process the filter selects (new operation).

        An empty filter raises ``BadRequestError`` unless ``all`` is true.
        """
        result: TerminateProcessesResult = self._send(
            TerminateProcessesRequest, locals(), omit_none=_FILTER_FIELDS
        )
        return result

    def set_group_ttl(self, group: str, ttl_seconds: float | None) -> dict[str, Any]:
        """Terminate every process of ``group`` ``ttl_seconds`` from now (new operation);
        ``None`` clears the deadline. Returns ``{"group", "expires_at"}``."""
        result: dict[str, Any] = self._send(SetGroupTtlRequest, locals())
        return result

    # -- system -------------------------------------------------------------------

    def set_system_boot(self, system_boot: bool) -> None:
        self._send(SetSystemBootRequest, locals())

    def dump(self) -> DumpResult:
        result: DumpResult = self._send(DumpRequest, locals())
        return result

    def node_state(
        self,
        node_id: str,
        domain_id: str | None,
        state: InstanceStateName,
        *,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        self._send(NodeStateRequest, locals(), omit_none=("properties",))

    def add_engine(self, definition: Mapping[str, Any]) -> None:
        """Add an engine (``engine_id``, ``slots`` and the other engine keys)."""
        self._send(AddEngineRequest, locals())

    def list_engines(self) -> dict[str, dict[str, Any]]:
        """Engine id → its settings (configured and added)."""
        result: dict[str, dict[str, Any]] = self._send(ListEnginesRequest, locals())
        return result

    def get_process_logs(
        self, upid: str, *, stream: LogStream = "stdout", tail_bytes: int = 65536
    ) -> Any:
        return self._send(GetProcessLogsRequest, locals())


#: The filter arguments of the listings, left out of a request when ``None``.
_FILTER_FIELDS = ("states", "engine", "group", "label_selector", "name_prefix", "upid_prefix")


def _plain(value: Any) -> Any:
    """A mapping as a dict, a sequence (and the sequences in it) as lists: JSON's shapes."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple):
        return [list(item) if isinstance(item, tuple) else item for item in value]
    return value

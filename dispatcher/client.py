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

Every method is one RPC with the legacy operation and keyword-argument names.
Results are plain JSON values (typed below as ``TypedDict``\\ s); errors are the
types of :mod:`dashi.errors`: ``BadRequestError``, ``NotFoundError``,
``WriteConflictError``, ``UnknownOperationError``, ``RemoteError``, and
``RpcTimeoutError`` when no reply arrives in time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from dashi.client import DEFAULT_TIMEOUT, RpcClient
from pdcommon.settings import DEFAULT_SERVICE_NAME, Settings, load_settings
from pdcommon.wire import broker_config

__all__ = [
    "DefinitionRecord",
    "DumpResult",
    "ProcessDispatcherClient",
    "ProcessRecord",
    "ProcessSummary",
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


class DefinitionRecord(TypedDict):
    definition_id: str
    definition_type: str | None
    executable: Any
    name: str | None
    description: str | None
    version: None


class DumpResult(TypedDict, total=False):
    """``dump()``: the legacy three maps, plus ``vms`` (the provisioner's nodes) and,
    once the matchmaker has set a process aside, ``set_aside`` (upid → ``round``,
    ``reason``, ``time``)."""

    resources: dict[str, dict[str, Any]]
    processes: dict[str, ProcessRecord]
    nodes: dict[str, dict[str, Any]]
    vms: dict[str, dict[str, Any]]
    set_aside: dict[str, dict[str, Any]]


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
        """A client for the dispatcher the settings describe."""
        rpc = RpcClient(broker_config(settings), name, timeout=timeout)
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

    def _call(self, op: str, **args: Any) -> Any:
        return self.rpc.call(self.service_name, op, timeout=self.timeout, args=args or None)

    # -- definitions --------------------------------------------------------------

    def create_definition(
        self,
        definition_id: str,
        definition_type: str | None,
        executable: Any,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        """Store a new definition; an existing id raises ``WriteConflictError``."""
        self._call(
            "create_definition",
            definition_id=definition_id,
            definition_type=definition_type,
            executable=executable,
            name=name,
            description=description,
        )

    def describe_definition(self, definition_id: str) -> DefinitionRecord | None:
        """The definition, or ``None`` if it is unknown."""
        result: DefinitionRecord | None = self._call(
            "describe_definition", definition_id=definition_id
        )
        return result

    def update_definition(
        self,
        definition_id: str,
        definition_type: str | None,
        executable: Any,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        """Replace a definition whole; an unknown id raises ``NotFoundError``."""
        self._call(
            "update_definition",
            definition_id=definition_id,
            definition_type=definition_type,
            executable=executable,
            name=name,
            description=description,
        )

    def remove_definition(self, definition_id: str) -> None:
        self._call("remove_definition", definition_id=definition_id)

    def list_definitions(self) -> list[str]:
        result: list[str] = self._call("list_definitions")
        return result

    # -- processes ----------------------------------------------------------------

    def create_process(
        self, upid: str, definition_id: str, name: str | None = None
    ) -> ProcessSummary:
        result: ProcessSummary = self._call(
            "create_process", upid=upid, definition_id=definition_id, name=name
        )
        return result

    def schedule_process(
        self,
        upid: str,
        definition_id: str | None = None,
        configuration: Mapping[str, Any] | None = None,
        subscribers: Sequence[Sequence[str]] | None = None,
        constraints: Mapping[str, Any] | None = None,
        queueing_mode: str | None = None,
        restart_mode: str | None = None,
        execution_engine_id: str | None = None,
        node_exclusive: str | None = None,
        name: str | None = None,
    ) -> ProcessSummary:
        """Schedule (or reschedule) a process; idempotent while it is in play."""
        result: ProcessSummary = self._call(
            "schedule_process",
            upid=upid,
            definition_id=definition_id,
            configuration=dict(configuration) if configuration is not None else None,
            subscribers=[list(pair) for pair in subscribers] if subscribers is not None else None,
            constraints=dict(constraints) if constraints is not None else None,
            queueing_mode=queueing_mode,
            restart_mode=restart_mode,
            execution_engine_id=execution_engine_id,
            node_exclusive=node_exclusive,
            name=name,
        )
        return result

    def describe_process(self, upid: str) -> ProcessRecord | None:
        result: ProcessRecord | None = self._call("describe_process", upid=upid)
        return result

    def describe_processes(self) -> list[ProcessRecord]:
        result: list[ProcessRecord] = self._call("describe_processes")
        return result

    def restart_process(self, upid: str) -> ProcessSummary:
        result: ProcessSummary = self._call("restart_process", upid=upid)
        return result

    def terminate_process(self, upid: str) -> ProcessSummary:
        result: ProcessSummary = self._call("terminate_process", upid=upid)
        return result

    # -- system -------------------------------------------------------------------

    def set_system_boot(self, system_boot: bool) -> None:
        self._call("set_system_boot", system_boot=system_boot)

    def dump(self) -> DumpResult:
        result: DumpResult = self._call("dump")
        return result

    def node_state(
        self,
        node_id: str,
        domain_id: str,
        state: str,
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        args: dict[str, Any] = {"node_id": node_id, "domain_id": domain_id, "state": state}
        if properties is not None:
            args["properties"] = dict(properties)
        self._call("node_state", **args)

    def add_engine(self, definition: Mapping[str, Any]) -> None:
        """Add an engine (``engine_id``, ``slots`` and the other engine keys)."""
        self._call("add_engine", definition=dict(definition))

    def list_engines(self) -> dict[str, dict[str, Any]]:
        """Engine id → its settings (configured and added)."""
        result: dict[str, dict[str, Any]] = self._call("list_engines")
        return result

    def get_process_logs(self, upid: str, stream: str = "stdout", tail_bytes: int = 65536) -> Any:
        return self._call("get_process_logs", upid=upid, stream=stream, tail_bytes=tail_bytes)

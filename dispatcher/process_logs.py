"""Process output on demand: ``get_process_logs`` asks the agent that runs the process.

For a process on no agent (its round ended, it waits for a restart, or its agent
forgot the round), the output kept with its events is served instead: the last
few KiB of each stream an agent sent when a round ended (:mod:`dispatcher.events`),
so the output of an ended process stays readable after its agent or VM is gone.

Otherwise it looks up which eeagent holds the
process's current round and calls that agent's ``get_process_logs(u_pid, round,
stream, tail_bytes)`` with a short timeout, through an injected
:class:`AgentCaller` (an RPC client at the edge; a fake in tests), so this module
stays free of broker code.

Errors, chosen so that the caller can tell what happened without new wire types:

* unknown process: ``NotFoundError``; process not placed on an agent and no kept
  output: ``BadRequestError("process X is not assigned to an agent (it is <state>)
  and no output of an ended round is kept")``;
* the agent raised ``NotFoundError`` (it no longer holds that round) and no output
  is kept, or ``BadRequestError``: passed on as is;
* the agent does not know the operation (a legacy agent): ``BadRequestError``
  saying so (an ``UnknownOperationError`` would wrongly suggest that the
  *dispatcher* lacks the operation);
* no answer in time: ``RpcTimeoutError`` naming the agent, process, round and
  timeout. It is not one of the four dashi error types, so a remote caller gets a
  generic remote error of type ``RpcTimeoutError`` with that message: the name says
  exactly what happened, and a client cannot mistake it for its own call timing out
  (which raises ``RpcTimeoutError`` itself);
* broker unreachable: ``TransportError`` naming the agent.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from dashi.errors import (
    BadRequestError,
    NotFoundError,
    RpcTimeoutError,
    TransportError,
    UnknownOperationError,
)
from dispatcher.events import EventLog
from dispatcher.store.base import Store
from pdcommon.heartbeat_messages import GetProcessLogsRequest

__all__ = ["DEFAULT_LOGS_TIMEOUT", "AgentCaller", "ProcessLogs"]

#: Events searched (newest first) for kept output.
_EVENTS_SEARCHED: Final = 20
#: Seconds ``get_process_logs`` waits for the agent's answer.
DEFAULT_LOGS_TIMEOUT: Final = 5.0


class AgentCaller(Protocol):
    """Calls an operation on an eeagent and waits for its answer (an RPC client)."""

    def call(self, service: str, op: str, timeout: float | None = None, **args: Any) -> Any:
        """Call ``op`` on the agent named ``service`` (see ``RpcClient.call``).

        Raises:
            RequestError: the agent raised a known error (NotFound, BadRequest ...).
            RemoteError: the agent raised another error.
            RpcTimeoutError: no answer within ``timeout`` seconds.
            TransportError: the broker could not be reached.
        """


class ProcessLogs:
    """Fetches a process's output from its agent.

    Args:
        store: where processes live.
        caller: calls eeagents; ``None`` makes every request fail with
            ``TransportError`` (a dispatcher wired without one).
        timeout: seconds to wait for the agent.
        events: the event history, whose kept output is served for a process on
            no agent (``None``: none is).
    """

    def __init__(
        self,
        store: Store,
        caller: AgentCaller | None,
        *,
        timeout: float = DEFAULT_LOGS_TIMEOUT,
        events: EventLog | None = None,
    ) -> None:
        self.store = store
        self.caller = caller
        self.timeout = timeout
        self.events = events

    def kept_output(self, upid: str, stream: str, tail_bytes: int) -> str | None:
        """The ``stream`` output kept with ``upid``'s latest ended round, or None."""
        if self.events is None:
            return None
        for event in reversed(self.events.list(upid, _EVENTS_SEARCHED)):
            output = event.get("output")
            if isinstance(output, dict) and isinstance(output.get(stream), str):
                text: str = output[stream]
                return text.encode("utf-8")[-tail_bytes:].decode("utf-8", "ignore")
        return None

    def get_process_logs(self, upid: str, stream: str = "stdout", tail_bytes: int = 65536) -> str:
        """The last ``tail_bytes`` bytes a process wrote to ``stream``, as text.

        Args:
            upid: the process.
            stream: ``"stdout"`` or ``"stderr"``.
            tail_bytes: how many bytes from the end (1 to 4 MiB).

        Raises:
            BadRequestError: an argument is invalid; the process is not assigned to
                an agent; or its agent does not support the operation.
            NotFoundError: there is no such process, or its agent no longer holds
                its current round.
            RpcTimeoutError: the agent did not answer in time.
            TransportError: the agent could not be reached.

        Returns:
            The text (invalid UTF-8 replaced by the agent).
        """
        req = GetProcessLogsRequest.parse(upid=upid, stream=stream, tail_bytes=tail_bytes)
        process = self.store.get_process(req.upid)
        if process is None:
            raise NotFoundError(f"process {req.upid} does not exist")
        agent = process.assigned
        if agent is None:
            kept = self.kept_output(req.upid, req.stream, req.tail_bytes)
            if kept is not None:
                return kept
            raise BadRequestError(
                f"process {req.upid} is not assigned to an agent (it is {process.state}) "
                "and no output of an ended round is kept"
            )
        if self.caller is None:
            raise TransportError("this dispatcher is not set up to call eeagents")
        try:
            result = self.caller.call(
                agent,
                "get_process_logs",
                timeout=self.timeout,
                u_pid=req.upid,
                round=process.round,
                stream=req.stream,
                tail_bytes=req.tail_bytes,
            )
        except NotFoundError:
            kept = self.kept_output(req.upid, req.stream, req.tail_bytes)
            if kept is None:
                raise
            return kept
        except UnknownOperationError:
            raise BadRequestError(
                f"eeagent {agent} cannot serve logs (it has no get_process_logs operation)"
            ) from None
        except RpcTimeoutError as exc:
            raise RpcTimeoutError(
                f"eeagent {agent} did not answer get_process_logs for process {req.upid} "
                f"round {process.round} within {self.timeout:g} s"
            ) from exc
        except TransportError as exc:
            raise TransportError(
                f"cannot reach eeagent {agent} for the logs of process {req.upid}: {exc}"
            ) from exc
        return result if isinstance(result, str) else str(result)

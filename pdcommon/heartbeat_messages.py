"""Validated arguments of the health RPCs: the eeagent heartbeat and its companions.

The heartbeat is fired by every eeagent (see docs/rpc.md)::

    {"eeagent_id": "agent1",                         # ignored
     "node_id": "node1",                             # needed for the first heartbeat
     "timestamp": "2013-10-21T19:52:05.123456+00:00",  # RFC 3339, offset required
     "processes": [{"upid": "p1", "round": "0",        # int or string of digits
                    "state": [500, "RUNNING"],         # or "500-RUNNING"
                    "msg": "None"}]}                   # ignored

:meth:`HeartbeatMessage.parse` accepts exactly that shape (unknown keys are ignored,
for agents newer than this dispatcher) and turns every other input into a
:class:`~dashi.errors.BadRequestError` naming the offending field. A reported
``state`` is normalised to the ``"NNN-NAME"`` string the state machine compares.

The sender header ``"<sysname>.<agent name>"`` gives the resource id: the text after
the last ``.`` (:func:`resource_id_from_sender`).
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from dashi.errors import BadRequestError
from pdcommon.requests import Identifier, JsonObject, Request
from pdcommon.roles import OperationRole

__all__ = [
    "MAX_LOG_TAIL",
    "AddEngineRequest",
    "GetProcessLogsRequest",
    "HeartbeatMessage",
    "HeartbeatRequest",
    "InstanceStateName",
    "ListEnginesRequest",
    "LogStream",
    "NodeStateRequest",
    "ReportedProcess",
    "resource_id_from_sender",
]

#: Largest ``tail_bytes`` ``get_process_logs`` accepts (the eeagent's own limit).
MAX_LOG_TAIL: Final = 4 * 1024 * 1024
#: Characters of each output stream kept from a heartbeat (the agent sends 4 KiB).
MAX_REPORTED_OUTPUT: Final = 8192
#: Characters of a reported reason kept.
MAX_REPORTED_REASON: Final = 1000
#: Longest resource (eeagent) id accepted from a sender header.
_MAX_RESOURCE_ID = 255
_STATE = re.compile(r"^[0-9]{3}-[A-Z_]+$")

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
#: A node state ``node_state`` acts on (:class:`~pdcommon.states.InstanceState`);
#: any other string is accepted and ignored.
InstanceStateName = Literal[
    "200-REQUESTED",
    "400-PENDING",
    "500-STARTED",
    "600-RUNNING",
    "700-TERMINATING",
    "800-TERMINATED",
    "900-FAILED",
    "950-REJECTED",
]
#: The output streams of a process.
LogStream = Literal["stdout", "stderr"]


def _round(value: Any) -> Any:
    """An int, or a string of ASCII digits (what the legacy agent sends), as an int."""
    if isinstance(value, bool):
        raise ValueError("round must be an integer, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("round must not be negative")
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(f"round must be an integer or a string of digits, not {value!r}")


def _state(value: Any) -> Any:
    """``"500-RUNNING"``, or ``[500, "RUNNING"]`` joined with ``-``."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ValueError(f"a state list must be [code, NAME], not {len(value)} elements")
        code, name = value
        if isinstance(code, bool) or not isinstance(code, int | str) or not isinstance(name, str):
            raise ValueError(f"a state list must be [code, NAME], not {value!r}")
        value = f"{code}-{name}"
    if not isinstance(value, str) or not _STATE.match(value):
        raise ValueError(f"state must look like '500-RUNNING' or [500, 'RUNNING'], not {value!r}")
    return value


def _timestamp(value: Any) -> Any:
    """An RFC 3339 string with a UTC offset, as an aware datetime."""
    if not isinstance(value, str):
        raise ValueError("timestamp must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"timestamp {value!r} is not RFC 3339") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no UTC offset")
    return parsed


def _lenient(kind: type) -> Any:
    """An optional additive field: a value of the wrong type counts as absent."""

    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            return None
        return value

    return BeforeValidator(check)


def _epoch(value: Any) -> float | None:
    """A finite, positive epoch time in seconds (int or float); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _output(value: Any) -> Any:
    """``{"stdout": str, "stderr": str}`` cut to :data:`MAX_REPORTED_OUTPUT` each; else None."""
    if not isinstance(value, dict):
        return None
    kept = {
        stream: text[-MAX_REPORTED_OUTPUT:]
        for stream, text in value.items()
        if stream in ("stdout", "stderr") and isinstance(text, str)
    }
    return kept or None


class ReportedProcess(BaseModel):
    """One entry of a heartbeat's ``processes``: what the agent holds.

    ``upid``, ``round`` and ``state`` are the legacy fields (``msg`` is legacy too,
    the string ``"None"`` when empty). The others are additive, sent by this
    project's agents for an ended round: ``exit_code``, ``signal``, ``reason``
    (the agent's words: "exited with code 3", "cannot start: ..."), ``output``
    (``{"stdout", "stderr"}``: the last few KiB of each) and ``started_at`` (when
    the round was spawned, epoch seconds: a round can end before a heartbeat ever
    showed it running). A value of the wrong type counts as absent.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    upid: NonEmptyStr
    round: Annotated[int, BeforeValidator(_round)]
    #: Normalised to ``"NNN-NAME"``.
    state: Annotated[str, BeforeValidator(_state)]
    msg: Annotated[str | None, _lenient(str)] = None
    exit_code: Annotated[int | None, _lenient(int)] = None
    signal: Annotated[int | None, _lenient(int)] = None
    reason: Annotated[str | None, _lenient(str)] = None
    output: Annotated[dict[str, str] | None, BeforeValidator(_output)] = None
    started_at: Annotated[float | None, BeforeValidator(_epoch)] = None

    @property
    def why(self) -> str | None:
        """The reason the agent gives: ``reason``, else a legacy ``msg`` other than "None"."""
        if self.reason:
            return self.reason[:MAX_REPORTED_REASON]
        if self.msg and self.msg != "None":
            return self.msg[:MAX_REPORTED_REASON]
        return None


class HeartbeatMessage(BaseModel):
    """The ``message`` argument of the ``heartbeat`` operation."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    eeagent_id: NonEmptyStr | None = None
    node_id: NonEmptyStr | None = None
    timestamp: Annotated[datetime, BeforeValidator(_timestamp)]
    processes: list[ReportedProcess]

    @classmethod
    def parse(cls, message: Any) -> Self:
        """Validate a heartbeat message as received.

        Raises:
            BadRequestError: the message is not a dict of the documented shape; the
                text names the first offending field (e.g. ``processes.0.round``).
        """
        if not isinstance(message, dict):
            raise BadRequestError(
                f"invalid heartbeat: message must be an object, not {type(message).__name__}"
            )
        try:
            return cls.model_validate(message)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in error["loc"]) or "message"
            reason = error["msg"].removeprefix("Value error, ")
            raise BadRequestError(f"invalid heartbeat: {where}: {reason}") from None


def resource_id_from_sender(sender: Any, eeagent_id: str | None = None) -> str:
    """The resource id of a heartbeat: the sender header's text after the last ``.``.

    Without a sender header (an in-process caller), the message's ``eeagent_id``
    is used instead.

    Args:
        sender: the ``sender`` header (``"<sysname>.<agent name>"`` or the bare name).
        eeagent_id: the message's ``eeagent_id``.

    Raises:
        BadRequestError: no usable name: not a string, empty after the last ``.``,
            too long, or containing whitespace or control characters.
    """
    if sender is None:
        sender = eeagent_id
    if not isinstance(sender, str):
        raise BadRequestError(f"invalid heartbeat: sender must be a string, not {sender!r}")
    resource_id = sender.rsplit(".", 1)[-1]
    if (
        not resource_id
        or len(resource_id) > _MAX_RESOURCE_ID
        or not resource_id.isprintable()
        or any(ch.isspace() for ch in resource_id)
    ):
        raise BadRequestError(f"invalid heartbeat: sender {sender!r} names no eeagent")
    return resource_id


class HeartbeatRequest(Request):
    """``heartbeat(message, sender)``: ``sender`` is the request's ``sender`` header.

    Both are checked by the handler (:meth:`HeartbeatMessage.parse`,
    :func:`resource_id_from_sender`), which logs what it drops.
    """

    operation: ClassVar[str] = "heartbeat"
    role: ClassVar[OperationRole] = OperationRole.AGENT
    check_limits: ClassVar[bool] = False

    message: Any
    sender: Any = None


class NodeStateRequest(Request):
    """``node_state(node_id, domain_id, state, properties=None)``."""

    operation: ClassVar[str] = "node_state"
    role: ClassVar[OperationRole] = OperationRole.ADMIN

    node_id: NonEmptyStr
    domain_id: str | None
    state: str
    properties: JsonObject | None = None


class GetProcessLogsRequest(Request):
    """``get_process_logs(upid, stream="stdout", tail_bytes=65536)``."""

    operation: ClassVar[str] = "get_process_logs"
    role: ClassVar[OperationRole] = OperationRole.READER

    upid: Identifier
    stream: LogStream = "stdout"
    tail_bytes: int = Field(65536, ge=1, le=MAX_LOG_TAIL)


class AddEngineRequest(Request):
    """``add_engine(definition)``: checked by
    :meth:`~dispatcher.engines.EngineRegistry.parse_definition` (limits included)."""

    operation: ClassVar[str] = "add_engine"
    role: ClassVar[OperationRole] = OperationRole.ADMIN
    check_limits: ClassVar[bool] = False

    definition: Any


class ListEnginesRequest(Request):
    """``list_engines()``: no arguments."""

    operation: ClassVar[str] = "list_engines"
    role: ClassVar[OperationRole] = OperationRole.READER

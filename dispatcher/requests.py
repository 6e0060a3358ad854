"""Validated arguments of the dispatcher's RPC operations: one pydantic model per operation.

Each model is the one declaration of its operation (see
:mod:`dashi.operations`): ``operation`` is its name on the wire, the
fields are its arguments in the legacy order, and the class variables are its
flags (``large_reply`` for the listings, ``replay`` for the state-changing
operations whose first result answers a redelivery, see :mod:`dispatcher.replay`).
A handler method registered with ``@operation(Model)`` takes the validated model;
the dispatch table, the operation lists and the client's names derive from them.

The core builds the model for an operation from the keyword arguments it received
(straight from the wire, or from an in-process caller) before it reads or writes
anything, so a rejected request writes nothing. :meth:`Request.parse` turns every
validation failure into a :class:`~dashi.errors.BadRequestError` whose
message names the offending field:

* identifiers (``upid``, ``definition_id``) must be non-empty strings of ASCII
  letters, digits and ``.-_``; anything else gives the legacy messages
  ``"invalid upid"`` / ``"invalid definition_id"``;
* ``queueing_mode`` must be one of :attr:`QueueingMode.ALL` or ``None`` and
  ``restart_mode`` one of :attr:`RestartMode.ALL` or ``None`` (the legacy system
  accepted unknown modes silently; this project rejects them);
* ``set_system_boot`` accepts exactly ``True`` or ``False``
  (``"expected a boolean value for system boot"``);
* every other field is type-checked strictly (no coercion: ``"1"`` is not an int,
  ``1`` is not a string) and gives ``"invalid <field>: <reason>"``.

Before any of that, every argument is checked against the request limits of
:mod:`pdcommon.limits` (nesting depth, JSON size of each argument and of all
together, a definition's ``exec``/``argv`` and ``env``): ``"invalid <field>:
nested more than 100 levels deep (the limit)"``, ``"invalid <field>: longer than
the limit of 1048576 bytes (1 MiB) as JSON"``. The checks never recurse, so no
argument can exhaust the interpreter's recursion limit here or later, when the
stored value is copied and encoded.

JSON-shaped values (``executable``, ``configuration``, ``constraints``,
``subscribers``) are normalised through a JSON round trip, exactly as the store
will hand them back (tuples become lists), so that the idempotency comparisons of
``schedule_process`` compare like with like. ``subscribers`` becomes a list of
``[name, operation]`` lists.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationError

from dispatcher.selectors import (
    LabelSelector,
    ProcessFilter,
    check_group,
    check_labels,
    normalize_states,
    parse_selector,
)
from pdcommon.limits import RequestLimits, check_executable
from pdcommon.requests import (
    Identifier,
    JsonObject,
    JsonValue,
    ReplayKind,
    Request,
    json_value,
)
from pdcommon.roles import OperationRole
from pdcommon.settings import RestartPolicySettings
from pdcommon.states import QueueingMode, RestartMode

__all__ = [
    "MAX_RUNTIME_LIMIT",
    "CreateDefinitionRequest",
    "CreateProcessRequest",
    "DescribeDefinitionRequest",
    "DescribeProcessEventsRequest",
    "DescribeProcessRequest",
    "DescribeProcessesRequest",
    "DumpRequest",
    "ListDefinitionsRequest",
    "MaxRuntime",
    "QueueingModeName",
    "RemoveDefinitionRequest",
    "ReplayKind",
    "Request",
    "RestartModeName",
    "RestartProcessRequest",
    "ScheduleProcessRequest",
    "SetGroupTtlRequest",
    "SetSystemBootRequest",
    "TerminateProcessRequest",
    "TerminateProcessesRequest",
    "UpdateDefinitionRequest",
]


def _one_of(allowed: tuple[str, ...]) -> BeforeValidator:
    """The legacy messages of a mode field (checked before the ``Literal`` type)."""

    def check(value: Any) -> Any:
        if value is None:
            return value
        if not isinstance(value, str):
            raise ValueError("Input should be a valid string")
        if value not in allowed:
            raise ValueError(f"{value!r} is not one of {', '.join(allowed)} (or null)")
        return value

    return BeforeValidator(check)


def _subscriber_pairs(value: Any) -> Any:
    """Accept a list (or tuple) of ``[name, operation]`` pairs of strings; give lists."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ValueError("expected a list of [name, operation] pairs")
    pairs: list[list[str]] = []
    for item in value:
        if (
            not isinstance(item, list | tuple)
            or len(item) != 2
            or not all(isinstance(part, str) for part in item)
        ):
            raise ValueError(f"expected [name, operation] pairs of strings, got {item!r}")
        pairs.append([item[0], item[1]])
    return pairs


Subscribers = Annotated[list[list[str]] | None, BeforeValidator(_subscriber_pairs)]
#: A process's ``group`` (see :mod:`dispatcher.selectors`).
Group = Annotated[str | None, BeforeValidator(check_group)]
#: A process's ``labels``: string keys to string values; ``{}`` becomes ``None``.
Labels = Annotated[dict[str, str] | None, BeforeValidator(check_labels)]
#: A list of process states, full or bare names; given back as full names.
States = Annotated[tuple[str, ...] | None, BeforeValidator(normalize_states)]


def _selector_text(value: Any) -> Any:
    """A label selector: checked by parsing it (the request keeps the parsed one)."""
    if value is None:
        return None
    parse_selector(value)
    return value


SelectorText = Annotated[str | None, BeforeValidator(_selector_text)]
#: A ``queueing_mode`` (:attr:`QueueingMode.ALL`).
QueueingModeName = Literal["NEVER", "ALWAYS", "START_ONLY", "RESTART_ONLY"]
#: A ``restart_mode`` (:attr:`RestartMode.ALL`).
RestartModeName = Literal["NEVER", "ALWAYS", "ABNORMAL"]


# -- definitions -----------------------------------------------------------------------


#: Longest ``max_runtime_seconds`` accepted (a year).
MAX_RUNTIME_LIMIT = 366 * 86400.0
#: A ``max_runtime_seconds`` argument: seconds, > 0 and at most :data:`MAX_RUNTIME_LIMIT`.
MaxRuntime = Annotated[float | None, Field(gt=0, le=MAX_RUNTIME_LIMIT)]


class CreateDefinitionRequest(Request):
    """``create_definition(definition_id, definition_type, executable, name, description)``,
    and (new, optional) ``max_runtime_seconds``."""

    operation: ClassVar[str] = "create_definition"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    replay: ClassVar[ReplayKind | None] = "definition"

    definition_id: Identifier
    definition_type: str | None
    executable: JsonValue
    name: str | None = None
    description: str | None = None
    #: New (optional): the default ``max_runtime_seconds`` of the processes
    #: scheduled with this definition (their own argument overrides it).
    max_runtime_seconds: MaxRuntime = None

    def _check_limits(self, limits: RequestLimits) -> None:
        check_executable(self.executable, limits)


class UpdateDefinitionRequest(CreateDefinitionRequest):
    """``update_definition``: the same arguments as ``create_definition``."""

    operation: ClassVar[str] = "update_definition"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR


class DescribeDefinitionRequest(Request):
    """``describe_definition(definition_id)``."""

    operation: ClassVar[str] = "describe_definition"
    role: ClassVar[OperationRole] = OperationRole.READER
    definition_id: Identifier


class RemoveDefinitionRequest(DescribeDefinitionRequest):
    """``remove_definition(definition_id)``."""

    operation: ClassVar[str] = "remove_definition"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    replay: ClassVar[ReplayKind | None] = "definition"


class ListDefinitionsRequest(Request):
    """``list_definitions()``: no arguments."""

    operation: ClassVar[str] = "list_definitions"
    role: ClassVar[OperationRole] = OperationRole.READER


# -- processes -------------------------------------------------------------------------


class CreateProcessRequest(Request):
    """``create_process(upid, definition_id, name=None)``."""

    operation: ClassVar[str] = "create_process"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    replay: ClassVar[ReplayKind | None] = "process"

    upid: Identifier
    definition_id: Identifier
    name: str | None = None


def _restart_policy(value: Any) -> Any:
    """A restart policy: an object with any of the keys of
    :class:`~pdcommon.settings.RestartPolicySettings`; kept as given (only its keys)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("must be an object with keys among " + ", ".join(_POLICY_KEYS))
    unknown = sorted(set(value) - set(_POLICY_KEYS))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(_POLICY_KEYS)}"
        )
    try:
        RestartPolicySettings.model_validate(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {error['msg']}") from None
    return dict(value)


_POLICY_KEYS = tuple(RestartPolicySettings.model_fields)


class ScheduleProcessRequest(Request):
    """``schedule_process(upid, definition_id=None, ..., name=None)``."""

    operation: ClassVar[str] = "schedule_process"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    replay: ClassVar[ReplayKind | None] = "process"

    upid: Identifier
    definition_id: Identifier | None = None
    configuration: JsonObject | None = None
    subscribers: Subscribers = None
    constraints: JsonObject | None = None
    queueing_mode: Annotated[QueueingModeName | None, _one_of(QueueingMode.ALL)] = None
    restart_mode: Annotated[RestartModeName | None, _one_of(RestartMode.ALL)] = None
    execution_engine_id: str | None = None
    node_exclusive: str | None = None
    name: str | None = None
    #: New (optional): the process's own restart policy (see
    #: :mod:`dispatcher.restart_policy`); any subset of its keys.
    restart_policy: Annotated[dict[str, Any] | None, BeforeValidator(_restart_policy)] = None
    #: New (optional): seconds a round may run before it is terminated; without
    #: it, the definition's ``max_runtime_seconds`` (see :mod:`dispatcher.culler`).
    max_runtime_seconds: MaxRuntime = None
    #: New (optional): the process's group (see :mod:`dispatcher.selectors`).
    group: Group = None
    #: New (optional): the process's labels (string keys to string values).
    labels: Labels = None

    #: The record fields a schedule writes ("updates"), in the order they are checked
    #: by the idempotency comparison of an in-play process.
    UPDATE_FIELDS: ClassVar[tuple[str, ...]] = (
        "configuration",
        "subscribers",
        "constraints",
        "queueing_mode",
        "restart_mode",
        "node_exclusive",
        "restart_policy",
        "max_runtime_seconds",
        "group",
        "labels",
        "name",
    )

    def updates(self) -> dict[str, Any]:
        """The values written to the process record, keyed by field.

        ``constraints`` ``None`` becomes ``{}``, and a non-empty
        ``execution_engine_id`` is written into ``constraints["engine"]`` (legacy
        behaviour: the engine is not stored separately). Each call returns fresh
        copies.

        Returns:
            A dict with exactly the keys of :attr:`UPDATE_FIELDS`.
        """
        constraints = json_value(self.constraints) if self.constraints is not None else {}
        if self.execution_engine_id:
            constraints["engine"] = self.execution_engine_id
        return {
            "configuration": json_value(self.configuration),
            "subscribers": json_value(self.subscribers),
            "constraints": constraints,
            "queueing_mode": self.queueing_mode,
            "restart_mode": self.restart_mode,
            "node_exclusive": self.node_exclusive,
            "restart_policy": json_value(self.restart_policy),
            "max_runtime_seconds": self.max_runtime_seconds,
            "group": self.group,
            "labels": dict(self.labels) if self.labels is not None else None,
            "name": self.name,
        }


class DescribeProcessRequest(Request):
    """``describe_process(upid)``.

    Legacy did not validate this upid; a string that is not a valid identifier
    simply names no process. A non-string is still rejected.
    """

    operation: ClassVar[str] = "describe_process"
    role: ClassVar[OperationRole] = OperationRole.READER
    upid: str


class DescribeProcessEventsRequest(Request):
    """``describe_process_events(upid, limit=20)`` (new): the last events of a process."""

    operation: ClassVar[str] = "describe_process_events"
    role: ClassVar[OperationRole] = OperationRole.READER
    upid: Identifier
    limit: int = Field(20, ge=1, le=1000)


class _ProcessFilterArguments(Request):
    """The (new, optional) filter arguments of the process listings; see
    :class:`~dispatcher.selectors.ProcessFilter`.

    ``states`` accepts full (``500-RUNNING``) and bare (``RUNNING``) names;
    ``label_selector`` is parsed once, when the request is validated.
    """

    states: States = None
    engine: str | None = None
    group: Group = None
    label_selector: SelectorText = None
    name_prefix: str | None = None
    upid_prefix: str | None = None

    _selector: LabelSelector = PrivateAttr(default_factory=LabelSelector)

    def model_post_init(self, context: Any, /) -> None:
        if self.label_selector is not None:
            self._selector = parse_selector(self.label_selector)

    def process_filter(self) -> ProcessFilter:
        """The filter these arguments describe (empty: every process)."""
        return ProcessFilter(
            states=self.states,
            engine=self.engine,
            group=self.group,
            name_prefix=self.name_prefix,
            upid_prefix=self.upid_prefix,
            labels=self._selector,
        )


class DescribeProcessesRequest(_ProcessFilterArguments):
    """``describe_processes()``: the reply lists every process; new, optional filter
    arguments (``states, engine, group, label_selector, name_prefix, upid_prefix``)
    narrow it."""

    operation: ClassVar[str] = "describe_processes"
    role: ClassVar[OperationRole] = OperationRole.READER
    large_reply: ClassVar[bool] = True


class TerminateProcessesRequest(_ProcessFilterArguments):
    """``terminate_processes(states, engine, group, label_selector, name_prefix,
    upid_prefix, all=False)`` (new): terminate every process the filter selects.

    An empty filter is refused unless ``all`` is true.
    """

    operation: ClassVar[str] = "terminate_processes"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    all: bool = False


class RestartProcessRequest(Request):
    """``restart_process(upid)``."""

    operation: ClassVar[str] = "restart_process"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    replay: ClassVar[ReplayKind | None] = "process"
    upid: Identifier


class TerminateProcessRequest(Request):
    """``terminate_process(upid)``."""

    operation: ClassVar[str] = "terminate_process"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    replay: ClassVar[ReplayKind | None] = "process"
    upid: Identifier


class SetGroupTtlRequest(Request):
    """``set_group_ttl(group, ttl_seconds)`` (new): the group's processes are terminated
    ``ttl_seconds`` from now (``None``: clear the deadline); see :mod:`dispatcher.culler`."""

    operation: ClassVar[str] = "set_group_ttl"
    role: ClassVar[OperationRole] = OperationRole.OPERATOR
    group: Annotated[str, BeforeValidator(check_group)]
    ttl_seconds: MaxRuntime


# -- dispatcher-wide -------------------------------------------------------------------


class SetSystemBootRequest(Request):
    """``set_system_boot(system_boot)``: exactly ``True`` or ``False``."""

    operation: ClassVar[str] = "set_system_boot"
    role: ClassVar[OperationRole] = OperationRole.ADMIN
    system_boot: bool

    @classmethod
    def _describe(cls, exc: ValidationError) -> str:
        return "expected a boolean value for system boot"


class DumpRequest(Request):
    """``dump()``: no arguments; the reply holds every process, resource and node."""

    operation: ClassVar[str] = "dump"
    role: ClassVar[OperationRole] = OperationRole.READER
    large_reply: ClassVar[bool] = True

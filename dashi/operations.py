"""RPC operations declared once: a request model, and one decorator on its handler.

A service's operation is described by its pydantic request model, a subclass of
:class:`OperationRequest`: the class variable :attr:`~OperationRequest.operation`
is the name callers use on the wire, the fields are its arguments (in the order a
legacy caller may pass them by position; types, defaults and validation), and the
other class variables are its flags (:attr:`~OperationRequest.large_reply`; a
service may add its own). A handler method takes the validated model and is
registered with :func:`operation`::

    class ScheduleProcess(OperationRequest):
        operation: ClassVar[str] = "schedule_process"
        upid: str
        definition_id: str | None = None

    class Core:
        def parse_request(self, model, args):          # optional: how raw
            return model.model_validate(args)           # arguments become the model

        @operation(ScheduleProcess)
        def schedule_process(self, req: ScheduleProcess) -> dict[str, Any]: ...

    core.schedule_process(ScheduleProcess(upid="p1"))   # the validated model, or
    core.schedule_process("p1", definition_id="D")      # the wire's arguments

Everything else is derived: :func:`operations_of` lists a class's (or object's)
operations in declaration order, so a service's dispatch table, its lists of
operation names and its per-operation options come from the same declarations.
The bound method's signature (:func:`inspect.signature`) is the legacy one built
from the model's fields: every field positional-or-keyword, in declaration order,
with its default. A service binding a request's arguments to it reports missing
and unexpected arguments exactly as for a plain method.

This module knows nothing of any particular service.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload, runtime_checkable

from pydantic import BaseModel

__all__ = [
    "BoundOperation",
    "Operation",
    "OperationMethod",
    "OperationRequest",
    "ParsesRequests",
    "legacy_signature",
    "operation",
    "operation_map",
    "operations_of",
]

M = TypeVar("M", bound="OperationRequest")
R = TypeVar("R")
S = TypeVar("S")


class OperationRequest(BaseModel):
    """Base of the request models that declare an operation.

    Subclasses set :attr:`operation`; a model without it (an abstract base) is no
    operation.
    """

    #: The operation's name on the wire.
    operation: ClassVar[str]
    #: The reply may be a large tree of new objects (a listing of every record): the
    #: service pauses the cyclic garbage collector while it builds and sends it.
    large_reply: ClassVar[bool] = False


@runtime_checkable
class ParsesRequests(Protocol):
    """A handler object that turns raw arguments into a request model itself.

    Without :meth:`parse_request`, raw arguments go through
    ``model.model_validate``.
    """

    def parse_request(self, model: type[M], args: dict[str, Any]) -> M:
        """Validate ``args`` (keyword arguments by name) as a ``model``.

        Raises:
            Exception: the service's typed error for invalid arguments.
        """
        ...  # pragma: no cover - protocol


def legacy_signature(model: type[BaseModel]) -> inspect.Signature:
    """The plain-method signature of a request model: its fields, in order.

    Every field is positional-or-keyword; a field with a default keeps it, a
    required field has none.
    """
    parameters = []
    for name, field in model.model_fields.items():
        default = inspect.Parameter.empty if field.is_required() else field.get_default()
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=default,
                annotation=field.annotation,
            )
        )
    return inspect.Signature(parameters)


@dataclass(frozen=True)
class Operation(Generic[M]):
    """One operation: its request model and the handler method that serves it.

    Attributes:
        model: the request model (name, arguments and flags).
        attribute: the name of the handler method on its class.
    """

    model: type[M]
    attribute: str

    @property
    def name(self) -> str:
        """The operation's name on the wire."""
        return self.model.operation

    @property
    def large_reply(self) -> bool:
        return self.model.large_reply

    @functools.cached_property
    def signature(self) -> inspect.Signature:
        """The legacy signature: the model's fields (see :func:`legacy_signature`)."""
        return legacy_signature(self.model)


class BoundOperation(Generic[M, R]):
    """A handler method bound to its object: call it with the model or raw arguments.

    ``bound(model_instance)`` runs the handler on that (already validated) request;
    any other call is bound to the legacy signature like a plain method (a missing
    or unexpected argument raises ``TypeError``), then validated by the object's
    :meth:`ParsesRequests.parse_request`.
    """

    def __init__(self, op: Operation[M], func: Callable[[Any, M], R], instance: object) -> None:
        self.operation = op
        self.__func__ = func
        self.__self__ = instance
        self.__name__ = op.attribute
        self.__doc__ = func.__doc__

    @property
    def __signature__(self) -> inspect.Signature:
        return self.operation.signature

    def request(self, *args: Any, **kwargs: Any) -> M:
        """The validated request for a call's arguments (nothing is run)."""
        model = self.operation.model
        if len(args) == 1 and not kwargs and isinstance(args[0], model):
            return args[0]
        bound = self.operation.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        if isinstance(self.__self__, ParsesRequests):
            return self.__self__.parse_request(model, arguments)
        return model.model_validate(arguments)

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        return self.__func__(self.__self__, self.request(*args, **kwargs))

    def __repr__(self) -> str:
        return f"<operation {self.operation.name} of {self.__self__!r}>"


class OperationMethod(Generic[M, R]):
    """The descriptor :func:`operation` puts on a class in place of the handler."""

    def __init__(self, model: type[M], func: Callable[[Any, M], R]) -> None:
        if not isinstance(getattr(model, "operation", None), str):
            raise TypeError(f"{model.__name__} declares no operation name")
        self.func = func
        self.operation: Operation[M] = Operation(model, func.__name__)
        self.__doc__ = func.__doc__
        self.__name__ = func.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        if name != self.operation.attribute:
            self.operation = Operation(self.operation.model, name)

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> OperationMethod[M, R]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> BoundOperation[M, R]: ...

    def __get__(
        self, instance: object | None, owner: type | None = None
    ) -> OperationMethod[M, R] | BoundOperation[M, R]:
        if instance is None:
            return self
        return BoundOperation(self.operation, self.func, instance)


def operation(model: type[M]) -> Callable[[Callable[[S, M], R]], OperationMethod[M, R]]:
    """Register the decorated method as the handler of ``model``'s operation.

    Args:
        model: the request model; the method takes one validated instance of it.

    Raises:
        TypeError: ``model`` declares no :attr:`OperationRequest.operation`.
    """

    def decorate(func: Callable[[S, M], R]) -> OperationMethod[M, R]:
        return OperationMethod(model, func)

    return decorate


def operations_of(target: object) -> tuple[Operation[Any], ...]:
    """The operations a class (or an object's class) serves, in declaration order.

    A subclass's handler replaces the one of the same method name.

    Raises:
        ValueError: two handlers declare the same operation name.
    """
    cls = target if isinstance(target, type) else type(target)
    by_attribute: dict[str, Operation[Any]] = {}
    for klass in reversed(cls.__mro__):
        for attribute, value in vars(klass).items():
            if isinstance(value, OperationMethod):
                by_attribute[attribute] = value.operation
    names: dict[str, str] = {}
    for op in by_attribute.values():
        if op.name in names:
            raise ValueError(
                f"{cls.__name__}: operation {op.name} is declared by both "
                f"{names[op.name]} and {op.attribute}"
            )
        names[op.name] = op.attribute
    return tuple(by_attribute.values())


def operation_map(target: object) -> Mapping[str, Operation[Any]]:
    """:func:`operations_of` by operation name."""
    return {op.name: op for op in operations_of(target)}

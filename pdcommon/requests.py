"""The base of the validated request models, shared by every service's operations.

:class:`Request` is a strict, immutable pydantic model whose :meth:`Request.parse`
first checks every argument against the request limits of :mod:`pdcommon.limits`
and then turns every validation failure into a :class:`~dashi.errors.BadRequestError`
whose message names the offending field. :data:`Identifier` is the legacy rule for
upids and definition ids; :data:`JsonValue` and :data:`JsonObject` normalise a value
through a JSON round trip, exactly as a store hands it back.
"""

from __future__ import annotations

import json
import math
import string
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, ConfigDict, ValidationError

from dashi import jsontree
from dashi.errors import BadRequestError
from dashi.operations import OperationRequest
from pdcommon.limits import DEFAULT_LIMITS, LimitError, RequestLimits, check_arguments
from pdcommon.roles import OperationRole

__all__ = [
    "Identifier",
    "JsonObject",
    "JsonValue",
    "Request",
    "is_valid_identifier",
    "json_value",
]

_IDENTIFIER_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


def is_valid_identifier(value: object) -> bool:
    """True if ``value`` is a non-empty string of ASCII letters, digits and ``.-_``.

    This is the legacy ``epu.util.is_valid_identifier`` rule for upids and
    definition ids.
    """
    return isinstance(value, str) and bool(value) and all(c in _IDENTIFIER_CHARS for c in value)


def _identifier(value: str) -> str:
    if not is_valid_identifier(value):
        raise ValueError("not a valid identifier")
    return value


def _not_a_number(literal: str) -> Any:
    raise ValueError(f"{literal} is not a JSON number")


def json_value(value: Any) -> Any:
    """``value`` as it comes back from a JSON column (see :mod:`dispatcher.store._codec`).

    ``NaN`` and the infinities are refused: JSON has no such numbers and
    PostgreSQL's JSON columns refuse them, so both stores behave alike.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} is not a JSON number")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return json.loads(jsontree.dumps(value), parse_constant=_not_a_number)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not JSON-serializable ({exc})") from None


Identifier = Annotated[str, AfterValidator(_identifier)]
JsonValue = Annotated[Any, AfterValidator(json_value)]
JsonObject = Annotated[dict[str, Any], AfterValidator(json_value)]


#: What a replayed operation's effect writes: a definition or a process record.
ReplayKind = Literal["definition", "process"]


class Request(OperationRequest):
    """Base of the request models: strict types, no unknown fields, immutable.

    A model that declares an ``operation`` must declare its ``role`` in the same
    class body (the least :class:`~pdcommon.auth.OperationRole` that may call it):
    otherwise making the class raises ``TypeError``, so that no operation escapes
    the access check (see :mod:`pdcommon.auth`).
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    #: The least role that may call the operation (see :mod:`pdcommon.auth`).
    role: ClassVar[OperationRole]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "operation" in vars(cls) and not isinstance(vars(cls).get("role"), OperationRole):
            raise TypeError(
                f"{cls.__name__} declares operation {vars(cls)['operation']!r} without a "
                "role: add `role: ClassVar[OperationRole] = OperationRole.<ROLE>`"
            )

    #: Fields whose every failure reads ``"invalid <field>"`` (the legacy wording).
    identifier_fields: ClassVar[frozenset[str]] = frozenset({"upid", "definition_id"})
    #: A redelivery of this request is answered with its first result, and what its
    #: effect writes (``None``: applied again; see :mod:`dispatcher.replay`).
    replay: ClassVar[ReplayKind | None] = None
    #: :meth:`parse` checks the request limits first (operations whose handler
    #: checks its arguments itself turn this off).
    check_limits: ClassVar[bool] = True

    @classmethod
    def parse(cls, limits: RequestLimits = DEFAULT_LIMITS, /, **args: Any) -> Self:
        """Validate keyword arguments as received by the operation.

        Args:
            limits: the depth and size limits every argument must respect.
            **args: the operation's arguments by name.

        Raises:
            BadRequestError: an argument is invalid; the message names the first
                invalid field (in declaration order), or the first argument over a
                limit.

        Returns:
            The validated request.
        """
        try:
            if cls.check_limits:
                check_arguments(args, limits)
            request = cls.model_validate(args)
            request._check_limits(limits)
        except LimitError as exc:
            raise BadRequestError(f"invalid {exc}") from None
        except ValidationError as exc:
            raise BadRequestError(cls._describe(exc)) from None
        return request

    def _check_limits(self, limits: RequestLimits) -> None:
        """Limits of a validated request beyond depth and size (none by default).

        Raises:
            LimitError: the message starts with the field's name.
        """

    @classmethod
    def _describe(cls, exc: ValidationError) -> str:
        error = exc.errors(include_url=False)[0]
        loc = error["loc"]
        field = str(loc[0]) if loc else "arguments"
        if field in cls.identifier_fields:
            return f"invalid {field}"
        reason = error["msg"].removeprefix("Value error, ")
        return f"invalid {field}: {reason}"

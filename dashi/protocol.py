"""The dashi wire protocol: message bodies, headers and error payloads.

Request body: ``{"op": NAME, "args": {...}}`` (JSON). Application headers:
``sender`` (the sysname-prefixed caller name) and, for calls, ``reply-to`` (the
routing key the reply is published to on the same exchange). Our client also sets
the AMQP ``correlation_id`` property, which our service copies to the reply;
legacy peers ignore it.

A call carries its deadline (additive; legacy peers ignore both, and a request
without them never expires): on AMQP the per-message ``expiration`` property (the
milliseconds left of the caller's timeout: RabbitMQ drops the request unanswered
once it expires), on the embedded transport the ``x-deadline`` header (epoch
seconds, as a number), which the service checks before anything else: an expired
request is acknowledged and dropped, never applied. Fires carry neither.

Reply body: ``{"result": ..., "error": null | {"exc_type", "value", "traceback"}}``.
Known error types travel as ``dashi.exceptions.<Name>``; anything else carries the
bare exception class name and is rebuilt as :class:`~dashi.errors.RemoteError`.
A registered subtype of a known type (:data:`~dashi.errors.REQUEST_ERROR_SUBTYPES`)
travels as its known base with one more member, ``"subtype": "<Name>"``: legacy
dashi clients raise the base type (they pass unknown members on as keyword
arguments, which ``DashiError`` accepts), our client raises the subtype.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from dashi.errors import (
    KNOWN_REQUEST_ERRORS,
    REQUEST_ERROR_SUBTYPES,
    BadRequestError,
    RemoteError,
    RequestError,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "ERROR_PREFIX",
    "HEADER_DEADLINE",
    "HEADER_REPLY_TO",
    "HEADER_SENDER",
    "ErrorPayload",
    "Request",
    "decode_request",
    "error_from_payload",
    "error_payload",
    "reply_body",
    "request_expired",
]

ERROR_PREFIX = "dashi.exceptions."
HEADER_REPLY_TO = "reply-to"
HEADER_SENDER = "sender"
#: The epoch time (seconds) after which the caller no longer waits for the reply.
HEADER_DEADLINE = "x-deadline"
#: Largest message body a service publishes (bytes): RabbitMQ's default
#: ``max_message_size`` (128 MiB). A larger reply is answered with an error instead.
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024


class ErrorPayload(BaseModel):
    """The ``error`` member of a reply."""

    model_config = ConfigDict(extra="ignore")

    exc_type: str
    value: str = ""
    traceback: str | None = None
    #: A registered subtype of ``exc_type`` (additive; absent for the other errors).
    subtype: str | None = None


class Request(BaseModel):
    """A decoded request body."""

    model_config = ConfigDict(extra="ignore")

    op: str
    args: dict[str, Any] | None = None


def decode_request(body: Any) -> Request:
    """Validate a request body.

    Raises:
        BadRequestError: the body is not ``{"op": str, "args": dict | null}``, or
            some text in it is not valid Unicode (a lone surrogate such as
            ``"\\ud800"``, which JSON escapes can carry but no UTF-8 column, file or
            message can: RFC 7493 forbids it in I-JSON), or holds a NUL character
            (``"\\u0000"``: PostgreSQL text cannot store it and no program argument
            can carry it, so it is refused on every store alike).
    """
    if not isinstance(body, dict):
        raise BadRequestError(f"Invalid request: body must be an object, not {type(body).__name__}")
    try:
        request = Request.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadRequestError(f"Invalid request: {where}: {first['msg']}") from None
    invalid = _invalid_text(request.op, "op") or _invalid_text(request.args, "args")
    if invalid is not None:
        raise BadRequestError(
            f"Invalid request: {invalid}: text is not valid Unicode or holds a NUL character"
        )
    return request


def _invalid_text(value: Any, where: str) -> str | None:
    """Where in ``value`` a string (or key) holds NUL or cannot be encoded as UTF-8."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _invalid_text(key, path) is not None:
                    return f"{path} (a key)"
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}.{index}") for index, child in enumerate(item))
    return None


def request_expired(headers: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether a request's ``x-deadline`` header says its caller gave up.

    A request without the header (a legacy caller, a fire) never expires; a value
    that is not a number is ignored.
    """
    deadline = headers.get(HEADER_DEADLINE)
    if isinstance(deadline, bool) or not isinstance(deadline, int | float):
        return False
    return (time.time() if now is None else now) > deadline


def error_payload(exc: BaseException, traceback_text: str | None) -> dict[str, Any]:
    """Build the wire form of ``exc`` (a known type keeps its dashi name)."""
    name = type(exc).__name__
    if isinstance(exc, RequestError) and REQUEST_ERROR_SUBTYPES.get(name) is type(exc):
        return {
            "exc_type": ERROR_PREFIX + _known_base(exc).__name__,
            "value": exc.value,
            "traceback": traceback_text or "",
            "subtype": name,
        }
    if isinstance(exc, RequestError) and name in KNOWN_REQUEST_ERRORS:
        exc_type = ERROR_PREFIX + _known_base(exc).__name__
        value = exc.value
    elif isinstance(exc, RemoteError):
        exc_type, value = exc.exc_type, exc.value
    else:
        exc_type, value = type(exc).__name__, str(exc)
    return {"exc_type": exc_type, "value": value, "traceback": traceback_text or ""}


def _known_base(exc: RequestError) -> type[RequestError]:
    for cls in type(exc).__mro__:
        if cls.__name__ in KNOWN_REQUEST_ERRORS and KNOWN_REQUEST_ERRORS[cls.__name__] is cls:
            return cls
    return BadRequestError  # pragma: no cover - every RequestError subclass has a known base


def reply_body(result: Any = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"result": result, "error": error}


def error_from_payload(payload: Any) -> Exception:
    """Rebuild the exception a reply's ``error`` member describes."""
    try:
        error = ErrorPayload.model_validate(payload)
    except ValidationError:
        return RemoteError("InvalidReply", f"malformed error payload: {payload!r}")
    traceback_text = error.traceback or None
    if error.exc_type.startswith(ERROR_PREFIX):
        cls = KNOWN_REQUEST_ERRORS.get(error.exc_type[len(ERROR_PREFIX) :])
        subtype = REQUEST_ERROR_SUBTYPES.get(error.subtype or "")
        if cls is not None and subtype is not None and issubclass(subtype, cls):
            return subtype(error.value, traceback=traceback_text)
        if cls is not None:
            return cls(error.value, traceback=traceback_text)
    return RemoteError(error.exc_type, error.value, traceback_text)

"""Limits on what a request may store: nesting depth and size of its arguments.

Every argument of a dispatcher RPC ends up stored (a process's ``configuration``,
``constraints`` and ``subscribers``, a definition's ``executable``...) and is then
copied, encoded, decoded and sent to agents for as long as the record lives. A
request is therefore refused with :class:`~dashi.errors.BadRequestError`,
before anything is read or written, when one of its arguments:

* nests more than :attr:`RequestLimits.max_depth` levels of arrays and objects
  (default :data:`DEFAULT_MAX_DEPTH`);
* is longer than :attr:`RequestLimits.max_argument_bytes` as compact JSON text
  (default :data:`DEFAULT_MAX_ARGUMENT_BYTES`, 1 MiB);

or when all its arguments together are longer than
:attr:`RequestLimits.max_request_bytes` (default :data:`DEFAULT_MAX_REQUEST_BYTES`),
or a definition's ``executable`` has an ``exec`` plus ``argv`` longer than
:attr:`RequestLimits.max_argv_bytes` or an ``env`` longer than
:attr:`RequestLimits.max_env_bytes` (128 KiB each, the most one argument or
variable may hold on Linux: ``MAX_ARG_STRLEN``).

Sizes are counted as the compact, ASCII-escaped JSON text the store keeps (a
non-ASCII character counts 6 bytes, ``\\uXXXX``). The checks walk a value with an
explicit stack and stop as soon as a limit is passed, so a value of any depth or
size costs at most the part read before the limit.

The depth limit is capped at :data:`MAX_DEPTH_CEILING`, which keeps every stored
value, wrapped in a record and a message, within what orjson encodes (255 levels)
and far from the interpreter's recursion limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dashi import jsontree

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_ARGUMENT_BYTES",
    "DEFAULT_MAX_ARGV_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ENV_BYTES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_DEPTH_CEILING",
    "LimitError",
    "RequestLimits",
    "check_arguments",
    "check_executable",
    "check_value",
    "json_size",
]

KIB: Final = 1024
MIB: Final = 1024 * KIB

#: Levels of nested arrays/objects one argument may have: far more than any real
#: configuration needs (a few levels), far less than what breaks recursive code.
DEFAULT_MAX_DEPTH: Final = 100
#: The highest ``max_depth`` that may be configured: a record (2 levels) in a reply
#: or launch message (4 levels) must stay within orjson's 255.
MAX_DEPTH_CEILING: Final = 200
#: Compact JSON bytes one argument may have (a configuration, an executable...).
DEFAULT_MAX_ARGUMENT_BYTES: Final = 1 * MIB
#: Compact JSON bytes all the arguments of one request may have together.
DEFAULT_MAX_REQUEST_BYTES: Final = 2 * MIB
#: Compact JSON bytes of an executable's ``exec`` and ``argv`` together, and of its
#: ``env``: Linux refuses a single argument or variable over 128 KiB (MAX_ARG_STRLEN).
DEFAULT_MAX_ARGV_BYTES: Final = 128 * KIB
DEFAULT_MAX_ENV_BYTES: Final = 128 * KIB


class RequestLimits(BaseModel):
    """``processdispatcher.limits``: the depth and size limits of request arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_depth: int = Field(DEFAULT_MAX_DEPTH, ge=1, le=MAX_DEPTH_CEILING)
    max_argument_bytes: int = Field(DEFAULT_MAX_ARGUMENT_BYTES, ge=KIB)
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=KIB)
    max_argv_bytes: int = Field(DEFAULT_MAX_ARGV_BYTES, ge=KIB)
    max_env_bytes: int = Field(DEFAULT_MAX_ENV_BYTES, ge=KIB)

    @model_validator(mode="after")
    def _request_holds_an_argument(self) -> RequestLimits:
        if self.max_request_bytes < self.max_argument_bytes:
            raise ValueError("max_request_bytes must not be less than max_argument_bytes")
        return self


#: The limits used when none are configured.
DEFAULT_LIMITS: Final = RequestLimits()


class LimitError(ValueError):
    """A value passes a limit; the message says which (without the field's name)."""


def _bytes(count: int) -> str:
    """``count`` bytes for a message: ``"1048576 bytes (1 MiB)"``."""
    if count % MIB == 0:
        return f"{count} bytes ({count // MIB} MiB)"
    if count % KIB == 0:
        return f"{count} bytes ({count // KIB} KiB)"
    return f"{count} bytes"


def _depth_error(max_depth: int) -> LimitError:
    return LimitError(f"nested more than {max_depth} levels deep (the limit)")


def _size_error(max_bytes: int) -> LimitError:
    return LimitError(f"longer than the limit of {_bytes(max_bytes)} as JSON")


def check_value(value: Any, *, max_depth: int, max_bytes: int) -> int:
    """Check ``value``'s depth and size without recursion; return its JSON size.

    The walk counts a lower bound of the JSON size and stops as soon as the depth
    or that bound passes its limit; the exact size is then taken from the JSON
    text (which the depth limit makes safe to produce).

    Args:
        value: the argument (any Python value; what is not JSON counts one byte
            here and is left to the caller's type checks).
        max_depth: levels of containers allowed (a scalar has none).
        max_bytes: JSON bytes allowed.

    Raises:
        LimitError: a limit is passed.

    Returns:
        The length of the compact JSON text of ``value`` (the lower bound when it
        is not JSON-serializable).
    """
    if isinstance(value, str):
        size = len(value) + 2
        if size > max_bytes:
            raise _size_error(max_bytes)
        if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
            return size  # nothing to escape
        return _exact(value, size, max_bytes)
    if not isinstance(value, dict | list | tuple):
        return _exact(value, 1, max_bytes)
    # ``size`` is a lower bound of the JSON length of what was read so far. It is
    # checked before a container's children are read, so a huge array costs no
    # more than a small one. Strings and other scalars are counted where they are
    # met; only containers go on the stack. Every value counts a byte where it is
    # met (the root too), which its own count then replaces.
    size = 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, level = pop()
        if level > max_depth:
            raise _depth_error(max_depth)
        count = len(node)
        if isinstance(node, dict):
            # braces and commas, colons, the quotes of the keys, a byte per value
            size += (count if count else 1) + 4 * count
            children: Any = node.values()
            try:
                size += sum(map(len, node))  # keys: strings, as a rule
            except TypeError:
                size += sum(len(key) if isinstance(key, str) else 1 for key in node)
        else:
            size += (count if count else 1) + count  # brackets, commas, a byte per item
            children = node
        if size > max_bytes:
            raise _size_error(max_bytes)
        level += 1
        for child in children:
            if isinstance(child, str):
                size += len(child) + 1  # the quotes, less the byte counted above
            elif isinstance(child, dict | list | tuple):
                push((child, level))
        if size > max_bytes:
            raise _size_error(max_bytes)
    return _exact(value, size, max_bytes)


def _exact(value: Any, bound: int, max_bytes: int) -> int:
    try:
        size = len(jsontree.dumps(value))
    except (TypeError, ValueError):
        return bound  # not JSON: the field's own validation says so
    if size > max_bytes:
        raise _size_error(max_bytes)
    return size


def json_size(value: Any) -> int:
    """The length of the compact JSON text of ``value`` (0 if it is not JSON)."""
    try:
        return len(jsontree.dumps(value))
    except (TypeError, ValueError):
        return 0


def check_arguments(arguments: Mapping[str, Any], limits: RequestLimits) -> None:
    """Check every argument of a request, then their total size.

    Raises:
        LimitError: the message starts with the offending field's name
            (``"configuration: nested more than ..."``); for the total, with
            ``"arguments"``.
    """
    total = 0
    for field, value in arguments.items():
        try:
            total += check_value(
                value, max_depth=limits.max_depth, max_bytes=limits.max_argument_bytes
            )
        except LimitError as exc:
            raise LimitError(f"{field}: {exc}") from None
    if total > limits.max_request_bytes:
        raise LimitError(
            f"arguments: together longer than the limit of "
            f"{_bytes(limits.max_request_bytes)} as JSON"
        )


def check_executable(executable: Any, limits: RequestLimits) -> None:
    """Check the ``exec`` plus ``argv`` and the ``env`` of a ``supd`` executable.

    Anything that is not an object with those keys is left alone (other launch
    types carry other keys).

    Raises:
        LimitError: the message starts with ``"executable: "``.
    """
    if not isinstance(executable, dict):
        return
    command = [executable.get("exec"), executable.get("argv")]
    if json_size(command) > limits.max_argv_bytes:
        raise LimitError(
            f"executable: exec and argv longer than the limit of "
            f"{_bytes(limits.max_argv_bytes)} as JSON"
        )
    if json_size(executable.get("env")) > limits.max_env_bytes:
        raise LimitError(
            f"executable: env longer than the limit of {_bytes(limits.max_env_bytes)} as JSON"
        )

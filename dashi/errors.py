"""The errors of the dashi wire protocol.

Every error derives from :class:`DashiError`, which is also the root of every
error the rest of the project raises (``pdcommon.errors.DispatcherError`` is this
class)::

    DashiError
     ├── RequestError                an error a remote caller is told about by type
     │    ├── BadRequestError        arguments missing, unexpected, ill-typed or invalid
     │    │    └── ReplyTooLargeError  the reply is larger than the broker accepts
     │    ├── NotFoundError          the named definition, process, node or engine is unknown
     │    ├── UnknownOperationError  the service has no handler for the operation
     │    └── WriteConflictError     an optimistic write lost a race, or a duplicate create
     │         └── WriteRetriesExhaustedError  every attempt of a read-change-write lost its race
     ├── RemoteError                 any other error raised by a remote handler (by type name)
     └── TransportError              the broker could not be reached (recoverable)
          ├── RpcTimeoutError        no reply arrived before the call's timeout
          ├── BrokerUnreachableError the broker refused a client's first connection
          ├── AccessRefusedError     the broker refused the login, the vhost or a permission
          └── DiskFullError          the embedded broker's disk is full

The four :class:`RequestError` types travel on the wire as
``dashi.exceptions.<Name>`` and are rebuilt as the same types by the client, so
legacy dashi clients see the names they expect. A subtype registered in
:data:`REQUEST_ERROR_SUBTYPES` (:class:`ReplyTooLargeError`,
:class:`WriteRetriesExhaustedError`) travels under its
known base's name with an additive ``subtype`` member naming it: a legacy client
raises the base type (dashi ignores the extra member), ours the subtype.

:class:`AccessRefusedError` is a :class:`TransportError` so that code which retries
a failed send later keeps doing so (a broker's users may be fixed while a daemon
runs), but retrying at once cannot help: commands fail fast on it at start-up.
:class:`DiskFullError` is one for the same reasons: a send fails at once, and a
later one works once space has been freed.
"""

from __future__ import annotations

__all__ = [
    "KNOWN_REQUEST_ERRORS",
    "REQUEST_ERROR_SUBTYPES",
    "AccessRefusedError",
    "BadRequestError",
    "BrokerUnreachableError",
    "DashiError",
    "DiskFullError",
    "NotFoundError",
    "RemoteError",
    "ReplyTooLargeError",
    "RequestError",
    "RpcTimeoutError",
    "TransportError",
    "UnknownOperationError",
    "WriteConflictError",
    "WriteRetriesExhaustedError",
]


class DashiError(Exception):
    """Base class of every error raised by this package (and by the project)."""


class RequestError(DashiError):
    """An error that crosses the wire under its own type name.

    Attributes:
        value: the human-readable message.
        exc_type: the wire type name (``dashi.exceptions.<Name>``).
        traceback: the remote traceback, when the server was configured to send it.
    """

    wire_prefix = "dashi.exceptions."

    def __init__(self, value: str = "", *, traceback: str | None = None) -> None:
        super().__init__(value)
        self.value = value
        self.traceback = traceback

    @property
    def exc_type(self) -> str:
        return self.wire_prefix + type(self).__name__


class BadRequestError(RequestError):
    """The request's arguments are missing, unexpected, ill-typed or invalid."""


class ReplyTooLargeError(BadRequestError):
    """The reply is larger than the broker accepts: ask for less (paging, a filter).

    Raised by the service instead of a reply it cannot publish (larger than
    ``server.amqp.max_message_size``, or refused by the broker), so the caller
    gets an answer and the request is not delivered again.
    """


class NotFoundError(RequestError):
    """The named entity does not exist."""


class UnknownOperationError(RequestError):
    """The service has no handler registered under the requested operation name."""


class WriteConflictError(RequestError):
    """A versioned write lost a race, or an entity with the same key already exists."""


class WriteRetriesExhaustedError(WriteConflictError):
    """Every attempt of a read-change-write of one record lost its race to another writer.

    Raised by :func:`dispatcher.store.modify.retry_conflicts` after
    :data:`~dispatcher.store.modify.WRITE_ATTEMPTS` attempts. It is a
    :class:`WriteConflictError`, so code that handles a lost race handles it too, and a
    remote caller sees ``dashi.exceptions.WriteConflictError`` (with the additive
    ``subtype`` member). Recoverable: nothing was written by the last attempt, and a
    later attempt (the next pass, heartbeat or call) starts from a fresh read.

    Attributes:
        record: the record that kept changing (e.g. ``"resource 'eea1'"``), or ``""``
            when rebuilt from a reply.
        attempts: how many attempts were made (0 when rebuilt from a reply).
    """

    def __init__(
        self,
        value: str = "",
        *,
        traceback: str | None = None,
        record: str = "",
        attempts: int = 0,
    ) -> None:
        super().__init__(value, traceback=traceback)
        self.record = record
        self.attempts = attempts


class RemoteError(DashiError):
    """A remote handler failed with an error that has no wire type of its own.

    Attributes:
        exc_type: the remote exception's type name (e.g. ``KeyError``).
        value: its message.
        traceback: the remote traceback, if the server sends tracebacks.
    """

    def __init__(self, exc_type: str, value: str, traceback: str | None = None) -> None:
        super().__init__(f"{exc_type}: {value}")
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback


class TransportError(DashiError):
    """The message broker could not be reached or dropped the connection."""


class RpcTimeoutError(TransportError, TimeoutError):
    """No reply arrived before the call's timeout expired.

    The message is ``<operation> on <service>: <reason>``; a command line tool
    can name its own command instead, before :attr:`reason`.

    Attributes:
        operation: the operation called (``None`` if not given).
        service: the service it was called on.
        reason: the message without the operation and service.
    """

    def __init__(
        self,
        message: str = "",
        *,
        operation: str | None = None,
        service: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.service = service
        self.reason = message if reason is None else reason


class BrokerUnreachableError(TransportError):
    """A client that never reached the broker had its connection refused, or the
    broker's host name does not resolve: raised after a few quick retries, without
    waiting for the call's timeout. (A client that was connected retries until its
    timeout: the broker may be restarting.) The message names the broker with
    its password masked.
    """


class AccessRefusedError(TransportError):
    """The broker refused the credentials, the virtual host or a permission.

    Not recoverable by retrying: the configuration (or the broker's users) must change.
    The message names the broker with its password masked.
    """


class DiskFullError(TransportError):
    """The disk holding the embedded broker's folder is full: a message cannot be written.

    The message names the folder (``<state_dir>/broker``); free space on that disk
    (old process output, logs) and the next call works. Not recoverable by retrying
    at once: a call fails on it without waiting for its timeout.
    """


#: Wire name (without prefix) -> class, for the types rebuilt on the client.
KNOWN_REQUEST_ERRORS: dict[str, type[RequestError]] = {
    cls.__name__: cls
    for cls in (BadRequestError, NotFoundError, UnknownOperationError, WriteConflictError)
}

#: Wire subtype name -> class: errors sent as their known base's type with a
#: ``subtype`` member (see the module docstring).
REQUEST_ERROR_SUBTYPES: dict[str, type[RequestError]] = {
    cls.__name__: cls for cls in (ReplyTooLargeError, WriteRetriesExhaustedError)
}

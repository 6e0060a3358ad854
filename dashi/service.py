"""The service side of the dashi RPC protocol.

An :class:`RpcService` consumes its queue (``<sysname>.<name>``), runs the handler
registered for each request's ``op`` and, when the request carries a ``reply-to``
header, publishes ``{"result", "error"}`` back to the exchange under that routing
key. Every message is acknowledged after it is handled, whatever the outcome, so a
failing handler is never redelivered; only a crash before the ack redelivers.

Errors:

* unknown op → ``UnknownOperationError``;
* a request the operation's guard refuses (e.g. a
  :class:`~dashi.security.CommandGuard`: wrong sender, bad signature) →
  the guard's error, before anything else is looked at;
* missing, unexpected or ill-typed arguments → ``BadRequestError`` naming the
  argument (handlers may declare pydantic-checked annotations);
* a :class:`~dashi.errors.RequestError` raised by a handler keeps its type
  and is logged without a traceback;
* anything else becomes a generic error carrying the exception's type name and is
  logged with its traceback; the traceback goes to the caller only when
  ``send_tracebacks`` is configured.

Replies are published on channels of their own (the request is acknowledged on
the consuming channel), so a reply the broker refuses closes a reply channel, never
the one holding the request's delivery. A reply larger than ``max_message_size``
is not even tried: the caller gets a :class:`~dashi.errors.ReplyTooLargeError`
instead, and the request is acknowledged, so it is never delivered again. Replies
of :data:`CONFIRM_FROM_BYTES` and more go out with publisher confirms (AMQP), so a
broker whose limit is lower refuses them in the publishing call (406
PRECONDITION_FAILED): that caller gets a ``ReplyTooLargeError`` too, and another
refusal a generic error; neither reconnects. (Smaller replies are not confirmed,
which would cost a round trip per call: a broker limit under 1 MiB is not
supported.)

A request whose ``x-deadline`` header (see :mod:`dashi.protocol`) has
passed is acknowledged and dropped before it is decoded: its caller gave up, so it
is never applied nor answered (logged at INFO, at most once per
:data:`EXPIRED_LOG_SECONDS` with a count). On RabbitMQ the broker drops such
requests itself (their ``expiration`` property).

Each worker thread owns one broker connection and competes for the queue, so
handlers run concurrently on ``workers`` threads. Connections that drop are
re-established with capped exponential backoff; AMQP heartbeats are serviced
while idle. A broker that refuses the login, the virtual host or a permission
before the service first consumes makes :meth:`RpcService.start` fail at once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kombu
from kombu.message import Message
from pydantic import ConfigDict, ValidationError, validate_call

from dashi import codec
from dashi.broker import BrokerConfig, describe_failure, refusal
from dashi.errors import (
    AccessRefusedError,
    BadRequestError,
    ReplyTooLargeError,
    RequestError,
    TransportError,
    UnknownOperationError,
)
from dashi.gcpause import collector_paused
from dashi.protocol import (
    HEADER_REPLY_TO,
    HEADER_SENDER,
    decode_request,
    error_payload,
    reply_body,
    request_expired,
)

__all__ = ["CONFIRM_FROM_BYTES", "RpcService"]

log = logging.getLogger(__name__)

#: Broker-side expiry of an unused service queue (dashi's value, in ms).
SERVICE_QUEUE_EXPIRES_MS = 60_000
#: Replies this large (bytes) and larger are published with publisher confirms: the
#: round trip is small next to sending them, and a broker refusal is then reported.
CONFIRM_FROM_BYTES = 1 << 20
#: Dropped expired requests are logged at most once per this many seconds.
EXPIRED_LOG_SECONDS = 10.0
#: How long a worker blocks waiting for a message before servicing heartbeats.
_DRAIN_SECONDS = 1.0
#: Reconnection backoff: first delay, growth factor and cap (seconds).
_BACKOFF_START, _BACKOFF_FACTOR, _BACKOFF_MAX = 0.2, 2.0, 5.0

Handler = Callable[..., Any]
#: Called as ``guard(op, args, headers)`` before a handler; raises a
#: :class:`~dashi.errors.RequestError` to refuse the request.
Guard = Callable[[str, Any, Mapping[str, Any]], None]
#: Called as ``replay(request_id, op, args, call)`` instead of the handler for a
#: request that has an id: returns ``call()``, or the result of the request's first
#: application when it was applied already (see :mod:`dispatcher.replay`).
Replay = Callable[[str, str, Mapping[str, Any], Callable[[], Any]], Any]


@dataclass(frozen=True)
class _Registration:
    func: Handler
    signature: inspect.Signature
    sender_kwarg: str | None
    guard: Guard | None = None
    replay: Replay | None = None
    fire: Handler | None = None


class RpcService:
    """Serve registered operations on one dashi service queue.

    Args:
        broker: where the broker is and how names are prefixed.
        name: the service name (queue name before sysname prefixing).
        workers: number of threads (and broker connections) handling requests.
    """

    def __init__(self, broker: BrokerConfig, name: str, *, workers: int = 1) -> None:
        self.broker = broker
        self.name = name
        self.workers = workers
        self._handlers: dict[str, _Registration] = {}
        self._large_replies: set[str] = set()
        self._stop = threading.Event()
        #: The workers' broker connections, so that stop() can wake idle ones,
        #: and those whose worker is handling a message.
        self._connections: set[kombu.Connection] = set()
        self._handling: set[kombu.Connection] = set()
        self._connections_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._ready = threading.Semaphore(0)
        #: Why the workers could not start: the broker's refusal (fatal), or the
        #: last connection failure (named when start gives up).
        self._refused: AccessRefusedError | None = None
        self._last_failure: str | None = None
        self._expired_lock = threading.Lock()
        self._expired_count = 0
        self._expired_logged_at = float("-inf")

    # -- registration -------------------------------------------------------------

    def handle(
        self,
        op: str,
        func: Handler,
        *,
        sender_kwarg: str | None = None,
        validate: bool = True,
        guard: Guard | None = None,
        large_reply: bool = False,
        replay: Replay | None = None,
        fire: Handler | None = None,
    ) -> None:
        """Register ``func`` for operation ``op``.

        Args:
            op: the operation name callers use.
            func: called with the request's ``args`` as keyword arguments.
            sender_kwarg: if set, the ``sender`` header is passed under this keyword
                (``None`` when the header is missing).
            validate: check argument values against ``func``'s annotations with
                pydantic (lax mode) before calling it.
            guard: called with ``(op, args, headers)`` (``args`` exactly as they
                arrived) before anything else; it refuses the request by raising a
                :class:`~dashi.errors.RequestError`, and must not change state.
            large_reply: ``func`` may return a large tree of new objects without
                reference cycles (a listing of 100,000 records): the cyclic garbage
                collector is paused from the call until the reply is published and
                freed, so it never scans those objects (which would cost more than
                building them).
            replay: runs each call of a request that has an id (AMQP ``message_id``
                or ``correlation_id``, else a legacy call's ``reply-to``): a request
                delivered again is answered without applying it twice.
            fire: called instead of ``func`` (same arguments, after the guard and
                the argument check) for a request that asks for no reply (no
                ``reply-to``: a fire) arriving on the queue. It runs on the consuming
                thread before the message is acknowledged, so it must be quick: it
                hands the work on (e.g. to a queue of its own) and never raises.
        """
        signature = inspect.signature(func)
        wrapped = func
        if validate and any(
            p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()
        ):
            wrapped = validate_call(config=ConfigDict(arbitrary_types_allowed=True))(func)
        self._handlers[op] = _Registration(wrapped, signature, sender_kwarg, guard, replay, fire)
        if large_reply:
            self._large_replies.add(op)
        else:
            self._large_replies.discard(op)

    @property
    def operations(self) -> list[str]:
        return sorted(self._handlers)

    # -- request handling (transport independent) -----------------------------------

    def dispatch(
        self,
        body: Any,
        headers: Mapping[str, Any],
        request_id: str | None = None,
        *,
        one_way: bool = False,
    ) -> dict[str, Any]:
        """Handle one decoded request and return the reply body.

        Args:
            body: the decoded request.
            headers: its application headers.
            request_id: identifies the request across deliveries (see ``replay``).
            one_way: the request asks for no reply: an operation registered with
                ``fire`` runs that handler.
        """
        op = "?"
        try:
            request = decode_request(body)
            op = request.op
            registration = self._handlers.get(op)
            if registration is None:
                raise UnknownOperationError(f"Unknown operation: {op}")
            if registration.guard is not None:
                registration.guard(op, request.args, headers)
            args = dict(request.args or {})
            if registration.sender_kwarg:
                args[registration.sender_kwarg] = headers.get(HEADER_SENDER)
            try:
                registration.signature.bind(**args)
            except TypeError as exc:
                raise BadRequestError(f"Type error: {exc}") from None
            try:
                func = registration.fire if one_way and registration.fire else registration.func
                if registration.replay is not None and request_id and func is registration.func:
                    result = registration.replay(request_id, op, args, lambda: func(**args))
                else:
                    result = func(**args)
            except ValidationError as exc:
                raise BadRequestError(_describe_validation(exc)) from None
            return reply_body(result=result)
        except RequestError as exc:
            log.info(
                "Known '%s' error in handler %s:%s: %s", type(exc).__name__, self.name, op, exc
            )
            return reply_body(error=error_payload(exc, self._traceback(exc)))
        except Exception as exc:
            log.exception("Unexpected error in handler %s:%s", self.name, op)
            return reply_body(error=error_payload(exc, self._traceback(exc)))

    def _traceback(self, exc: BaseException) -> str | None:
        if not self.broker.send_tracebacks:
            return None
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    # -- consuming ----------------------------------------------------------------

    def queue(self) -> kombu.Queue:
        queue_name = self.broker.prefixed(self.name)
        return kombu.Queue(
            queue_name,
            self.broker.kombu_exchange(),
            routing_key=queue_name,
            durable=False,
            auto_delete=False,
            queue_arguments={"x-expires": SERVICE_QUEUE_EXPIRES_MS},
        )

    def start(self, ready_timeout: float | None = 30.0) -> None:
        """Start the worker threads; wait until each has declared and consumes its queue.

        Raises:
            AccessRefusedError: the broker refused the login, the virtual host or a
                permission (at once: retrying cannot help).
            TransportError: the broker could not be reached within ``ready_timeout``.
        """
        self._stop.clear()
        self._ready = threading.Semaphore(0)
        self._refused, self._last_failure = None, None
        for index in range(self.workers):
            thread = threading.Thread(
                target=self._worker, name=f"rpc-{self.name}-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        deadline = None if ready_timeout is None else time.monotonic() + ready_timeout
        for _ in range(self.workers):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            acquired = self._ready.acquire(timeout=remaining)
            if self._refused is not None:
                self.stop()
                raise self._refused
            if not acquired:
                self.stop()
                cause = f": {self._last_failure}" if self._last_failure else ""
                raise TransportError(
                    f"service {self.name}: could not reach the broker at "
                    f"{self.broker.masked_uri} within {ready_timeout:g}s{cause}"
                )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming; in-flight handlers finish and are acknowledged.

        Idle workers are woken at once instead of waiting out their
        ``_DRAIN_SECONDS``; a message that arrives once the stop has begun is
        put back in the queue unhandled.
        """
        with self._connections_lock:
            self._stop.set()
            idle = [c for c in self._connections if c not in self._handling]
        for connection in idle:
            _interrupt_wait(connection)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def _begin_handling(self, connection: kombu.Connection) -> bool:
        """Mark ``connection``'s worker busy with a message; False once stopping."""
        with self._connections_lock:
            if self._stop.is_set():
                return False
            self._handling.add(connection)
            return True

    def _end_handling(self, connection: kombu.Connection) -> None:
        with self._connections_lock:
            self._handling.discard(connection)

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _worker(self) -> None:
        delay = _BACKOFF_START
        announced = False

        def consuming() -> None:
            # The worker consumes (again): announce it the first time, log later
            # reconnections, and let the next outage's backoff start from the beginning.
            nonlocal announced, delay
            self._last_failure = None
            if announced:
                log.info("service %s: reconnected to %s", self.name, self.broker.masked_uri)
            else:
                announced = True
                self._ready.release()
            delay = _BACKOFF_START

        while not self._stop.is_set():
            connection = self.broker.connection()
            with self._connections_lock:
                self._connections.add(connection)
            try:
                connection.connect()
                self._consume(connection, consuming)
            except (*connection.connection_errors, *connection.channel_errors, OSError) as exc:
                if self._stop.is_set():
                    break
                refused = None if announced else refusal(exc, self.broker.uri)
                if refused is not None:
                    # Before the first consume a refusal is fatal: start() raises it.
                    self._refused = refused
                    self._ready.release()
                    return
                failure = describe_failure(exc)
                # Every worker retries: the first to meet a cause reports it, at WARNING.
                repeated, self._last_failure = failure == self._last_failure, failure
                log.log(
                    logging.DEBUG if repeated else logging.WARNING,
                    "service %s: broker %s unavailable (%s); reconnecting in %.1fs",
                    self.name,
                    self.broker.masked_uri,
                    failure,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * _BACKOFF_FACTOR, _BACKOFF_MAX)
            except Exception:
                # A bug must not silently kill a worker: log it and start over.
                log.exception("service %s: worker failed; restarting it", self.name)
                self._stop.wait(delay)
                delay = min(delay * _BACKOFF_FACTOR, _BACKOFF_MAX)
            finally:
                with self._connections_lock:
                    self._connections.discard(connection)
                try:
                    connection.release()
                except Exception:  # closing a dead connection may fail in many ways
                    log.debug("error while releasing a broken connection", exc_info=True)

    def _consume(self, connection: kombu.Connection, consuming: Callable[[], None]) -> None:
        channel = connection.channel()
        producer = _ReplyPublisher(connection, self.broker.kombu_exchange())
        queue = self.queue()

        def on_message(message: Message) -> None:
            if not self._begin_handling(connection):
                message.requeue()  # stopping: another consumer (or the next start) takes it
                return
            try:
                self._on_message(message, producer)
            finally:
                self._end_handling(connection)

        def on_decode_error(message: Message, exc: Exception) -> None:
            # kombu found the message broken before on_message (a bad compression
            # header): answer and ack it, or it would kill the worker and come back.
            if not self._begin_handling(connection):
                message.requeue()
                return
            try:
                self._on_message(message, producer, decode_error=exc)
            finally:
                self._end_handling(connection)

        with kombu.Consumer(
            channel,
            queues=[queue],
            on_message=on_message,
            on_decode_error=on_decode_error,
            accept=["json"],
            prefetch_count=1,
        ):
            consuming()
            while not self._stop.is_set():
                try:
                    connection.drain_events(timeout=_DRAIN_SECONDS)
                except TimeoutError:
                    connection.heartbeat_check()

    def _on_message(
        self, message: Message, producer: _ReplyPublisher, decode_error: Exception | None = None
    ) -> None:
        headers = message.headers or {}
        if request_expired(headers):
            self._drop_expired(message, headers)
            return
        try:
            if decode_error is not None:
                raise decode_error
            body = codec.decode(message)
        except Exception as exc:  # any decode failure is the sender's fault
            reply = reply_body(
                error=error_payload(BadRequestError(f"Invalid request: {exc}"), None)
            )
            log.info("service %s: undecodable message (%s)", self.name, exc)
            self._reply(message, producer, headers, reply)
            return
        op = body.get("op") if isinstance(body, dict) else None
        request_id = _request_id(message, headers)
        # A request without a reply-to is a fire: the operation's fire handler runs.
        reply_to = headers.get(HEADER_REPLY_TO)
        one_way = not (isinstance(reply_to, str) and reply_to)
        if op in self._large_replies:
            with collector_paused():
                reply = self.dispatch(body, headers, request_id, one_way=one_way)
                self._reply(message, producer, headers, reply, op)
        else:
            reply = self.dispatch(body, headers, request_id, one_way=one_way)
            self._reply(message, producer, headers, reply, op)

    def _drop_expired(self, message: Message, headers: Mapping[str, Any]) -> None:
        """Acknowledge a request whose caller gave up, unapplied and unanswered."""
        message.ack()
        with self._expired_lock:
            self._expired_count += 1
            now = time.monotonic()
            if now - self._expired_logged_at < EXPIRED_LOG_SECONDS:
                return
            count, self._expired_count, self._expired_logged_at = self._expired_count, 0, now
        log.info(
            "service %s: dropped %d expired request(s) unapplied (their callers had given "
            "up waiting; the last from %r)",
            self.name,
            count,
            headers.get(HEADER_SENDER) or "an unnamed sender",
        )

    def _reply(
        self,
        message: Message,
        producer: _ReplyPublisher,
        headers: Mapping[str, Any],
        reply: dict[str, Any],
        op: object = None,
    ) -> None:
        """Publish ``reply`` if the request asked for one, then acknowledge the request.

        A reply that is too large, or that the broker refuses, is replaced by an
        error reply (see the module docstring); the request is acknowledged in
        every case but a lost connection (then it is delivered again).
        """
        reply_to = headers.get(HEADER_REPLY_TO)
        if isinstance(reply_to, str) and reply_to:
            properties: dict[str, Any] = {}
            correlation_id = message.properties.get("correlation_id")
            if correlation_id:
                properties["correlation_id"] = correlation_id
            try:
                encoded = codec.encode(reply)
                reply_headers = {HEADER_SENDER: self.broker.prefixed(self.name)}
            except (TypeError, ValueError) as exc:
                log.error("service %s: reply could not be serialized: %s", self.name, exc)
                encoded = codec.encode(reply_body(error=error_payload(exc, None)))
                reply_headers = {}
            limit = self.broker.max_message_size
            if len(encoded) > limit:
                log.warning(
                    "service %s: the reply to %s is %d bytes, more than the %d-byte limit: "
                    "answering with an error",
                    self.name,
                    op,
                    len(encoded),
                    limit,
                )
                encoded = _error_reply(
                    ReplyTooLargeError(
                        f"the reply to {op} is too large to send ({len(encoded)} bytes, "
                        f"more than the {limit}-byte message limit): use paging or a "
                        "filter to ask for less"
                    )
                )
            try:
                producer.publish(encoded, reply_to, reply_headers, properties)
            except producer.channel_errors as exc:
                # The broker refused this reply and closed only the reply channel:
                # tell the caller instead; the broker itself is fine.
                log.warning(
                    "service %s: the broker refused the reply to %s (%s): answering with an error",
                    self.name,
                    op,
                    exc,
                )
                refused: BaseException = exc
                if getattr(exc, "reply_code", None) == _PRECONDITION_FAILED:
                    refused = ReplyTooLargeError(
                        f"the reply to {op} was refused by the broker ({len(encoded)} bytes; "
                        f"{exc}): use paging or a filter to ask for less"
                    )
                try:
                    producer.publish(_error_reply(refused), reply_to, {}, properties)
                except producer.channel_errors as again:
                    log.error(
                        "service %s: the error reply to %s was refused too (%s)",
                        self.name,
                        op,
                        again,
                    )
        message.ack()


def _request_id(message: Message, headers: Mapping[str, Any]) -> str | None:
    """What identifies a request across deliveries, if anything does.

    The AMQP ``message_id``, else the ``correlation_id`` (our client: one per call,
    kept when the call is sent again), else a legacy dashi call's ``reply-to``
    (a fresh queue name per call).
    """
    properties = message.properties or {}
    for key in ("message_id", "correlation_id"):
        value = properties.get(key)
        if isinstance(value, str) and value:
            return value
    reply_to = headers.get(HEADER_REPLY_TO)
    return reply_to if isinstance(reply_to, str) and reply_to else None


#: AMQP reply code of PRECONDITION_FAILED: what RabbitMQ answers a too-large message with.
_PRECONDITION_FAILED = 406


def _error_reply(exc: BaseException) -> bytes:
    return codec.encode(reply_body(error=error_payload(exc, None)))


class _ReplyPublisher:
    """Publishes a worker's replies on channels other than its consuming channel.

    Replies under :data:`CONFIRM_FROM_BYTES` go out on one plain channel; larger
    ones on a channel in publisher-confirm mode (opened on first use), so that a
    refusal is raised by :meth:`publish`. Never on the consuming channel: a refused
    publish closes its channel, and with it any unacknowledged delivery.
    """

    def __init__(self, connection: kombu.Connection, exchange: kombu.Exchange) -> None:
        self._connection = connection
        self._exchange = exchange
        self._plain = kombu.Producer(connection.channel(), exchange=exchange)
        self._confirmed: kombu.Producer | None = None
        #: What a refused publish raises (the transport's channel errors).
        self.channel_errors: tuple[type[BaseException], ...] = tuple(connection.channel_errors)

    def publish(
        self, body: bytes, routing_key: str, headers: dict[str, Any], properties: dict[str, Any]
    ) -> None:
        producer = self._plain
        if len(body) >= CONFIRM_FROM_BYTES:
            if self._confirmed is None:
                channel = self._connection.channel()
                _confirm_publishes(channel)
                self._confirmed = kombu.Producer(channel, exchange=self._exchange)
            producer = self._confirmed
        producer.publish(
            body,
            routing_key=routing_key,
            content_type=codec.CONTENT_TYPE,
            content_encoding=codec.CONTENT_ENCODING,
            headers=headers,
            retry=False,
            **properties,
        )


def _confirm_publishes(channel: Any) -> None:
    """Make every publish on an AMQP ``channel`` wait for the broker's confirm.

    py-amqp's own switch (its ``confirm_publish`` connection option does the same
    for every channel). A refused publish then raises its channel error in the
    publishing call. Virtual transports (embedded) write synchronously already.
    """
    confirming = getattr(channel, "basic_publish_confirm", None)
    if confirming is not None:
        channel.basic_publish = confirming


def _describe_validation(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "arguments"
    return f"invalid argument {where}: {first['msg']}"


def _interrupt_wait(connection: kombu.Connection) -> None:
    """End a worker's wait for messages on ``connection`` now (called from another thread).

    The embedded transport has a wake-up for it. On AMQP the read side of the
    socket is shut: the wait ends with a connection error, which the stopping
    worker takes as its end, while writes (acknowledgements) still work.
    """
    wake = getattr(connection.transport, "wake", None)
    if wake is not None:
        wake()
        return
    if not connection.connected:
        return  # still connecting: the worker sees the stop within _DRAIN_SECONDS
    sock = getattr(getattr(connection.connection, "transport", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)

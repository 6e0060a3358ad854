"""The client side of the dashi RPC protocol.

:meth:`RpcClient.call` publishes ``{"op", "args"}`` to ``<sysname>.<service>`` with
the ``sender`` and ``reply-to`` application headers and waits for the reply;
:meth:`RpcClient.fire` publishes without waiting.

Replies come back on **one long-lived reply queue per client** (exclusive, bound to
the dashi exchange under its own name) and are matched by the AMQP
``correlation_id`` property, which our services echo. A legacy dashi service does
not echo it; such an uncorrelated reply is taken as the answer to the call in
progress (calls on one client are serialized, so there is exactly one). With
``legacy_reply_queues=True`` the client instead declares a fresh reply queue for
every call, exactly as dashi did.

A call's request carries its deadline (see :mod:`dashi.protocol`): the
AMQP ``expiration`` property on RabbitMQ, the ``x-deadline`` header on the embedded
transport, so a request whose caller gave up is never applied, even by a service
that starts later. A request no queue is bound for (the service has not declared
its queue yet) is sent again with backoff until it is routed or the deadline
passes, on both transports. The timeout's message says whether the request ever
reached the service's queue.

Remote errors are rebuilt as the same exception types
(:mod:`dashi.errors`); a call that gets no reply in time raises
:class:`~dashi.errors.RpcTimeoutError`, also when the broker is unreachable
for the whole timeout. The client reconnects by itself after the broker restarts.
A client that has never reached the broker and has its connection refused (or
whose broker host name does not resolve) raises
:class:`~dashi.errors.BrokerUnreachableError` after a few quick attempts
(:data:`FIRST_CONNECT_ATTEMPTS`) instead of waiting for the timeout: nothing
listens there.

A client never creates the embedded broker's folder (services do): with no folder
a call waits for one to appear (a service starting) until its timeout, and its
:class:`~dashi.errors.RpcTimeoutError` names the folder; a fire is dropped, as
it is when no queue is bound for it.
A broker that refuses the login, the virtual host or a permission raises
:class:`~dashi.errors.AccessRefusedError` at once: retrying cannot help; so
does an embedded broker whose disk is full (:class:`~dashi.errors.DiskFullError`,
naming its folder).

Every message carries the ``sender`` header, fires included (as dashi sent it).
A client given a :class:`~dashi.security.MessageSigner` also signs every
message it publishes (the ``signature`` header): this is the one place messages
are signed.

A client may be shared between threads: calls are serialized. Use one client per
thread for parallel calls.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu
from kombu.message import Message

from dashi import codec
from dashi.broker import BrokerConfig, describe_failure, disk_full, refusal
from dashi.errors import BrokerUnreachableError, RpcTimeoutError, TransportError
from dashi.gcpause import collector_paused
from dashi.protocol import (
    HEADER_DEADLINE,
    HEADER_REPLY_TO,
    HEADER_SENDER,
    error_from_payload,
)
from dashi.security import HEADER_PRINCIPAL, HEADER_SIGNATURE, MessageSigner
from dashi.transport.folder import BrokerFolderMissingError
from dashi.transport.unroutable import UnroutableError

__all__ = ["DEFAULT_TIMEOUT", "FIRST_CONNECT_ATTEMPTS", "RpcClient"]

log = logging.getLogger(__name__)

#: Seconds a call waits for its reply unless told otherwise (dashi's default).
DEFAULT_TIMEOUT = 10.0
#: Seconds ``fire`` keeps trying to reach the broker before giving up.
DEFAULT_FIRE_TIMEOUT = 10.0
_BACKOFF_START, _BACKOFF_FACTOR, _BACKOFF_MAX = 0.1, 2.0, 2.0
#: The daemon serving a service, named when its queue does not exist.
_DAEMONS = {"process_dispatcher": "pd-dispatcher"}
#: Connection attempts (about 0.3 s apart in all) a client that has never reached
#: the broker makes before it reports a refused connection or an unknown host.
FIRST_CONNECT_ATTEMPTS = 3
#: What a first connection gets from a broker that is not there: not worth a timeout.
_NOT_THERE = (ConnectionRefusedError, socket.gaierror)


class _Channel:
    """One connection with a producer and, for calls, a reply consumer."""

    def __init__(self, broker: BrokerConfig, on_return: Callable[..., None] | None = None) -> None:
        self.connection = broker.connection(create=False)
        # One attempt: kombu's connect() tries twice, 2 s apart; the caller retries.
        self.connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        self.channel = self.connection.channel()
        self.exchange = broker.kombu_exchange()
        self.exchange(self.channel).declare()
        self.producer = kombu.Producer(self.channel, exchange=self.exchange, on_return=on_return)
        self.reply_queue: kombu.Queue | None = None
        self.consumer: kombu.Consumer | None = None
        self.last_used = time.monotonic()

    def close(self) -> None:
        try:
            if self.consumer is not None:
                self.consumer.cancel()
            if self.reply_queue is not None and self.connection.connected:
                self.reply_queue(self.channel).delete(nowait=True)
        except Exception:  # best effort on a connection that may be dead
            log.debug("error while closing a client channel", exc_info=True)
        try:
            self.connection.release()
        except Exception:
            log.debug("error while releasing a client connection", exc_info=True)

    def abandon(self) -> None:
        """Close the socket at once, with no closing handshake.

        For a connection whose read or write was interrupted part-way through a
        frame: its framing is then unknown, and a handshake could wait for a
        reply that never comes.
        """
        try:
            self.connection.collect()
        except Exception:
            log.debug("error while abandoning a client connection", exc_info=True)


class RpcClient:
    """Call and fire dashi operations.

    Args:
        broker: where the broker is and how names are prefixed.
        name: this client's name, sent (sysname-prefixed) in the ``sender`` header.
        timeout: default seconds a call waits for its reply.
        legacy_reply_queues: use a fresh reply queue per call (the dashi way).
        signer: signs every published message (``None``: messages are not signed).
    """

    def __init__(
        self,
        broker: BrokerConfig,
        name: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        legacy_reply_queues: bool = False,
        signer: MessageSigner | None = None,
    ) -> None:
        self.broker = broker
        self.signer = signer
        self.name = name or f"client-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.legacy_reply_queues = legacy_reply_queues
        self._call_lock = threading.Lock()
        self._fire_lock = threading.Lock()
        self._call_channel: _Channel | None = None
        self._fire_channel: _Channel | None = None
        self._reply_name = uuid.uuid4().hex
        self._waiting_for: str | None = None
        self._reply: dict[str, Any] | None = None
        self._returned = False
        #: Whether a connection of this client ever opened.
        self._reached = False
        #: Refused first connections in a row (see FIRST_CONNECT_ATTEMPTS).
        self._refusals = 0

    @property
    def sender(self) -> str:
        return self.broker.prefixed(self.name)

    # -- public API ---------------------------------------------------------------

    def call(
        self,
        service: str,
        op: str,
        timeout: float | None = None,
        args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``op`` on ``service`` and return its result.

        Args:
            service: the service name (sysname-prefixed by this client).
            op: the operation name.
            timeout: seconds to wait for the reply (default: the client's).
            args: the arguments as a dict (an alternative to keyword arguments).

        Raises:
            BadRequestError, NotFoundError, UnknownOperationError, WriteConflictError:
                the service raised that error.
            RemoteError: the service failed with another error.
            RpcTimeoutError: no reply within the timeout (also when the broker
                stayed unreachable that long); the message says whether the
                service's queue existed. The request then expires unapplied.
            AccessRefusedError: the broker refused the login, the vhost or a
                permission (at once, without waiting for the timeout).
            BrokerUnreachableError: this client never reached the broker, and its
                connection was refused (or the host name did not resolve)
                FIRST_CONNECT_ATTEMPTS times in a row (without waiting for the timeout).
            DiskFullError: the embedded broker's disk is full (at once).
        """
        body = {"op": op, "args": _merge_args(args, kwargs)}
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._call_lock:
            reply = self._call(service, op, body, timeout, deadline)
        error = reply.get("error") if isinstance(reply, dict) else None
        if error:
            raise error_from_payload(error)
        return reply.get("result") if isinstance(reply, dict) else None

    def fire(
        self,
        service: str,
        op: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_FIRE_TIMEOUT,
        **kwargs: Any,
    ) -> None:
        """Send ``op`` to ``service`` without waiting for a reply.

        Raises:
            TransportError: the broker stayed unreachable for ``timeout`` seconds.
            BrokerUnreachableError: as for :meth:`call` (at once).
            AccessRefusedError: the broker refused the login, the vhost or a
                permission (at once).
            DiskFullError: the embedded broker's disk is full (at once).
        """
        body = {"op": op, "args": _merge_args(args, kwargs)}
        deadline = time.monotonic() + timeout
        delay = _BACKOFF_START
        with self._fire_lock:
            while True:
                try:
                    if self._fire_channel is None:
                        self._fire_channel = self._open()
                    self._publish(self._fire_channel, service, body, headers={})
                    return
                except (KeyboardInterrupt, SystemExit):
                    self._abandon("_fire_channel")
                    raise
                except BrokerFolderMissingError:
                    # No service ever ran there: no queue is bound for the message.
                    log.debug("%s to %s dropped: no embedded broker folder", op, service)
                    return
                except self._recoverable() as exc:
                    self._drop("_fire_channel")
                    self._raise_if_refused(exc)
                    self._raise_if_not_there(exc)
                    if time.monotonic() + delay > deadline:
                        raise TransportError(
                            f"could not send {op} to {service}: broker "
                            f"{self.broker.masked_uri} unreachable ({describe_failure(exc)})"
                        ) from exc
                    time.sleep(delay)
                    delay = min(delay * _BACKOFF_FACTOR, _BACKOFF_MAX)

    def close(self) -> None:
        """Close the client's connections (its reply queue goes with them)."""
        with self._call_lock:
            self._drop("_call_channel")
        with self._fire_lock:
            self._drop("_fire_channel")

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------

    def _recoverable(self) -> tuple[type[BaseException], ...]:
        connection = (self._call_channel or self._fire_channel or _Probe(self.broker)).connection
        return (*connection.connection_errors, *connection.channel_errors, OSError)

    def _open(self, on_return: Callable[..., None] | None = None) -> _Channel:
        channel = _Channel(self.broker, on_return=on_return)
        self._reached, self._refusals = True, 0
        return channel

    def _raise_if_not_there(self, exc: BaseException) -> None:
        """Raise :class:`BrokerUnreachableError` when a client that never reached the
        broker had its connection refused (or its host name not resolved)
        :data:`FIRST_CONNECT_ATTEMPTS` times in a row."""
        if self._reached or not isinstance(exc, _NOT_THERE):
            return
        self._refusals += 1
        if self._refusals >= FIRST_CONNECT_ATTEMPTS:
            self._refusals = 0
            raise BrokerUnreachableError(
                f"broker {self.broker.masked_uri} unreachable ({describe_failure(exc)})"
            ) from exc

    def _raise_if_refused(self, exc: BaseException) -> None:
        """Raise what retrying cannot help at once: :class:`AccessRefusedError` if the
        broker refused access, :class:`DiskFullError` if the embedded broker's disk is full."""
        refused = refusal(exc, self.broker.uri) or disk_full(exc)
        if refused is not None:
            raise refused from exc

    def _drop(self, attribute: str) -> None:
        channel = getattr(self, attribute)
        setattr(self, attribute, None)
        if channel is not None:
            channel.close()

    def _abandon(self, attribute: str) -> None:
        channel = getattr(self, attribute)
        setattr(self, attribute, None)
        if channel is not None:
            channel.abandon()

    def _publish(
        self,
        channel: _Channel,
        service: str,
        body: dict[str, Any],
        headers: dict[str, Any],
        *,
        mandatory: bool = False,
        deadline: float | None = None,
    ) -> None:
        """Publish one request; ``deadline`` (monotonic) makes it expire with the call.

        Raises:
            Unroutable: ``mandatory`` on the embedded transport and no queue is
                bound for the request (RabbitMQ returns it instead: ``_on_return``).
        """
        headers = {HEADER_SENDER: self.sender, **headers}
        routing_key = self.broker.prefixed(service)
        if self.signer is not None:
            headers[HEADER_SIGNATURE] = self.signer.sign(
                op=body["op"], args=body["args"], sender=self.sender, to=routing_key
            )
            if self.signer.principal is not None:
                headers[HEADER_PRINCIPAL] = self.signer.principal
        properties: dict[str, Any] = {}
        if "correlation_id" in headers:
            properties["correlation_id"] = headers.pop("correlation_id")
        if deadline is not None:
            left = max(0.001, deadline - time.monotonic())
            if self.broker.is_embedded:
                headers[HEADER_DEADLINE] = round(time.time() + left, 3)
            else:
                # kombu sends it as the AMQP ``expiration`` property, in ms
                properties["expiration"] = max(0.001, left)
        channel.producer.publish(
            codec.encode(body),
            routing_key=routing_key,
            content_type=codec.CONTENT_TYPE,
            content_encoding=codec.CONTENT_ENCODING,
            headers=headers,
            retry=False,
            mandatory=mandatory,
            **properties,
        )
        channel.last_used = time.monotonic()

    def _ensure_reply_consumer(self, channel: _Channel, timeout: float) -> str:
        if self.legacy_reply_queues:
            name = uuid.uuid4().hex
            queue = kombu.Queue(
                name,
                channel.exchange,
                routing_key=name,
                durable=False,
                queue_arguments={"x-expires": int((timeout + 1) * 1000)},
            )
        elif channel.reply_queue is not None:
            return channel.reply_queue.name  # type: ignore[no-any-return]
        else:
            name = self._reply_name
            queue = kombu.Queue(
                name,
                channel.exchange,
                routing_key=name,
                durable=False,
                exclusive=not self.broker.is_embedded,
                auto_delete=True,
            )
        channel.reply_queue = queue
        channel.consumer = kombu.Consumer(
            channel.channel,
            queues=[queue],
            on_message=self._on_reply,
            accept=["json"],
            no_ack=True,
        )
        channel.consumer.consume()
        return name

    def _on_return(
        self, exception: Exception, exchange: str, routing_key: str, message: Any
    ) -> None:
        """The broker returned a request no queue was bound for (e.g. right after a restart)."""
        correlation_id = getattr(message, "properties", {}).get("correlation_id")
        if correlation_id and correlation_id == self._waiting_for:
            self._returned = True

    def _on_reply(self, message: Message) -> None:
        correlation_id = message.properties.get("correlation_id")
        if self._waiting_for is None:
            return
        if correlation_id and correlation_id != self._waiting_for:
            log.debug("discarding a late reply (correlation id %s)", correlation_id)
            return
        try:
            body = _decode(message)
        except Exception as exc:
            body = {"result": None, "error": {"exc_type": "InvalidReply", "value": str(exc)}}
        self._reply = body if isinstance(body, dict) else {"result": body, "error": None}

    def _call(
        self, service: str, op: str, body: dict[str, Any], timeout: float, deadline: float
    ) -> dict[str, Any]:
        delay = _BACKOFF_START
        correlation_id = uuid.uuid4().hex
        last_error: BaseException | None = None
        published = False
        # Whether the last request sent found no queue (returned, or refused by
        # the embedded transport): the service never saw it.
        unroutable = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                if self._call_channel is None:
                    self._call_channel = self._open(
                        # the embedded transport raises UnroutableError instead of
                        # returning (basic.return), and has no restarts
                        on_return=None if self.broker.is_embedded else self._on_return,
                    )
                channel = self._call_channel
                reply_to = self._ensure_reply_consumer(channel, timeout)
                self._waiting_for, self._reply, self._returned = correlation_id, None, False
                if not published:
                    try:
                        self._publish(
                            channel,
                            service,
                            body,
                            {HEADER_REPLY_TO: reply_to, "correlation_id": correlation_id},
                            mandatory=True,
                            deadline=deadline,
                        )
                    except UnroutableError:
                        self._returned = True
                    published = True
                reply = None if self._returned else self._wait(channel, deadline)
                if self.legacy_reply_queues:
                    self._drop_legacy_queue(channel)
                if reply is not None:
                    return reply
                unroutable = self._returned
                if not self._returned:
                    break
                # Nobody consumes the service queue yet (it is declared by the
                # service): the request was not delivered, so sending it again is safe.
                published = False
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * _BACKOFF_FACTOR, _BACKOFF_MAX)
            except (KeyboardInterrupt, SystemExit):
                # Interrupted (Ctrl-C) perhaps in the middle of a frame.
                self._abandon("_call_channel")
                raise
            except self._recoverable() as exc:
                # The request may or may not have reached the broker; a request
                # published on a connection that then failed is sent again.
                last_error = exc
                published = False
                self._drop("_call_channel")
                self._raise_if_refused(exc)
                self._raise_if_not_there(exc)
                sleep = min(delay, max(0.0, deadline - time.monotonic()))
                time.sleep(sleep)
                delay = min(delay * _BACKOFF_FACTOR, _BACKOFF_MAX)
            finally:
                self._waiting_for = None
        daemon = _DAEMONS.get(service, "the service")
        if isinstance(last_error, BrokerFolderMissingError) and not published:
            reason = (
                f"no reply within {timeout:g}s: the embedded broker's folder "
                f"{last_error.filename} does not exist (is {daemon} running?)"
            )
        elif last_error is not None and not published:
            reason = (
                f"broker {self.broker.masked_uri} unreachable "
                f"for {timeout:g}s ({describe_failure(last_error)})"
            )
        elif unroutable:
            reason = (
                f"no reply within {timeout:g}s: the service's queue "
                f"{self.broker.prefixed(service)!r} does not exist (is {daemon} running?)"
            )
        else:
            reason = (
                f"no reply within {timeout:g}s: the request was delivered to the "
                "service's queue but no reply came (it expires there unapplied)"
            )
        raise RpcTimeoutError(
            f"{op} on {service}: {reason}", operation=op, service=service, reason=reason
        )

    def _wait(self, channel: _Channel, deadline: float) -> dict[str, Any] | None:
        while self._reply is None and not self._returned:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                channel.connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:
                channel.connection.heartbeat_check()
        return self._reply

    def _drop_legacy_queue(self, channel: _Channel) -> None:
        queue, channel.reply_queue = channel.reply_queue, None
        consumer, channel.consumer = channel.consumer, None
        if consumer is not None:
            consumer.cancel()
        if queue is not None:
            try:
                queue(channel.channel).delete(nowait=True)
            except Exception:
                log.debug("could not delete reply queue %s", queue.name, exc_info=True)


class _Probe:
    """Gives access to a transport's error classes without connecting."""

    def __init__(self, broker: BrokerConfig, on_return: Callable[..., None] | None = None) -> None:
        self.connection = broker.connection()


#: Replies at least this large are decoded with the cyclic garbage collector paused.
_LARGE_REPLY_BYTES = 1 << 20


def _decode(message: Message) -> Any:
    """The decoded body of ``message``.

    A large reply (``describe_processes`` or ``dump`` of 100,000 processes is
    ~50 MB of JSON) becomes millions of new objects without cycles; the
    collections their allocation triggers would triple the decoding time.
    """
    if len(message.body or b"") < _LARGE_REPLY_BYTES:
        return codec.decode(message)
    with collector_paused():
        return codec.decode(message)


def _merge_args(args: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    if args and kwargs:
        raise TypeError("specify args dict or keyword arguments, not both")
    return dict(args or kwargs)

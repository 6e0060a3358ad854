"""Embedded, broker-less kombu transport for processes on one machine.

URL: ``embedded://``. Transport options:

* ``data_folder`` (required): the directory shared by every process that should
  reach each other (``<state_dir>/broker``); its layout is described in
  :mod:`dashi.transport.folder`.
* ``polling_interval``: the longest wait between two looks at a queue when
  nothing wakes the consumer (seconds).
* ``create_folder`` (default true): create ``data_folder`` when it does not exist.
  When false, connecting to a folder that does not exist raises
  :class:`~dashi.transport.folder.BrokerFolderMissingError` (an ``OSError``)
  and creates nothing: RPC clients connect so, services create the folder.

Built on kombu's virtual transport, with what a broker shared by several
processes needs:

* one folder per queue and a routing index per exchange and routing key, so a
  publish or a read costs the same however many other queues and messages exist;
* a message is written to a temporary name and renamed into place, so a reader
  in another process never sees a half-written (or empty) file, and a reader
  claims a message by renaming it, so two consumers of one queue never both
  receive it;
* queue expiry as RabbitMQ's: ``x-expires`` is honoured (a queue nobody consumed
  or declared for that long goes, with its bindings and messages), and an
  ``auto_delete`` queue goes when its last consumer cancels, or
  :data:`~dashi.transport.folder.AUTO_DELETE_GRACE` seconds after its
  consumer died; every connection holds a lease (a flock the kernel releases
  when the process dies) that keeps the queues it consumes alive;
* periodic sweeps of what dead processes left (expired queues, messages claimed
  and never read, dead leases, dangling bindings), in a background thread when a
  connection opens and every
  :data:`~dashi.transport.folder.SWEEP_INTERVAL` seconds while it waits.

On Linux a consumer sleeps on inotify watches of the queues it consumes and wakes
as soon as a message lands in one of them, so idle consumers cost next to no CPU
and delivery takes well under a millisecond; elsewhere it falls back to polling
every ``polling_interval``.

Capabilities: direct, topic and fanout exchanges; queue expiry and auto-delete;
at-most-once delivery of messages held unacknowledged by a consumer that
crashes. No message TTL (a call's ``x-deadline`` header is checked by the service
instead), no AMQP heartbeats; a ``mandatory`` publish that reaches no queue raises
:class:`~dashi.transport.unroutable.UnroutableError` from the publishing
call, where RabbitMQ would return the message.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import threading
import time
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.utils.json import dumps, loads

from dashi.transport.folder import (
    SWEEP_INTERVAL,
    BrokerFolder,
    BrokerFolderMissingError,
    Lease,
    QueueGoneError,
    encode,
)
from dashi.transport.unroutable import UnroutableError

__all__ = ["SCHEME", "Channel", "Transport", "register"]

log = logging.getLogger(__name__)

SCHEME = "embedded"

#: The longest a consumer sleeps without looking at its queues, even with inotify.
_MAX_IDLE_WAIT = 1.0

_IN_MOVED_TO = 0x00000080
_IN_CLOSE_WRITE = 0x00000008
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


def register() -> None:
    """Make ``embedded://`` URLs resolve to this transport."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")


class _Inotify:
    """Minimal inotify watches on directories (Linux only)."""

    def __init__(self) -> None:
        libc_name = ctypes.util.find_library("c")
        self._libc = ctypes.CDLL(libc_name, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd

    def watch(self, folder: str) -> None:
        """Watch ``folder`` (again: a folder re-created under the same name gets a new watch)."""
        self._libc.inotify_add_watch(self.fd, folder.encode(), _IN_MOVED_TO | _IN_CLOSE_WRITE)

    def clear(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _Waker:
    """Lets another thread end a blocking ``drain_events`` at once (a service stopping).

    A self-pipe, made on first use and closed with the connection, that the
    waiting consumer selects on beside its inotify watch.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: tuple[int, int] | None = None
        self._woken = False

    def fileno(self) -> int:
        with self._lock:
            if self._fds is None:
                read, write = os.pipe()
                os.set_blocking(read, False)
                os.set_blocking(write, False)
                self._fds = (read, write)
            return self._fds[0]

    def wake(self) -> None:
        with self._lock:
            self._woken = True
            if self._fds is not None:
                with contextlib.suppress(OSError):  # a full pipe is already awake
                    os.write(self._fds[1], b"\0")

    def take(self) -> bool:
        """Whether a wake came since the last call (and forget it)."""
        with self._lock:
            woken, self._woken = self._woken, False
            if woken and self._fds is not None:
                with contextlib.suppress(OSError):
                    while os.read(self._fds[0], 4096):
                        pass
            return woken

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, None
        for fd in fds or ():
            with contextlib.suppress(OSError):
                os.close(fd)


class Channel(virtual.Channel):
    """A channel on a :class:`~dashi.transport.folder.BrokerFolder`."""

    supports_fanout = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder: BrokerFolder = self.connection.folder

    @property
    def transport_options(self) -> dict[str, Any]:
        return self.connection.client.transport_options  # type: ignore[no-any-return]

    # -- queues and bindings ------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        arguments = kwargs.get("arguments") or {}
        expires = arguments.get("x-expires")
        self.folder.declare_queue(
            queue,
            expires=None if expires is None else float(expires) / 1000.0,
            auto_delete=bool(kwargs.get("auto_delete")),
        )

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.folder.has_queue(queue)

    def queue_bind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        # Always on disk: a binding remembered in this process may have expired.
        try:
            self.folder.bind(queue, exchange or "amq.direct", routing_key or "")
        except QueueGoneError as exc:
            raise ChannelError(f"NOT_FOUND - {exc}") from exc

    def queue_unbind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        self.folder.unbind(queue, exchange or "amq.direct", routing_key or "")

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> int:
        if if_empty and self.folder.size(queue):
            return 0
        if if_unused and self.folder.has_consumers(queue):
            return 0
        return self.folder.delete_queue(queue)

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        kind = self.typeof(exchange)
        return [
            kind.prepare_bind(queue, exchange, routing_key, None)
            for routing_key, queue, _ in self.folder.bindings(exchange)
        ]

    def list_bindings(self) -> Any:
        return (
            (queue, exchange, routing_key)
            for exchange in self.state.exchanges
            for routing_key, _, queue in self.get_table(exchange)
        )

    # -- messages -----------------------------------------------------------------

    def basic_publish(self, message: Any, exchange: str, routing_key: str, **kwargs: Any) -> None:
        self._inplace_augment_message(message, exchange, routing_key)
        data = dumps(message).encode("utf-8")
        if not exchange:
            delivered = int(self.folder.put(encode(routing_key), data))
        elif self.typeof(exchange).type == "direct":
            delivered = self.folder.put_routed(exchange, routing_key, data)
        else:
            delivered = 0
            for queue in self.typeof(exchange).lookup(
                self.get_table(exchange), exchange, routing_key, None
            ):
                delivered += int(self.folder.put(encode(queue), data))
        if not delivered and kwargs.get("mandatory"):
            # Where RabbitMQ would return the message (basic.return).
            raise UnroutableError(f"no queue bound to {exchange!r} for {routing_key!r}")

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        self.folder.put(encode(queue), dumps(payload).encode("utf-8"))

    def _put_fanout(self, exchange: str, payload: Any, routing_key: str, **kwargs: Any) -> None:
        data = dumps(payload).encode("utf-8")
        for _, _, encoded in self.folder.bindings(exchange):
            self.folder.put(encoded, data)

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        data = self.folder.get(queue, self.connection.lease())
        if data is None:
            raise Empty()
        return loads(data.decode("utf-8"))

    def _purge(self, queue: str) -> int:
        return self.folder.purge(queue)

    def _size(self, queue: str) -> int:
        return self.folder.size(queue)

    # -- consumers ----------------------------------------------------------------

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        try:
            self.folder.add_consumer(queue, self.connection.lease())
        except QueueGoneError as exc:
            raise ChannelError(f"NOT_FOUND - {exc}") from exc
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            lease = self.connection.lease()
            self.folder.remove_consumer(queue, lease)
            meta = self.folder.has_queue(queue) and self._auto_delete(queue)
            if meta and not self.folder.has_consumers(queue):
                self.folder.delete_queue(queue)
        return result

    def _auto_delete(self, queue: str) -> bool:
        meta = self.folder._read_meta(self.folder.queue_dir(queue))
        return bool(meta and meta.get("auto_delete"))


class Transport(virtual.Transport):
    """The embedded transport (see the module docstring)."""

    Channel = Channel
    driver_type = SCHEME
    driver_name = SCHEME
    implements = virtual.Transport.implements.extend(
        asynchronous=False, exchange_type=frozenset(["direct", "topic", "fanout"])
    )
    #: Exchanges declared in this process (their types); bindings live on disk.
    global_state = virtual.BrokerState()

    def __init__(self, client: Any, **kwargs: Any) -> None:
        folder = client.transport_options.get("data_folder")
        if not folder:
            raise ValueError("the embedded transport needs the 'data_folder' transport option")
        self.folder = BrokerFolder(folder)
        self.create_folder = bool(client.transport_options.get("create_folder", True))
        super().__init__(client, **kwargs)
        self.state = self.global_state
        self._lease: Lease | None = None
        self._watch: _Inotify | None = None
        self._watch_failed = False
        self._next_sweep = 0.0
        self._sweeper: threading.Thread | None = None
        self._waker = _Waker()

    def driver_version(self) -> str:
        return "2"

    def establish_connection(self) -> Any:
        if not self.create_folder and not self.folder.exists():
            raise BrokerFolderMissingError(self.folder.root)
        self.folder.ensure()
        self._maybe_sweep()
        return super().establish_connection()

    def lease(self) -> Lease:
        """This connection's lease (taken on first use, released when it closes)."""
        if self._lease is None:
            self._lease = Lease(self.folder)
        return self._lease

    def _maybe_sweep(self) -> None:
        """Start a sweep in the background when none ran lately (never in the caller's way)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL
        if self._sweeper is not None and self._sweeper.is_alive():
            return
        if self.folder.sweep_due():
            self._sweeper = threading.Thread(
                target=self._sweep, name="embedded-broker-sweep", daemon=True
            )
            self._sweeper.start()

    def _sweep(self) -> None:
        try:
            self.folder.sweep()
        except OSError as exc:  # the folder went away, or a file could not be read
            log.warning("embedded broker %s: sweep failed: %s", self.folder.root, exc)

    def _watcher(self) -> _Inotify | None:
        if self._watch is None and not self._watch_failed:
            try:
                self._watch = _Inotify()
            except (OSError, AttributeError, TypeError):
                self._watch_failed = True
        if self._watch is not None:
            for channel in self.channels:
                for queue in channel._active_queues:
                    self._watch.watch(str(self.folder.queue_dir(queue)))
        return self._watch

    def wake(self) -> None:
        """End a ``drain_events`` blocked in another thread now, with ``TimeoutError``
        (as if its timeout had passed), so that a stopping consumer need not wait it out."""
        self._waker.wake()

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        start = time.monotonic()
        watch = self._watcher()
        waiting_on = [self._waker.fileno()] + ([watch.fd] if watch is not None else [])
        idle_wait = _MAX_IDLE_WAIT if watch is not None else (self.polling_interval or 0.01)
        while True:
            if self._waker.take():
                raise TimeoutError()
            if watch is not None:
                watch.clear()
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                pass
            elapsed = time.monotonic() - start
            if timeout is not None and elapsed >= timeout:
                raise TimeoutError()
            self._maybe_sweep()
            remaining = _MAX_IDLE_WAIT if timeout is None else timeout - elapsed
            with contextlib.suppress(InterruptedError):
                select.select(waiting_on, [], [], min(remaining, idle_wait))

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        self._waker.close()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._lease is not None:
            self._lease.close()
            self._lease = None

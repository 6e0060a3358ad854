"""Where and how to reach the message broker.

A :class:`BrokerConfig` holds everything the RPC layer needs to open kombu
connections and name broker objects the dashi way:

* the exchange is ``<sysname>.<exchange>`` when a sysname is set (a direct,
  non-durable exchange);
* a service's queue and routing key are ``<sysname>.<service>``;
* URLs are kombu URLs: ``amqp://user:pass@host:5672/vhost`` for RabbitMQ, or
  ``embedded://`` for the broker-less transport whose messages live under
  ``<state_dir>/broker`` (see :mod:`dashi.transport.embedded`).

Credentials are never logged: use :func:`mask_uri` whenever a URL is shown.

Connection failures are translated here, at the boundary, by :func:`refusal` (the
broker refused the login, the virtual host or a permission: retrying cannot help),
:func:`disk_full` (the embedded broker's folder is on a full disk) and
:func:`describe_failure` (a one-line cause for any other failure: connection
refused, unknown host, timeout ...).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp.exceptions
import kombu

from dashi.errors import AccessRefusedError, DiskFullError
from dashi.masking import mask_uri
from dashi.protocol import DEFAULT_MAX_MESSAGE_SIZE
from dashi.transport import embedded
from dashi.transport.folder import BrokerFolderMissingError

__all__ = ["BrokerConfig", "describe_failure", "disk_full", "mask_uri", "refusal"]

#: Embedded transport polling interval (seconds): low enough for ~ms latency.
EMBEDDED_POLLING_INTERVAL = 0.005
#: Time allowed for the TCP connect and AMQP handshake.
CONNECT_TIMEOUT = 5.0

#: What writing a file raises when the disk (or the user's quota) is full.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def describe_failure(exc: BaseException) -> str:
    """One line saying why talking to the broker failed, e.g. ``connection refused``.

    Broker replies keep their AMQP name (``ACCESS_REFUSED - ...``); socket errors are
    named plainly. The text never contains the URL (hence no credentials).
    """
    if isinstance(exc, amqp.exceptions.AMQPError):
        return str(exc.reply_text or exc).strip().splitlines()[0]
    if isinstance(exc, BrokerFolderMissingError):
        return f"no embedded broker folder {exc.filename}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def disk_full(exc: BaseException) -> DiskFullError | None:
    """The :class:`DiskFullError` for ``exc`` if a message could not be written for lack of space.

    The embedded transport raises these with the broker's folder as the file name.
    """
    if not isinstance(exc, OSError) or exc.errno not in _DISK_FULL:
        return None
    where = f" in {exc.filename}" if exc.filename else ""
    return DiskFullError(
        f"{os.strerror(exc.errno)}{where}: free space on that disk "
        "(old process output and logs) and try again"
    )


def refusal(exc: BaseException, uri: str) -> AccessRefusedError | None:
    """The :class:`AccessRefusedError` for ``exc`` if the broker refused access, else ``None``.

    RabbitMQ answers a wrong user name or password with ``ACCESS_REFUSED`` (403) and
    an unknown virtual host, or one the user may not use, with ``NOT_ALLOWED`` (530);
    a missing permission on a queue or exchange is ``ACCESS_REFUSED`` on the channel.

    Args:
        exc: what opening the connection (or declaring on it) raised.
        uri: the broker URL, shown with its password masked.
    """
    if not isinstance(exc, amqp.exceptions.AccessRefused | amqp.exceptions.NotAllowed):
        return None
    masked = mask_uri(uri)
    # The handshake's refusal carries no method (a channel's names e.g. Queue.declare).
    if isinstance(exc, amqp.exceptions.AccessRefused) and not exc.method_name:
        user = urllib.parse.unquote(urllib.parse.urlsplit(uri).username or "guest")
        return AccessRefusedError(
            f"broker {masked} refused the login of user {user!r} "
            "(ACCESS_REFUSED: wrong user name or password)"
        )
    return AccessRefusedError(f"broker {masked} refused access: {describe_failure(exc)}")


@dataclass(frozen=True)
class BrokerConfig:
    """Connection parameters and dashi naming rules.

    Attributes:
        uri: kombu URL (``amqp://...`` or ``embedded://``).
        exchange: exchange name before sysname prefixing.
        sysname: optional system name that prefixes the exchange and service names.
        heartbeat: AMQP heartbeat in seconds (0 disables it).
        state_dir: where the embedded transport keeps its messages.
        send_tracebacks: whether services include tracebacks in error replies.
        ssl: use TLS to the broker (also implied by an ``amqps://`` URL).
        ssl_ca: the CA certificate file the broker's certificate must chain to
            (``None``: the system's CAs).
        ssl_cert: this peer's client certificate file (mutual TLS), with
        ssl_key: its private key file.
        max_message_size: largest reply body (bytes) a service publishes; a larger
            reply is answered with :class:`~dashi.errors.ReplyTooLargeError`.
    """

    uri: str = "embedded://"
    exchange: str = "default_dashi_exchange"
    sysname: str | None = None
    heartbeat: int = 30
    state_dir: Path | None = None
    send_tracebacks: bool = False
    ssl: bool = False
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    transport_options: dict[str, Any] = field(default_factory=dict)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    @property
    def is_embedded(self) -> bool:
        return self.uri.split("://", 1)[0] == embedded.SCHEME

    @property
    def masked_uri(self) -> str:
        return mask_uri(self.uri)

    def prefixed(self, name: str) -> str:
        """``<sysname>.<name>`` when a sysname is set, else ``name``."""
        return f"{self.sysname}.{name}" if self.sysname else name

    @property
    def exchange_name(self) -> str:
        return self.prefixed(self.exchange)

    def kombu_exchange(self) -> kombu.Exchange:
        return kombu.Exchange(self.exchange_name, type="direct", durable=False, auto_delete=False)

    @property
    def embedded_folder(self) -> Path:
        """The embedded transport's folder (``<state_dir>/broker``)."""
        folder = self.transport_options.get("data_folder")
        if folder:
            return Path(folder)
        return (self.state_dir or Path.cwd() / ".pd-state") / "broker"

    @property
    def uses_tls(self) -> bool:
        """Whether connections are made over TLS (``ssl``, the CA/cert options, ``amqps``)."""
        return (
            self.ssl
            or self.uri.startswith("amqps://")
            or any((self.ssl_ca, self.ssl_cert, self.ssl_key))
        )

    def ssl_options(self) -> dict[str, Any] | bool | None:
        """kombu's ``ssl`` argument: ``None`` (plain), ``True`` (system CAs) or the
        options of py-amqp's TLS socket (CA, client certificate and key; the broker's
        certificate is always verified, against the host name of the URL)."""
        if not self.uses_tls or self.is_embedded:
            return None
        if not any((self.ssl_ca, self.ssl_cert, self.ssl_key)):
            return True
        options: dict[str, Any] = {
            "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": urllib.parse.urlsplit(self.uri).hostname,
        }
        if self.ssl_ca:
            options["ca_certs"] = self.ssl_ca
        if self.ssl_cert:
            options["certfile"] = self.ssl_cert
        if self.ssl_key:
            options["keyfile"] = self.ssl_key
        return options

    def connection(self, *, create: bool = True) -> kombu.Connection:
        """A new, unconnected kombu connection.

        Args:
            create: whether connecting may create the embedded transport's folder
                (services: yes; clients: no, see :mod:`dashi.transport.embedded`).
        """
        options = dict(self.transport_options)
        if self.is_embedded:
            embedded.register()
            options.setdefault("data_folder", str(self.embedded_folder))
            options.setdefault("create_folder", create)
            options.setdefault("polling_interval", EMBEDDED_POLLING_INTERVAL)
            heartbeat = 0
        else:
            heartbeat = self.heartbeat
        return kombu.Connection(
            self.uri,
            heartbeat=heartbeat,
            ssl=self.ssl_options(),
            connect_timeout=CONNECT_TIMEOUT,
            transport_options=options,
        )

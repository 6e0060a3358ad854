"""Who may command an agent: the sender check and shared-secret HMAC signatures.

An agent must take ``launch_process``, ``terminate_process``, ``restart_process``
and ``cleanup`` only from its dispatcher. Two checks, both made by a
:class:`CommandGuard` that the service runs before the handler (see
:meth:`dashi.service.RpcService.handle`):

* **sender**: the ``sender`` header must be the dispatcher's sysname-prefixed
  name (``pd.name``), as every dashi peer sends it. This stops mistakes and
  clients that are not the dispatcher, but the header is whatever the publisher
  writes: on its own it is no protection against a broker user who lies.
* **signature** (when a key is configured, ``security.hmac_key``): the message
  must carry a ``signature`` header made with the shared key over the operation,
  its arguments, the sender, the destination queue, a timestamp and a nonce.
  Whoever does not hold the key cannot make one, and a captured one cannot be
  reused: it is refused once it is older (or newer) than the replay window, and
  inside the window its nonce is accepted only once.

The ``signature`` header::

    v1:<timestamp>:<nonce>:<mac>

``timestamp`` is the sender's clock in seconds since the epoch with six decimals,
``nonce`` 32 random hex digits, and ``mac`` the lowercase hex HMAC-SHA256, keyed
with the UTF-8 bytes of the key, of this canonical JSON (keys sorted, no spaces,
ASCII only, kombu's JSON encoder)::

    {"args":{...},"nonce":"...","op":"launch_process","sender":"<sysname>.process_dispatcher",
     "timestamp":"1770000000.123456","to":"<sysname>.agent7","v":1}

``args`` are the request's arguments as they travel (``{}`` when absent); ``to`` is
the routing key, so a command signed for one agent is refused by every other.

The verifier raises :class:`NotAuthorizedError`; the guard logs the refusal and
raises it on as a plain :class:`~dashi.errors.BadRequestError` (on the wire
``dashi.exceptions.BadRequestError``, a type every dashi client knows, with a
message starting ``not authorized:``), so a call is answered with it and a fire
is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import reprlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from kombu.utils import json as kombu_json
from pydantic import SecretStr

from dashi.errors import BadRequestError
from dashi.protocol import HEADER_SENDER

__all__ = [
    "COMMAND_OPERATIONS",
    "HEADER_SIGNATURE",
    "SIGNATURE_VERSION",
    "CommandGuard",
    "MessageSigner",
    "NotAuthorizedError",
    "SignatureVerifier",
    "canonical_message",
]

log = logging.getLogger(__name__)

#: The application header that carries the signature.
HEADER_SIGNATURE = "signature"
#: The version tag of the signature format (the first field of the header).
SIGNATURE_VERSION = "v1"
#: The agent operations only the dispatcher may send (the others only read).
COMMAND_OPERATIONS = ("launch_process", "terminate_process", "restart_process", "cleanup")
#: Random bytes in a nonce (hex-encoded in the header).
_NONCE_BYTES = 16

Clock = Callable[[], float]


class NotAuthorizedError(BadRequestError):
    """A command came from someone other than the dispatcher, or was not signed right.

    :class:`CommandGuard` sends it to callers as a plain ``BadRequestError``
    (legacy clients know no other type for it); the message starts with
    ``not authorized:``.
    """


def _key_bytes(key: str | bytes | SecretStr) -> bytes:
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not key:
        raise ValueError("an HMAC key must not be empty")
    return key


def canonical_message(
    *, op: str, args: Any, sender: str, to: str, timestamp: str, nonce: str
) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    document = {
        "args": {} if args is None else args,
        "nonce": nonce,
        "op": op,
        "sender": sender,
        "timestamp": timestamp,
        "to": to,
        "v": 1,
    }
    text: str = kombu_json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class MessageSigner:
    """Makes the ``signature`` header of outgoing messages.

    Args:
        key: the shared secret (``security.hmac_key``).
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(self, key: str | bytes | SecretStr, *, clock: Clock = time.time) -> None:
        self._key = _key_bytes(key)
        self._clock = clock

    def __repr__(self) -> str:
        return "MessageSigner(key='***')"

    def sign(self, *, op: str, args: Any, sender: str, to: str) -> str:
        """The ``signature`` header value for one message."""
        timestamp = f"{self._clock():.6f}"
        nonce = secrets.token_hex(_NONCE_BYTES)
        message = canonical_message(
            op=op, args=args, sender=sender, to=to, timestamp=timestamp, nonce=nonce
        )
        return f"{SIGNATURE_VERSION}:{timestamp}:{nonce}:{_mac(self._key, message)}"


class SignatureVerifier:
    """Checks ``signature`` headers: the MAC, the replay window and the nonce.

    Args:
        key: the shared secret (``security.hmac_key``).
        max_age: seconds a signature stays valid either side of its timestamp.
        clock: seconds since the epoch (injectable for tests).

    Nonces of accepted messages are remembered for twice ``max_age`` (the longest a
    message with a given timestamp can stay acceptable), so the memory is bounded
    by the number of genuine commands in that time. Thread-safe.
    """

    def __init__(
        self, key: str | bytes | SecretStr, *, max_age: float, clock: Clock = time.time
    ) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._key = _key_bytes(key)
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()

    def __repr__(self) -> str:
        return f"SignatureVerifier(key='***', max_age={self.max_age!r})"

    def verify(self, header: Any, *, op: str, args: Any, sender: str, to: str) -> None:
        """Accept a message or say why not.

        Raises:
            NotAuthorizedError: no or malformed header, wrong MAC, outside the
                replay window, or a nonce already used.
        """
        if not isinstance(header, str) or not header:
            raise NotAuthorizedError(f"not authorized: {op} must carry a signature")
        parts = header.split(":")
        if len(parts) != 4 or parts[0] != SIGNATURE_VERSION:
            raise NotAuthorizedError(f"not authorized: {op} has a malformed signature")
        _, timestamp, nonce, mac = parts
        try:
            signed_at = float(timestamp)
        except ValueError:
            raise NotAuthorizedError(f"not authorized: {op} has a malformed signature") from None
        try:
            message = canonical_message(
                op=op, args=args, sender=sender, to=to, timestamp=timestamp, nonce=nonce
            )
        except (TypeError, ValueError):
            raise NotAuthorizedError(f"not authorized: {op} has a malformed signature") from None
        if not hmac.compare_digest(_mac(self._key, message), mac):
            raise NotAuthorizedError(f"not authorized: {op} has an invalid signature")
        now = self._clock()
        if not abs(now - signed_at) <= self.max_age:  # also refuses NaN
            raise NotAuthorizedError(
                f"not authorized: {op} was signed {now - signed_at:.0f}s ago "
                f"(outside the {self.max_age:g}s replay window)"
            )
        with self._lock:
            self._forget_before(now - 2 * self.max_age)
            if nonce in self._seen:
                raise NotAuthorizedError(f"not authorized: {op} is a replay of an earlier message")
            self._seen.add(nonce)
            self._order.append((now, nonce))

    def _forget_before(self, cutoff: float) -> None:
        while self._order and self._order[0][0] < cutoff:
            _, nonce = self._order.popleft()
            self._seen.discard(nonce)


class CommandGuard:
    """Admits a message only from ``expected_sender``, signed when a verifier is set.

    A service runs it before the handler of every operation registered with it
    (:meth:`dashi.service.RpcService.handle`); it changes nothing itself.
    Agents guard their four commands with the dispatcher as ``expected_sender``;
    a dispatcher with a key guards ``heartbeat`` with no expected sender (any
    agent), so that only holders of the key can report as an agent.

    Args:
        expected_sender: the sysname-prefixed name of the only accepted sender
            (``None``: any; the signature still covers the sender).
        destination: the sysname-prefixed name of the guarded service (the routing
            key signatures must name).
        verifier: checks signatures; ``None``: no key is configured, only the
            sender is checked.
    """

    def __init__(
        self,
        *,
        expected_sender: str | None,
        destination: str,
        verifier: SignatureVerifier | None,
    ) -> None:
        self.expected_sender = expected_sender
        self.destination = destination
        self.verifier = verifier

    def __call__(self, op: str, args: Any, headers: Mapping[str, Any]) -> None:
        """Accept the request or raise.

        Raises:
            BadRequestError: it is refused (and logged at WARNING); the message
                starts with ``not authorized:``.
        """
        sender = headers.get(HEADER_SENDER)
        try:
            if self.expected_sender is not None and sender != self.expected_sender:
                raise NotAuthorizedError(
                    f"not authorized: {op} is accepted only from {self.expected_sender!r}, "
                    f"not from {reprlib.repr(sender)}"
                )
            if self.verifier is not None:
                if not isinstance(sender, str):
                    raise NotAuthorizedError(f"not authorized: {op} has no sender")
                self.verifier.verify(
                    headers.get(HEADER_SIGNATURE),
                    op=op,
                    args=args,
                    sender=sender,
                    to=self.destination,
                )
        except NotAuthorizedError as exc:
            log.warning(
                "%s: refused %s from %s: %s", self.destination, op, reprlib.repr(sender), exc
            )
            # The wire knows BadRequestError, not this subclass (see the module docstring).
            raise BadRequestError(exc.value) from None

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
A client signing as a principal (see :mod:`pdcommon.auth`) also sends its name in
the ``principal`` header, and the document then has a ``"principal"`` key too.

**Keys.** A verifier or signer takes one key, or a :class:`KeyRing` that gives the
keys of a name. :class:`DerivedKeys` derives each agent's own key from a master
secret and the agent's sysname-prefixed name (HKDF-SHA256, :func:`derive_key`): the
dispatcher signs a command to an agent with that agent's key and takes a heartbeat
only when signed with the key of its sender, so a key taken from one VM commands
and impersonates nobody else. Two masters (current and next) may be given during a
rotation: signatures are made with the first and accepted with either.

**Nonces** are kept in memory, and also in a :class:`NonceJournal` when one is
given (an agent keeps them with its state), so a captured message cannot be
replayed after a restart either.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from kombu.utils import json as kombu_json
from pydantic import SecretStr

from dashi.errors import BadRequestError
from dashi.protocol import HEADER_SENDER

__all__ = [
    "AGENT_KEY_INFO",
    "COMMAND_OPERATIONS",
    "HEADER_PRINCIPAL",
    "HEADER_SIGNATURE",
    "SIGNATURE_VERSION",
    "SIGNED_READ_OPERATIONS",
    "CommandGuard",
    "DerivedKeys",
    "KeyRing",
    "MessageSigner",
    "NonceJournal",
    "NotAuthorizedError",
    "SignatureVerifier",
    "StaticKeys",
    "canonical_message",
    "derive_key",
]

log = logging.getLogger(__name__)

#: The application header that carries the signature.
HEADER_SIGNATURE = "signature"
#: The version tag of the signature format (the first field of the header).
SIGNATURE_VERSION = "v1"
#: The application header that names the principal a client signs as.
HEADER_PRINCIPAL = "principal"
#: The agent operations only the dispatcher may send (the others only read).
COMMAND_OPERATIONS = ("launch_process", "terminate_process", "restart_process", "cleanup")
#: The agent operations that only read, yet only the dispatcher may send once the
#: agent has a key: a process's output is no one else's to read.
SIGNED_READ_OPERATIONS = ("get_process_logs",)
#: The HKDF ``info`` prefix of an agent's key (followed by its prefixed name).
AGENT_KEY_INFO = b"process-dispatcher agent key v1:"
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


def derive_key(master: str | bytes | SecretStr, name: str) -> bytes:
    """The key of agent ``name`` (its sysname-prefixed name) under ``master``.

    HKDF-SHA256 (RFC 5869) with no salt and ``info`` :data:`AGENT_KEY_INFO` + name,
    32 bytes. Whoever holds the result can sign as, and command, that agent only.
    """
    ikm = _key_bytes(master)
    prk = hmac.new(b"\x00" * hashlib.sha256().digest_size, ikm, hashlib.sha256).digest()
    info = AGENT_KEY_INFO + name.encode("utf-8")
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


@runtime_checkable
class KeyRing(Protocol):
    """The keys a name signs with: the first signs, every one is accepted."""

    def keys_for(self, name: str) -> Sequence[bytes]:
        """The keys of ``name`` (empty: it has none, its messages are refused)."""
        ...  # pragma: no cover - protocol


class StaticKeys:
    """The same keys for every name (a shared key, or an agent's own keys)."""

    def __init__(self, *keys: str | bytes | SecretStr) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._keys = tuple(_key_bytes(key) for key in keys)

    def __repr__(self) -> str:
        return f"StaticKeys(<{len(self._keys)} key(s)>)"

    def keys_for(self, name: str) -> Sequence[bytes]:
        return self._keys


class DerivedKeys:
    """Each name's keys derived from master secrets (:func:`derive_key`), cached.

    Args:
        masters: the current master first, then the next one during a rotation.
        accept_masters: the masters themselves are accepted too, after the derived
            keys (a signature by a master holder, who could derive any key anyway:
            peers configured with the shared key before per-agent keys existed).
    """

    def __init__(self, *masters: str | bytes | SecretStr, accept_masters: bool = False) -> None:
        if not masters:
            raise ValueError("at least one master key is needed")
        self._masters = tuple(_key_bytes(master) for master in masters)
        self._accept_masters = accept_masters
        self._cache: dict[str, tuple[bytes, ...]] = {}

    def __repr__(self) -> str:
        return f"DerivedKeys(<{len(self._masters)} master(s)>)"

    def keys_for(self, name: str) -> Sequence[bytes]:
        keys = self._cache.get(name)
        if keys is None:
            keys = tuple(derive_key(master, name) for master in self._masters)
            if self._accept_masters:
                keys += self._masters
            if len(self._cache) < _KEY_CACHE_SIZE:  # bounded: names come off the wire
                self._cache[name] = keys
        return keys


class NonceJournal(Protocol):
    """Where a verifier keeps the nonces it accepted, across restarts."""

    def load(self) -> Iterable[tuple[float, str]]:
        """The ``(accepted at, nonce)`` pairs kept so far."""
        ...  # pragma: no cover - protocol

    def append(self, accepted_at: float, nonce: str) -> None:
        """Keep one more nonce (before the message it came with is carried out)."""
        ...  # pragma: no cover - protocol

    def rewrite(self, entries: Iterable[tuple[float, str]]) -> None:
        """Replace what is kept with ``entries`` (the forgotten ones dropped)."""
        ...  # pragma: no cover - protocol


#: Derived keys cached per verifier (more names are derived again on each use).
_KEY_CACHE_SIZE = 10_000


def _ring(key: str | bytes | SecretStr | KeyRing) -> KeyRing:
    return key if isinstance(key, KeyRing) else StaticKeys(key)


def canonical_message(
    *,
    op: str,
    args: Any,
    sender: str,
    to: str,
    timestamp: str,
    nonce: str,
    principal: str | None = None,
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
    if principal is not None:
        document["principal"] = principal
    text: str = kombu_json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return text.encode("ascii")


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class MessageSigner:
    """Makes the ``signature`` header of outgoing messages.

    Args:
        key: the shared secret (``security.hmac_key``), or a :class:`KeyRing`
            whose first key for the destination signs (a dispatcher signs each
            command with its agent's key).
        principal: the principal this client signs as (sent in the ``principal``
            header and covered by the signature; ``None``: none).
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        key: str | bytes | SecretStr | KeyRing,
        *,
        principal: str | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._ring = _ring(key)
        self.principal = principal
        self._clock = clock

    def __repr__(self) -> str:
        return f"MessageSigner(key='***', principal={self.principal!r})"

    def sign(self, *, op: str, args: Any, sender: str, to: str) -> str:
        """The ``signature`` header value for one message.

        Raises:
            ValueError: the key ring has no key for ``to``.
        """
        keys = self._ring.keys_for(to)
        if not keys:
            raise ValueError(f"no key to sign a message to {to!r}")
        timestamp = f"{self._clock():.6f}"
        nonce = secrets.token_hex(_NONCE_BYTES)
        message = canonical_message(
            op=op,
            args=args,
            sender=sender,
            to=to,
            timestamp=timestamp,
            nonce=nonce,
            principal=self.principal,
        )
        return f"{SIGNATURE_VERSION}:{timestamp}:{nonce}:{_mac(keys[0], message)}"


class SignatureVerifier:
    """Checks ``signature`` headers: the MAC, the replay window and the nonce.

    Args:
        key: the shared secret (``security.hmac_key``), or a :class:`KeyRing`.
        max_age: seconds a signature stays valid either side of its timestamp.
        key_by: whose keys check a message: the destination's (``"to"``, an agent
            checking commands), the sender's (``"sender"``, a dispatcher checking
            heartbeats) or the principal's (``"principal"``, client requests).
        journal: keeps accepted nonces across restarts (``None``: memory only).
        clock: seconds since the epoch (injectable for tests).

    Nonces of accepted messages are remembered for twice ``max_age`` (the longest a
    message with a given timestamp can stay acceptable), so the memory is bounded
    by the number of genuine commands in that time. Thread-safe.
    """

    def __init__(
        self,
        key: str | bytes | SecretStr | KeyRing,
        *,
        max_age: float,
        key_by: str = "to",
        journal: NonceJournal | None = None,
        clock: Clock = time.time,
    ) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        if key_by not in ("to", "sender", "principal"):
            raise ValueError(f"key_by must be to, sender or principal, not {key_by!r}")
        self._ring = _ring(key)
        self.max_age = max_age
        self.key_by = key_by
        self._journal = journal
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()
        self._since_rewrite = 0
        if journal is not None:
            cutoff = clock() - 2 * max_age
            for accepted_at, nonce in sorted(journal.load()):
                if accepted_at >= cutoff and nonce not in self._seen:
                    self._seen.add(nonce)
                    self._order.append((accepted_at, nonce))

    def __repr__(self) -> str:
        return f"SignatureVerifier(key='***', max_age={self.max_age!r})"

    def verify(
        self,
        header: Any,
        *,
        op: str,
        args: Any,
        sender: str,
        to: str,
        principal: str | None = None,
    ) -> None:
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
                op=op,
                args=args,
                sender=sender,
                to=to,
                timestamp=timestamp,
                nonce=nonce,
                principal=principal,
            )
        except (TypeError, ValueError):
            raise NotAuthorizedError(f"not authorized: {op} has a malformed signature") from None
        name = {"to": to, "sender": sender, "principal": principal or ""}[self.key_by]
        if not any(
            hmac.compare_digest(_mac(key, message), mac) for key in self._ring.keys_for(name)
        ):
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
            if self._journal is not None:
                self._journal.append(now, nonce)

    def _forget_before(self, cutoff: float) -> None:
        forgotten = 0
        while self._order and self._order[0][0] < cutoff:
            _, nonce = self._order.popleft()
            self._seen.discard(nonce)
            forgotten += 1
        if self._journal is not None and forgotten:
            # Rewrite the journal now and then, so it stays as bounded as the memory.
            self._since_rewrite += forgotten
            if self._since_rewrite >= max(64, len(self._order)):
                self._since_rewrite = 0
                self._journal.rewrite(list(self._order))


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

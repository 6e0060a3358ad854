"""Who may do what on the dispatcher: principals, roles and the access guard.

Every request model of the dispatcher (:mod:`dispatcher.requests`,
:mod:`pdcommon.heartbeat_messages`) declares the least :class:`OperationRole`
that may call it (``role: ClassVar[OperationRole]``); a model that declares an
``operation`` without a ``role`` is refused when its class is made (``TypeError``,
see :class:`pdcommon.requests.Request`), so no new operation can be forgotten.

Roles are ordered: ``reader`` < ``operator`` < ``admin``. ``agent`` is apart: only
an agent, signing with its own key (:func:`dashi.security.derive_key`), may send a
heartbeat, and only about itself (the resource is named by the signed ``sender``).

A client authenticates every request as a principal (``security.principals`` of
the dispatcher): it sends the principal's name in the ``principal`` header and a
``signature`` (:mod:`dashi.security`) keyed with :func:`principal_key` of its
secret, over the request, a timestamp and a nonce. The dispatcher may hold the
secret or only that key (``secret_hash``, hex), so its configuration need not hold
the password. :class:`AccessGuard` runs before every handler and:

* with no principals configured (and ``require_auth`` off) accepts everything, as
  the legacy system did;
* refuses a request that names a principal but is not signed right, or whose role
  is too low, with ``BadRequestError("not authorized: OP by PRINCIPAL ...")``
  (never the secret), logged at WARNING;
* accepts an unauthenticated request (no ``principal`` header: a legacy peer) only
  while ``security.require_auth`` is off.
"""

from __future__ import annotations

import hashlib
import logging
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from dashi.errors import BadRequestError
from dashi.protocol import HEADER_SENDER
from dashi.security import (
    HEADER_PRINCIPAL,
    HEADER_SIGNATURE,
    KeyRing,
    NotAuthorizedError,
    SignatureVerifier,
)
from pdcommon.roles import OperationRole

__all__ = [
    "AccessGuard",
    "OperationRole",
    "Principal",
    "PrincipalKeys",
    "principal_key",
]

log = logging.getLogger(__name__)

#: The prefix hashed with a principal's secret into its signing key.
_PRINCIPAL_KEY_PREFIX = b"process-dispatcher principal v1\x00"


def principal_key(secret: str | SecretStr) -> bytes:
    """The HMAC key a principal signs with: SHA-256 of a fixed prefix and its secret.

    ``secret_hash`` in the dispatcher's configuration is this, in hex.
    """
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return hashlib.sha256(_PRINCIPAL_KEY_PREFIX + secret.encode("utf-8")).digest()


@dataclass(frozen=True)
class Principal:
    """One configured principal: its name, role and signing key (never shown)."""

    name: str
    role: OperationRole
    key: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"Principal(name={self.name!r}, role={self.role.value!r}, key='***')"


class PrincipalKeys:
    """The :class:`~dashi.security.KeyRing` of the configured principals."""

    def __init__(self, principals: Sequence[Principal]) -> None:
        self._keys = {p.name: (p.key,) for p in principals}

    def __repr__(self) -> str:
        return f"PrincipalKeys({sorted(self._keys)!r})"

    def keys_for(self, name: str) -> Sequence[bytes]:
        return self._keys.get(name, ())


class AccessGuard:
    """Admits a dispatcher request if its principal's role allows the operation.

    Args:
        roles: each operation's least role (from its request model).
        principals: the configured principals (empty: no client authentication).
        destination: the dispatcher's sysname-prefixed name (what signatures name).
        max_age: the replay window of principal signatures (seconds).
        require_auth: refuse requests that name no principal (legacy peers too).
        agent_keys: the agents' keys (derived from ``security.hmac_key``), which
            sign heartbeats (``None``: heartbeats are not checked by key).
    """

    def __init__(
        self,
        roles: Mapping[str, OperationRole],
        principals: Sequence[Principal],
        *,
        destination: str,
        max_age: float,
        require_auth: bool = False,
        agent_keys: KeyRing | None = None,
    ) -> None:
        self.roles = dict(roles)
        self.principals = {p.name: p for p in principals}
        self.destination = destination
        self.require_auth = require_auth
        self._principal_verifier = (
            SignatureVerifier(PrincipalKeys(principals), max_age=max_age, key_by="principal")
            if principals
            else None
        )
        self._agent_verifier = (
            SignatureVerifier(agent_keys, max_age=max_age, key_by="sender")
            if agent_keys is not None
            else None
        )

    def __repr__(self) -> str:
        return (
            f"AccessGuard(principals={sorted(self.principals)!r}, "
            f"require_auth={self.require_auth!r})"
        )

    @property
    def active(self) -> bool:
        """Whether the guard checks anything (else legacy behaviour: no guard)."""
        return bool(self.principals) or self.require_auth or self._agent_verifier is not None

    def __call__(self, op: str, args: Any, headers: Mapping[str, Any]) -> None:
        """Accept the request or raise.

        Raises:
            BadRequestError: refused (logged at WARNING); the message starts with
                ``not authorized:`` and names the operation and the principal.
        """
        principal = headers.get(HEADER_PRINCIPAL)
        sender = headers.get(HEADER_SENDER)
        who = reprlib.repr(principal) if principal is not None else reprlib.repr(sender)
        try:
            self._check(op, args, headers, principal, sender)
        except NotAuthorizedError as exc:
            log.warning("%s: refused %s by %s: %s", self.destination, op, who, exc.value)
            raise BadRequestError(exc.value) from None

    def _check(
        self, op: str, args: Any, headers: Mapping[str, Any], principal: Any, sender: Any
    ) -> None:
        needed = self.roles.get(op, OperationRole.ADMIN)
        if needed is OperationRole.AGENT:
            self._check_agent(op, args, headers, sender)
            return
        if principal is None:
            if self.require_auth:
                raise NotAuthorizedError(
                    f"not authorized: {op} by an unauthenticated client "
                    "(security.require_auth is on)"
                )
            return  # a legacy peer while authentication is optional
        name = principal if isinstance(principal, str) else reprlib.repr(principal)
        known = self.principals.get(principal) if isinstance(principal, str) else None
        if known is None or self._principal_verifier is None or not isinstance(sender, str):
            raise NotAuthorizedError(f"not authorized: {op} by {name} (unknown principal)")
        try:
            self._principal_verifier.verify(
                headers.get(HEADER_SIGNATURE),
                op=op,
                args=args,
                sender=sender,
                to=self.destination,
                principal=principal,
            )
        except NotAuthorizedError as exc:
            reason = exc.value.split(": ", 1)[-1].removeprefix(f"{op} ")
            raise NotAuthorizedError(f"not authorized: {op} by {name} ({reason})") from None
        if not known.role.allows(needed):
            raise NotAuthorizedError(
                f"not authorized: {op} by {name} (role {known.role.value}; "
                f"{op} needs {needed.value})"
            )

    def _check_agent(self, op: str, args: Any, headers: Mapping[str, Any], sender: Any) -> None:
        if self._agent_verifier is None:
            if self.require_auth:
                raise NotAuthorizedError(
                    f"not authorized: {op} by {reprlib.repr(sender)} "
                    "(no agent keys: security.hmac_key is not set)"
                )
            return
        if not isinstance(sender, str):
            raise NotAuthorizedError(f"not authorized: {op} has no sender")
        try:
            self._agent_verifier.verify(
                headers.get(HEADER_SIGNATURE), op=op, args=args, sender=sender, to=self.destination
            )
        except NotAuthorizedError as exc:
            reason = exc.value.split(": ", 1)[-1].removeprefix(f"{op} ")
            raise NotAuthorizedError(
                f"not authorized: {op} by {reprlib.repr(sender)} ({reason})"
            ) from None

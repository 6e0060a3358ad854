"""The :mod:`dashi` objects a daemon or a client builds from its :class:`Settings`.

:mod:`dashi` takes plain values; these functions read them from the typed
configuration (``server.amqp``, ``dashi``, ``security``, ``state_dir``).

Keys (see :mod:`dashi.security` and docs/security.md): the dispatcher derives each
agent's key from the masters ``security.hmac_key`` (and ``next_hmac_key``); an
agent uses its own ``security.agent_key`` (and ``next_agent_key``), or derives it
from a master it was given (legacy files); a client signs as the principal of
``security.client``.
"""

from __future__ import annotations

from dashi.broker import BrokerConfig
from dashi.security import (
    DerivedKeys,
    KeyRing,
    MessageSigner,
    NonceJournal,
    SignatureVerifier,
    StaticKeys,
    derive_key,
)
from pdcommon.auth import AccessGuard, OperationRole, Principal, principal_key
from pdcommon.settings import SecuritySettings, Settings

__all__ = [
    "access_guard",
    "agent_key_hex",
    "agent_keys",
    "agent_signer",
    "agent_verifier",
    "broker_config",
    "client_signer",
    "dispatcher_signer",
    "principals",
]


def broker_config(settings: Settings) -> BrokerConfig:
    """Where the broker is and how names are prefixed (``server.amqp``, ``dashi``)."""
    amqp = settings.server.amqp
    return BrokerConfig(
        uri=settings.amqp_uri,
        exchange=amqp.exchange,
        sysname=settings.dashi.sysname,
        heartbeat=amqp.heartbeat,
        state_dir=settings.state_dir,
        send_tracebacks=settings.dashi.send_tracebacks,
        ssl=amqp.ssl,
        ssl_ca=amqp.ssl_ca,
        ssl_cert=amqp.ssl_cert,
        ssl_key=amqp.ssl_key,
        max_message_size=amqp.max_message_size,
    )


def agent_keys(settings: Settings, *, accept_masters: bool = False) -> DerivedKeys | None:
    """Every agent's keys, derived from the masters (``None``: no ``hmac_key``).

    Args:
        accept_masters: the masters themselves are accepted too (see
            :class:`~dashi.security.DerivedKeys`).
    """
    security = settings.security
    if security.hmac_key is None:
        return None
    masters = [security.hmac_key]
    if security.next_hmac_key is not None:
        masters.append(security.next_hmac_key)
    return DerivedKeys(*masters, accept_masters=accept_masters)


def agent_key_hex(settings: Settings, name: str, *, next_master: bool = False) -> str:
    """The key of agent ``name`` (unprefixed) in hex, as ``security.agent_key`` takes it.

    Raises:
        ValueError: the master asked for is not configured.
    """
    security = settings.security
    master = security.next_hmac_key if next_master else security.hmac_key
    if master is None:
        which = "next_hmac_key" if next_master else "hmac_key"
        raise ValueError(f"security.{which} is not set: there is no master to derive from")
    return derive_key(master, broker_config(settings).prefixed(name)).hex()


def dispatcher_signer(settings: Settings) -> MessageSigner | None:
    """What the dispatcher signs with: each command with its agent's key."""
    keys = agent_keys(settings)
    return None if keys is None else MessageSigner(keys)


def _own_keys(security: SecuritySettings) -> KeyRing | None:
    """An agent's own keys (``agent_key``, ``next_agent_key``), if it was given them."""
    if security.agent_key is None:
        return None
    keys = [bytes.fromhex(security.agent_key.get_secret_value())]
    if security.next_agent_key is not None:
        keys.append(bytes.fromhex(security.next_agent_key.get_secret_value()))
    return StaticKeys(*keys)


def agent_signer(settings: Settings, name: str) -> MessageSigner | None:
    """What agent ``name`` (unprefixed) signs its heartbeats with (``None``: no key)."""
    own = _own_keys(settings.security)
    if own is not None:
        return MessageSigner(own)
    keys = agent_keys(settings)
    if keys is None:
        return None
    return MessageSigner(StaticKeys(keys.keys_for(broker_config(settings).prefixed(name))[0]))


def agent_verifier(
    settings: Settings, journal: NonceJournal | None = None
) -> SignatureVerifier | None:
    """What an agent checks commands with: its own keys (or the masters' derived ones).

    Args:
        journal: keeps the accepted nonces across restarts.
    """
    security = settings.security
    # An agent given the master (a file from before per-agent keys) also takes
    # commands signed with the master itself.
    ring: KeyRing | None = _own_keys(security) or agent_keys(settings, accept_masters=True)
    if ring is None:
        return None
    return SignatureVerifier(ring, max_age=security.signature_max_age, journal=journal)


def client_signer(settings: Settings) -> MessageSigner | None:
    """What a client signs requests with (``security.client``; ``None``: unsigned)."""
    client = settings.security.client
    if client.principal is None or client.secret is None:
        return None
    return MessageSigner(principal_key(client.secret), principal=client.principal)


def principals(settings: Settings) -> list[Principal]:
    """The configured principals (``security.principals``)."""
    result = []
    for name, entry in sorted(settings.security.principals.items()):
        if entry.secret is not None:
            key = principal_key(entry.secret)
        else:
            assert entry.secret_hash is not None  # checked by PrincipalSettings
            key = bytes.fromhex(entry.secret_hash.get_secret_value())
        result.append(Principal(name, OperationRole(entry.role), key))
    return result


def access_guard(
    settings: Settings, roles: dict[str, OperationRole], destination: str
) -> AccessGuard:
    """The dispatcher's :class:`AccessGuard` (principals, agent keys, ``require_auth``)."""
    security = settings.security
    return AccessGuard(
        roles,
        principals(settings),
        destination=destination,
        max_age=security.signature_max_age,
        require_auth=security.require_auth,
        agent_keys=agent_keys(settings, accept_masters=True),
    )

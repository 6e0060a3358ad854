"""The :mod:`dashi` objects a daemon or a client builds from its :class:`Settings`.

:mod:`dashi` takes plain values; these functions read them from the typed
configuration (``server.amqp``, ``dashi``, ``security``, ``state_dir``).
"""

from __future__ import annotations

from dashi.broker import BrokerConfig
from dashi.security import MessageSigner, SignatureVerifier
from pdcommon.settings import Settings

__all__ = ["broker_config", "message_signer", "signature_verifier"]


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
        max_message_size=amqp.max_message_size,
    )


def message_signer(settings: Settings) -> MessageSigner | None:
    """The signer of ``security.hmac_key``, or ``None`` when no key is configured."""
    key = settings.security.hmac_key
    return None if key is None else MessageSigner(key)


def signature_verifier(settings: Settings) -> SignatureVerifier | None:
    """The verifier of ``security``, or ``None`` when no key is configured."""
    security = settings.security
    if security.hmac_key is None:
        return None
    return SignatureVerifier(security.hmac_key, max_age=security.signature_max_age)

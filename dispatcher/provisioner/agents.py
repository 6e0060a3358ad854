"""The configuration a provisioned node's ``pd-eeagent`` processes run with.

Local nodes get it as a YAML file, cloud nodes inside their user-data. It holds
the broker URI (with its credentials) and the agent's own key (derived from the
master ``security.hmac_key`` and the agent's name, never the master itself), so
it is written with mode 0600, never logged, and :class:`AgentTemplate`'s repr
masks both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from dashi.broker import mask_uri
from dashi.security import derive_key
from pdcommon.settings import (
    DEFAULT_ENDED_LOGS_MAX_AGE,
    DEFAULT_ENDED_LOGS_MAX_BYTES,
    DEFAULT_EXCHANGE,
    DEFAULT_SERVICE_NAME,
    Settings,
)

__all__ = ["AgentTemplate"]


@dataclass(frozen=True)
class AgentTemplate:
    """What every agent of this dispatcher shares: where to find the broker and us.

    Attributes:
        amqp_uri: the broker URI the agents use (may hold credentials).
        exchange: the dashi exchange (``server.amqp.exchange``).
        sysname: ``dashi.sysname``.
        pd_name: the dispatcher's service name (``pd.name`` of the agents).
        ssl: TLS to the broker.
        ssl_ca: ``server.amqp.ssl_ca`` (and ``ssl_cert``, ``ssl_key``), passed on.
        hmac_key: the master the agents' keys derive from
            (``security.hmac_key``; ``None``: agents get no key).
        next_hmac_key: the next master during a rotation (``next_agent_key``).
        signature_max_age: ``security.signature_max_age``.
        leave_running_on_shutdown: ``eeagent.leave_running_on_shutdown`` of the
            dispatcher's settings, given to every agent (an agent told to stop then
            leaves its supervisord and processes; destroying the node stops them).
        ended_logs_max_bytes: ``eeagent.ended_logs_max_bytes`` of the dispatcher's
            settings, given to every agent when it is not the default (``None``:
            the agents' default).
        ended_logs_max_age: ``eeagent.ended_logs_max_age``, likewise.
    """

    amqp_uri: str = field(repr=False)
    exchange: str = DEFAULT_EXCHANGE
    sysname: str | None = None
    pd_name: str = DEFAULT_SERVICE_NAME
    ssl: bool = False
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    hmac_key: SecretStr | None = field(default=None, repr=False)
    next_hmac_key: SecretStr | None = field(default=None, repr=False)
    signature_max_age: float | None = None
    leave_running_on_shutdown: bool = False
    ended_logs_max_bytes: int | None = None
    ended_logs_max_age: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings, amqp_uri: str | None = None) -> AgentTemplate:
        """The template of a dispatcher's agents; ``amqp_uri`` overrides its own URI."""
        amqp = settings.server.amqp
        eea = settings.eeagent
        max_bytes, max_age = eea.ended_logs_max_bytes, eea.ended_logs_max_age
        return cls(
            amqp_uri=amqp_uri or settings.amqp_uri,
            exchange=amqp.exchange,
            sysname=settings.dashi.sysname,
            pd_name=settings.processdispatcher.service_name,
            ssl=amqp.ssl,
            ssl_ca=amqp.ssl_ca,
            ssl_cert=amqp.ssl_cert,
            ssl_key=amqp.ssl_key,
            hmac_key=settings.security.hmac_key,
            next_hmac_key=settings.security.next_hmac_key,
            signature_max_age=settings.security.signature_max_age,
            leave_running_on_shutdown=eea.leave_running_on_shutdown,
            ended_logs_max_bytes=None if max_bytes == DEFAULT_ENDED_LOGS_MAX_BYTES else max_bytes,
            ended_logs_max_age=None if max_age == DEFAULT_ENDED_LOGS_MAX_AGE else max_age,
        )

    def __repr__(self) -> str:
        return (
            f"AgentTemplate(amqp_uri={mask_uri(self.amqp_uri)!r}, exchange={self.exchange!r}, "
            f"sysname={self.sysname!r}, pd_name={self.pd_name!r}, "
            f"hmac_key={'***' if self.hmac_key is not None else None})"
        )

    def config(
        self,
        *,
        agent_name: str,
        state_dir: str,
        supd_directory: str,
        node_id: str,
        slots: int,
        heartbeat: float,
    ) -> dict[str, Any]:
        """The ``pd-eeagent`` configuration of agent ``agent_name`` (the name itself is
        given on its command line; its key is derived from it)."""
        amqp: dict[str, Any] = {"uri": self.amqp_uri, "exchange": self.exchange}
        if self.ssl:
            amqp["ssl"] = True
        # The same files, at the same paths (a cloud image must provide them there).
        for option in ("ssl_ca", "ssl_cert", "ssl_key"):
            if getattr(self, option) is not None:
                amqp[option] = getattr(self, option)
        config: dict[str, Any] = {
            "state_dir": state_dir,
            "server": {"amqp": amqp},
            "dashi": {"sysname": self.sysname},
            "pd": {"name": self.pd_name},
            "eeagent": {
                "node_id": node_id,
                "slots": slots,
                "heartbeat": heartbeat,
                "launch_type": {"name": "supd", "supd_directory": supd_directory},
            },
        }
        if self.leave_running_on_shutdown:
            config["eeagent"]["leave_running_on_shutdown"] = True
        if self.ended_logs_max_bytes is not None:
            config["eeagent"]["ended_logs_max_bytes"] = self.ended_logs_max_bytes
        if self.ended_logs_max_age is not None:
            config["eeagent"]["ended_logs_max_age"] = self.ended_logs_max_age
        if self.hmac_key is not None:
            name = f"{self.sysname}.{agent_name}" if self.sysname else agent_name
            security: dict[str, Any] = {"agent_key": derive_key(self.hmac_key, name).hex()}
            if self.next_hmac_key is not None:
                security["next_agent_key"] = derive_key(self.next_hmac_key, name).hex()
            if self.signature_max_age is not None:
                security["signature_max_age"] = self.signature_max_age
            config["security"] = security
        return config

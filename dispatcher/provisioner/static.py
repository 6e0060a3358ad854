"""The ``static`` driver: nothing is provisioned.

Capabilities: none. Engines on a static site get their nodes the legacy way: some
other system announces them with the ``node_state`` RPC (``600-RUNNING`` to add
one, ``800-TERMINATED`` to remove it), and agents started by hand heartbeat with
that node id. Nothing acts on the engine's need; it is still computed and shown,
marked informational (``provisioned: false``), by ``list_engines``, ``dump``
(``engines``) and ``pd-cli engine list``/``describe`` (:mod:`dispatcher.engine_status`).

Configuration: ``provisioner: {driver: static}``, or a site ``{driver: static}``.
"""

from __future__ import annotations

from dispatcher.provisioner.base import NodeRequest, ProvidedNode
from dispatcher.provisioner.errors import CloudRequestError

__all__ = ["StaticDriver"]


class StaticDriver:
    """A driver that provisions nothing (``provisions`` is False)."""

    kind = "static"
    provisions = False

    def __repr__(self) -> str:
        return "StaticDriver()"

    def create_node(self, request: NodeRequest) -> ProvidedNode:
        """Never called by the provisioner.

        Raises:
            CloudRequestError: always.
        """
        raise CloudRequestError("the static driver does not create nodes")

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        """Never called by the provisioner.

        Raises:
            CloudRequestError: always.
        """
        raise CloudRequestError("the static driver does not destroy nodes")

    def list_nodes(self) -> list[ProvidedNode]:
        """No nodes are provisioned here."""
        return []

    def close(self) -> None:
        """Nothing to release."""

"""Provisioning: engine needs become nodes (cloud VMs, local agent groups).

Drivers (one module each): :mod:`.local`, :mod:`.libcloud`, :mod:`.static`,
:mod:`.fake`. :class:`~.manager.Provisioner` acts on needs through them; sites
(:mod:`.sites`) pair a driver with its boot timeout. Driver modules are imported
on use, so Libcloud is loaded only when a ``libcloud`` site exists.
"""

from dispatcher.provisioner.base import (
    Driver,
    NodeRequest,
    ProvidedNode,
    VMState,
    agent_name,
    new_node_id,
    owner_id,
)
from dispatcher.provisioner.errors import (
    CloudAuthError,
    CloudRequestError,
    FatalProvisionerError,
    NodeNotFoundError,
    ProvisionerError,
    RecoverableProvisionerError,
    ThrottledError,
    TransientCloudError,
)
from dispatcher.provisioner.manager import NodeEvents, Provisioner
from dispatcher.provisioner.sites import Site, build_sites, make_driver

__all__ = [
    "CloudAuthError",
    "CloudRequestError",
    "Driver",
    "FatalProvisionerError",
    "NodeEvents",
    "NodeNotFoundError",
    "NodeRequest",
    "ProvidedNode",
    "Provisioner",
    "ProvisionerError",
    "RecoverableProvisionerError",
    "Site",
    "ThrottledError",
    "TransientCloudError",
    "VMState",
    "agent_name",
    "build_sites",
    "make_driver",
    "new_node_id",
    "owner_id",
]

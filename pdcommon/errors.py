"""The project's error root and the errors that never cross the wire.

Every error the project raises derives from :data:`DispatcherError`, which is
:class:`dashi.errors.DashiError` (the wire errors derive from it too), so one
``except DispatcherError`` at the edge (the CLI) catches everything::

    DispatcherError (= dashi.errors.DashiError)
     ├── ConfigError                 bad configuration file, key or value (fatal at start-up)
     │    └── DatabaseOwnerError     the database belongs to another dispatcher system
     ├── StoreError                  the database failed (recoverable: retried by callers)
     ├── DispatcherRunningError      an offline command found a dispatcher leading
     ├── RequestError, RemoteError,  the wire errors: see :mod:`dashi.errors`
     │   TransportError ...
     ├── EEAgentError ...            the agent's errors: see :mod:`eeagent.errors`
     └── ProvisionerError ...        the provisioner's: see :mod:`dispatcher.provisioner.errors`
"""

from __future__ import annotations

from dashi.errors import DashiError

__all__ = [
    "ConfigError",
    "DatabaseOwnerError",
    "DispatcherError",
    "DispatcherRunningError",
    "StoreError",
]

#: The root of every error the project raises: the wire layer's root.
DispatcherError = DashiError


class ConfigError(DispatcherError):
    """A configuration file, key or value is invalid.

    The message is one line that names the offending key.
    """


class DatabaseOwnerError(ConfigError):
    """The database belongs to another dispatcher system (``dashi.sysname`` and
    ``processdispatcher.service_name``); the message names both."""


class StoreError(DispatcherError):
    """The database failed in a way a retry may fix (connection lost, serialization)."""


class DispatcherRunningError(DispatcherError):
    """An offline command (``pd-dispatcher system-boot begin``) found a dispatcher
    holding the database's leadership lock; stop every dispatcher first."""

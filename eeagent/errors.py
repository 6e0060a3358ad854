"""Errors raised by the eeagent package.

Every error derives from :class:`EEAgentError`, itself a
:class:`~pdcommon.errors.DispatcherError`, so one ``except`` at the edge (the CLI)
catches everything the project raises::

    DispatcherError
     └── EEAgentError                  anything the agent itself reports
          ├── AgentLockedError         another agent already runs in this home directory (fatal)
          ├── PersistenceError         the state file cannot be read or written
          └── ProcessControlError      the process backend (supervisord) refused or failed
               ├── BackendUnavailableError  it cannot be reached (recoverable: the
               │                            agent starts a new one)
               ├── BackendStartError        a new one could not be started
               │    └── StartCancelledError  the agent was stopped while it started
               ├── BackendFaultError        it answered a request with an XML-RPC fault
               └── SpawnError               a program could not be started (missing
                                            program, bad directory, unknown user...)

The supervisord adapter translates ``xmlrpc.client.Fault``, ``OSError`` and
``http.client`` errors into these types at its boundary; the agent core never sees
a library exception. Wire errors (``BadRequestError``, ``NotFoundError``) that RPC
callers see come from :mod:`dashi.errors`.
"""

from __future__ import annotations

from pdcommon.errors import DispatcherError

__all__ = [
    "AgentLockedError",
    "BackendFaultError",
    "BackendStartError",
    "BackendUnavailableError",
    "EEAgentError",
    "PersistenceError",
    "ProcessControlError",
    "SpawnError",
    "StartCancelledError",
]


class EEAgentError(DispatcherError):
    """Base class of every error raised by the eeagent package."""


class AgentLockedError(EEAgentError):
    """Another agent process holds this agent's home directory."""


class PersistenceError(EEAgentError):
    """The agent's state file could not be read, parsed or written."""


class ProcessControlError(EEAgentError):
    """The process backend refused or failed a request."""


class BackendUnavailableError(ProcessControlError):
    """The backend cannot be reached: its socket is gone or it stopped answering.

    Recoverable: the agent reports the processes it lost and starts a new backend.
    """


class BackendStartError(ProcessControlError):
    """A backend could not be started (bad executable, unusable directory, socket in use)."""


class StartCancelledError(BackendStartError):
    """The agent was asked to stop while its new backend was starting (it was killed)."""


class BackendFaultError(ProcessControlError):
    """The backend answered a request with a fault.

    Attributes:
        code: the supervisord fault code (e.g. 10 for ``BAD_NAME``).
        fault: the fault string (e.g. ``"BAD_NAME: foo-1"``).
    """

    def __init__(self, message: str, *, code: int = 0, fault: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.fault = fault


class SpawnError(ProcessControlError):
    """A program could not be started; the message says why, for the process ``msg``."""

"""Errors raised by provisioner drivers, split by what the provisioner does about them.

Every driver translates its library's exceptions at its boundary into this tree
(``raise X from exc``); the provisioner never sees a Libcloud or OS exception::

    ProvisionerError                  (a DispatcherError)
     ├── RecoverableProvisionerError  a retry may succeed: retried with backoff
     │    ├── ThrottledError          the provider asked us to slow down (rate limit,
     │    │                           quota of requests); ``retry_after`` when known
     │    └── TransientCloudError     timeouts, connection errors, 5xx, no capacity now
     ├── FatalProvisionerError        retrying the same request will not help
     │    ├── CloudAuthError          the credentials were refused
     │    └── CloudRequestError       the provider refused the request (bad image,
     │                                size, key pair, quota ...) or failed oddly
     └── NodeNotFoundError            the provider does not know the node (destroying
                                      it is then done)

Messages never contain credentials: drivers build them from the provider's error
code and message only.
"""

from __future__ import annotations

from pdcommon.errors import DispatcherError

__all__ = [
    "CloudAuthError",
    "CloudRequestError",
    "FatalProvisionerError",
    "NodeNotFoundError",
    "ProvisionerError",
    "RecoverableProvisionerError",
    "ThrottledError",
    "TransientCloudError",
]


class ProvisionerError(DispatcherError):
    """Base class of the errors provisioner drivers raise."""


class RecoverableProvisionerError(ProvisionerError):
    """The call failed, but the same call later may succeed.

    Attributes:
        retry_after: seconds the provider asked us to wait, when it said.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ThrottledError(RecoverableProvisionerError):
    """The provider is rate-limiting us; every call to it should wait."""


class TransientCloudError(RecoverableProvisionerError):
    """A timeout, a lost connection, a provider-side failure or a momentary lack of capacity."""


class FatalProvisionerError(ProvisionerError):
    """Retrying the same request will not help; the configuration or account needs a fix."""


class CloudAuthError(FatalProvisionerError):
    """The provider refused the credentials."""


class CloudRequestError(FatalProvisionerError):
    """The provider refused the request, or a driver failed in an unexpected way."""


class NodeNotFoundError(ProvisionerError):
    """The provider does not know the node (already gone)."""

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
     │    ├── CloudQuotaError         an account quota or limit is reached
     │    └── CloudRequestError       the provider refused the request (key pair,
     │         │                      security group ...) or failed oddly
     │         └── CloudImageError    the image or size does not exist or is refused
     └── NodeNotFoundError            the provider does not know the node (destroying
                                      it is then done)

A failed create's VM record says which kind of error it was (``reason``:
``creation failed: <what>``, from the class's :attr:`~ProvisionerError.what`).

Messages never contain credentials: drivers build them from the provider's error
code and message only.
"""

from __future__ import annotations

from pdcommon.errors import DispatcherError

__all__ = [
    "CloudAuthError",
    "CloudImageError",
    "CloudQuotaError",
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

    #: What went wrong, in a few words (a failed VM record's reason names it).
    what = "provider error"


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

    what = "credentials refused"


class CloudQuotaError(FatalProvisionerError):
    """An account quota or limit (instances, cores, addresses) is reached."""

    what = "quota exceeded"


class CloudRequestError(FatalProvisionerError):
    """The provider refused the request, or a driver failed in an unexpected way."""

    what = "request refused"


class CloudImageError(CloudRequestError):
    """The image or the size does not exist, or cannot be used."""

    what = "image or size refused"


class NodeNotFoundError(ProvisionerError):
    """The provider does not know the node (already gone)."""

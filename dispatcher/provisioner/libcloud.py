"""The ``libcloud`` driver: nodes are VMs of any Apache Libcloud compute provider.

Capabilities: create (with user-data and tags), destroy, and list this
dispatcher's nodes by their tags, so a restarted dispatcher adopts its VMs. A VM
boots from user-data (:mod:`~dispatcher.provisioner.userdata`, a shell script)
that installs this project (``install_command``, after ``setup_commands``) once
and runs one agent per name:
``<agent_command> --config /etc/process-dispatcher/<agent>.yml --name <agent>``.

Configuration (a site of ``provisioner.sites``)::

    {driver: libcloud, provider: ec2, key: ..., secret: ..., region: us-east-1,
     image: ami-..., size: t3.small, key_pair: ..., security_groups: [...],
     tags: {...}, driver_options: {host, port, secure, signature_version ...},
     create_options: {...}, argument_names: {user_data: ex_userdata, ...}}

``key`` and ``secret`` are :class:`~pydantic.SecretStr`: they appear in no repr,
log or error message (messages are built from the provider's code and text, with
any credential masked). Provider exceptions are translated here: throttling →
:class:`ThrottledError` (with ``retry_after``), timeouts, connection errors, 5xx
and capacity shortages → :class:`TransientCloudError`, refused credentials →
:class:`CloudAuthError`, a reached quota → :class:`CloudQuotaError`, an unknown
image or size → :class:`CloudImageError`, anything else → :class:`CloudRequestError`.

EC2-compatible endpoints that answer in ``http://ec2.amazonaws.com/doc/<v>``
without the trailing ``/`` (moto, some private clouds) are handled: Libcloud's
EC2 responses are normalised before they are parsed.

Libcloud connections are not thread-safe: each worker thread gets its own
Libcloud driver object (the ``dummy`` provider, which keeps its nodes in memory,
and an injected connection are shared under a lock instead).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import (
    TAG_ENGINE,
    TAG_NODE,
    TAG_OWNER,
    TAG_SITE,
    NodeRequest,
    ProvidedNode,
)
from dispatcher.provisioner.errors import (
    CloudAuthError,
    CloudImageError,
    CloudQuotaError,
    CloudRequestError,
    NodeNotFoundError,
    ProvisionerError,
    ThrottledError,
    TransientCloudError,
)
from dispatcher.provisioner.tagging import TagRules, rules_for
from dispatcher.provisioner.userdata import build_user_data
from pdcommon.errors import ConfigError
from pdcommon.settings import EMBEDDED_URI, LibcloudSiteSettings

__all__ = ["LibcloudDriver", "build_user_data", "translate_error"]

log = logging.getLogger(__name__)

#: ``create_node`` argument names (EC2 and OpenStack spell them so).
DEFAULT_ARGUMENT_NAMES = {
    "user_data": "ex_userdata",
    "tags": "ex_metadata",
    "key_pair": "ex_keyname",
    "security_groups": "ex_security_groups",
}
#: Per-provider changes to :data:`DEFAULT_ARGUMENT_NAMES` (``site.argument_names`` wins).
PROVIDER_ARGUMENT_NAMES = {"gce": {"tags": "ex_labels"}}
#: Provider error codes that mean "slow down" (EC2, OpenStack, GCE spellings).
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RateLimitExceeded",
        "rateLimitExceeded",
        "SlowDown",
    }
)
#: Provider error codes a later retry may get past.
TRANSIENT_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
#: Provider error codes that mean the credentials were refused.
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "UnauthorizedOperation",
        "InvalidAccessKeyId",
    }
)
#: Provider error codes that mean an account quota or limit is reached.
QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "AddressLimitExceeded",
        "QuotaExceeded",
        "QUOTA_EXCEEDED",
        "OverQuota",
        "OverLimit",
    }
)
#: Provider error codes (or their prefixes, before a ``.``) that mean the image or
#: size is unknown or refused.
IMAGE_CODES = frozenset(
    {
        "InvalidAMIID",
        "InvalidInstanceType",
        "Unsupported",
        "ImageNotFound",
        "InvalidImage",
        "FlavorNotFound",
    }
)
_CODE = re.compile(r"^\s*(?P<code>[A-Za-z][\w.]*)\s*:\s*(?P<text>.*)$", re.S)
_EC2_NAMESPACE = re.compile(r'xmlns="(http://ec2\.amazonaws\.com/doc/[^"/]+)"')
_MESSAGE_LIMIT = 300


def translate_error(exc: BaseException, action: str, secrets: tuple[str, ...] = ()) -> Exception:
    """The provisioner error for a Libcloud (or network) exception.

    Args:
        exc: what the Libcloud driver raised.
        action: what was attempted, for the message (``create pd-x-1``).
        secrets: strings to mask in the message (the credentials).

    Returns:
        A :class:`~dispatcher.provisioner.errors.ProvisionerError` subclass
        instance (to be raised ``from exc``).
    """
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import (
        InvalidCredsError,
        LibcloudError,
        MalformedResponseError,
        ProviderError,
        ServiceUnavailableError,
    )

    if isinstance(exc, ProvisionerError):
        return exc
    text = _message(exc, secrets)
    http_code = getattr(exc, "code", None) or getattr(exc, "http_code", None)
    match = _CODE.match(text)
    code = match["code"] if match else ""
    message = f"{action}: {text}" if text else f"{action}: {type(exc).__name__}"
    if isinstance(exc, RateLimitReachedError):
        return ThrottledError(message, retry_after=getattr(exc, "retry_after", None) or None)
    if isinstance(exc, InvalidCredsError) or code in AUTH_CODES:
        return CloudAuthError(message)
    if code in THROTTLE_CODES or http_code == 429:
        return ThrottledError(message, retry_after=_retry_after(exc))
    if code in QUOTA_CODES:
        return CloudQuotaError(message)
    if code.split(".")[0] in IMAGE_CODES:
        return CloudImageError(message)
    if code.endswith(".NotFound") and "Instance" in code:
        return NodeNotFoundError(message)
    if code in TRANSIENT_CODES or isinstance(exc, ServiceUnavailableError | MalformedResponseError):
        return TransientCloudError(message, retry_after=_retry_after(exc))
    if isinstance(exc, BaseHTTPError | ProviderError) and isinstance(http_code, int):
        if http_code in (401, 403):
            return CloudAuthError(message)
        if http_code >= 500 or http_code == 408:
            return TransientCloudError(message, retry_after=_retry_after(exc))
        return CloudRequestError(message)
    if _is_network_error(exc):
        return TransientCloudError(message)
    if isinstance(exc, LibcloudError):
        return CloudRequestError(message)
    return CloudRequestError(f"{action}: unexpected {type(exc).__name__}: {text}")


def _message(exc: BaseException, secrets: tuple[str, ...]) -> str:
    text = str(getattr(exc, "message", None) or getattr(exc, "value", None) or exc)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text[:_MESSAGE_LIMIT]


def _retry_after(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    value = getattr(exc, "retry_after", None) or headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds and seconds > 0 else None


def _is_network_error(exc: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - libcloud depends on requests
        return isinstance(exc, OSError)
    return isinstance(exc, OSError | socket.timeout | requests.exceptions.RequestException)


class LibcloudDriver:
    """Creates, lists and destroys VMs through one Libcloud provider; see the module docstring.

    Args:
        site: the site's settings.
        template: what every agent shares (its broker URI is replaced by
            ``site.agent_amqp_uri`` when set).
        owner: the value of the owner tag (:func:`~.base.owner_id`).
        site_name: the site's name (its tag).
        connection: a Libcloud ``NodeDriver`` to use instead of building one from
            ``site`` (tests); it is shared by all threads under a lock.

    Raises:
        ConfigError: the provider is unknown, or the agents would get the
            embedded broker (which VMs cannot reach).
    """

    kind = "libcloud"
    provisions = True

    def __init__(
        self,
        site: LibcloudSiteSettings,
        *,
        template: AgentTemplate,
        owner: str,
        site_name: str = "default",
        connection: Any = None,
    ) -> None:
        self.site = site
        self.owner = owner
        self.site_name = site_name
        if site.agent_amqp_uri is not None:
            template = replace(template, amqp_uri=site.agent_amqp_uri.get_secret_value())
        self.template = template
        if template.amqp_uri.startswith(EMBEDDED_URI) and site.provider != "dummy":
            raise ConfigError(
                f"provisioner.sites.{site_name}: VMs cannot reach the embedded broker; "
                "configure server.amqp.uri or agent_amqp_uri"
            )
        self._secrets = tuple(
            value.get_secret_value() for value in (site.key, site.secret) if value is not None
        )
        self._factory = _driver_factory(site) if connection is None else (lambda: connection)
        self._shared = connection is not None or site.provider == "dummy"
        self._shared_driver: Any = None
        self._shared_lock = threading.Lock()
        self._local = threading.local()
        self._names = {
            **DEFAULT_ARGUMENT_NAMES,
            **PROVIDER_ARGUMENT_NAMES.get(site.provider.lower(), {}),
            **site.argument_names,
        }
        #: How this provider takes tags and node names (:mod:`.tagging`).
        self.tag_rules: TagRules = rules_for(site.provider)
        for key in site.tags:
            problem = self.tag_rules.check_key(key)
            if problem is not None:
                raise ConfigError(
                    f"provisioner.sites.{site_name}.tags: key {key!r} cannot be a "
                    f"{self.tag_rules.name} tag: {problem}"
                )
        self._attempted: set[str] = set()
        #: provider id → tags of the nodes this instance created (for providers,
        #: like ``dummy``, that keep no tags).
        self._created: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LibcloudDriver(site={self.site_name!r}, provider={self.site.provider!r})"

    # -- Driver -------------------------------------------------------------------------

    def create_node(self, request: NodeRequest) -> ProvidedNode:
        """Create a VM named after the node, with user-data and tags.

        A retry of a node id this instance already tried first looks for a VM
        carrying its tag (an earlier attempt may have created it before failing).
        """
        action = f"create {request.node_id}"
        with self._lock:
            retry = request.node_id in self._attempted
            self._attempted.add(request.node_id)
        if retry:
            for node in self.list_nodes():
                if node.node_id == request.node_id:
                    log.info("node %s: found the VM an earlier attempt created", request.node_id)
                    return node
        tags = {
            **self.site.tags,
            TAG_OWNER: self.owner,
            TAG_ENGINE: request.engine_id,
            TAG_NODE: request.node_id,
            TAG_SITE: self.site_name,
        }
        with self._driver(action) as driver:
            from libcloud.compute.base import NodeImage, NodeSize

            arguments: dict[str, Any] = {
                "name": self.tag_rules.node_name(request.node_id),
                "image": NodeImage(id=self.site.image, name=None, driver=driver),
                "size": NodeSize(
                    id=self.site.size,
                    name=self.site.size,
                    ram=0,
                    disk=0,
                    bandwidth=0,
                    price=0,
                    driver=driver,
                ),
                self._names["user_data"]: build_user_data(self.site, self.template, request),
                self._names["tags"]: self.tag_rules.encode(tags),
            }
            if self.site.key_pair:
                arguments[self._names["key_pair"]] = self.site.key_pair
            if self.site.security_groups:
                arguments[self._names["security_groups"]] = list(self.site.security_groups)
            if self.site.location:
                arguments["location"] = self._location(driver)
            arguments.update(self.site.create_options)
            node = driver.create_node(**_accepted(driver.create_node, arguments))
        with self._lock:
            self._created[str(node.id)] = tags
        log.info("node %s: created %s on %s", request.node_id, node.id, self.site_name)
        return self._provided(node, tags)

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        """Destroy the VM (found by provider id, else by its node tag).

        Raises:
            NodeNotFoundError: no live VM of this dispatcher has that id or tag.
        """
        action = f"destroy {node_id}"
        with self._driver(action) as driver:
            target = None
            for node, tags in self._owned(driver):
                if (provider_id and str(node.id) == provider_id) or tags.get(TAG_NODE) == node_id:
                    target = node
                    break
            if target is None:
                raise NodeNotFoundError(f"{action}: no such VM")
            if not driver.destroy_node(target):
                raise TransientCloudError(f"{action}: the provider did not destroy {target.id}")
        with self._lock:
            self._created.pop(str(target.id), None)
        log.info("node %s: destroyed %s", node_id, target.id)

    def list_nodes(self) -> list[ProvidedNode]:
        """This dispatcher's live VMs on the site (by owner and site tags)."""
        with self._driver("list nodes") as driver:
            return [self._provided(node, tags) for node, tags in self._owned(driver)]

    def close(self) -> None:
        """Drop the connections; the VMs keep running."""
        self._local = threading.local()
        self._shared_driver = None

    # -- helpers ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _driver(self, action: str) -> Iterator[Any]:
        """A Libcloud driver for this thread; Libcloud exceptions are translated."""
        try:
            if self._shared:
                with self._shared_lock:
                    if self._shared_driver is None:
                        self._shared_driver = self._factory()
                    yield self._shared_driver
            else:
                driver = getattr(self._local, "driver", None)
                if driver is None:
                    driver = self._local.driver = self._factory()
                yield driver
        except ProvisionerError:
            raise
        except Exception as exc:
            error = translate_error(exc, action, self._secrets)
            log.debug("%s failed: %s", action, error)
            raise error from exc

    def _owned(self, driver: Any) -> list[tuple[Any, dict[str, str]]]:
        from libcloud.compute.types import NodeState

        rules = self.tag_rules
        owner_key = rules.encode_text(TAG_OWNER, rules.key_limit)
        owner = rules.encode_text(self.owner, rules.value_limit)
        try:
            nodes = driver.list_nodes(ex_filters={f"tag:{owner_key}": owner})
        except TypeError:  # providers without server-side filters
            nodes = driver.list_nodes()
        with self._lock:
            created = dict(self._created)
        # compared as the provider keeps them (a shortened owner does not decode)
        site_key = rules.encode_text(TAG_SITE, rules.key_limit)
        site = rules.encode_text(self.site_name, rules.value_limit)
        untagged_site = rules.encode_text("default", rules.value_limit)
        owned = []
        for node in nodes:
            if node.state == NodeState.TERMINATED:
                continue
            stored = _tags(node, owner_key)
            if stored:
                if stored.get(owner_key) != owner or stored.get(site_key, untagged_site) != site:
                    continue
                tags = rules.decode(stored)
            else:
                tags = created.get(str(node.id), {})
                if tags.get(TAG_OWNER) != self.owner:
                    continue
                if tags.get(TAG_SITE, "default") != self.site_name:
                    continue
            owned.append((node, tags))
        return owned

    def _location(self, driver: Any) -> Any:
        for location in driver.list_locations():
            if self.site.location in (str(location.id), location.name):
                return location
        raise CloudRequestError(f"location {self.site.location!r} not offered by the provider")

    def _provided(self, node: Any, tags: dict[str, str]) -> ProvidedNode:
        created = getattr(node, "created_at", None)
        properties: dict[str, Any] = {
            "hostname": (node.private_ips or node.public_ips or [node.name])[0],
            "public_ips": list(node.public_ips or []),
            "private_ips": list(node.private_ips or []),
            "instance_id": str(node.id),
        }
        return ProvidedNode(
            node_id=tags.get(TAG_NODE) or str(node.name),
            provider_id=str(node.id),
            engine_id=tags.get(TAG_ENGINE),
            site=tags.get(TAG_SITE, self.site_name),
            properties=properties,
            created_at=created.timestamp() if isinstance(created, datetime) else None,
        )


def _tags(node: Any, owner_key: str = TAG_OWNER) -> dict[str, str]:
    """The node's tags: the first of its ``tags``, ``metadata``, ``labels`` holding
    the owner tag, else the first that is not empty."""
    extra = getattr(node, "extra", None) or {}
    found = [extra.get(key) for key in ("tags", "metadata", "labels")]
    dicts = [value for value in found if isinstance(value, dict) and value]
    for value in sorted(dicts, key=lambda tags: owner_key not in tags):
        return {str(k): str(v) for k, v in value.items()}
    return {}


def _accepted(method: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments ``method`` takes (all of them when it has ``**kwargs``)."""
    parameters = inspect.signature(method).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return arguments
    dropped = sorted(set(arguments) - set(parameters))
    if dropped:
        log.debug("the provider's create_node takes no %s", ", ".join(dropped))
    return {name: value for name, value in arguments.items() if name in parameters}


def _driver_factory(site: LibcloudSiteSettings) -> Callable[[], Any]:
    """A function building the site's Libcloud driver (EC2 responses normalised)."""
    from libcloud.compute.providers import get_driver

    try:
        cls = get_driver(site.provider)
    except (AttributeError, ValueError) as exc:
        raise ConfigError(f"unknown Libcloud provider {site.provider!r}") from exc
    if site.provider.lower() == "ec2":
        cls = _ec2_class(cls)
    args = [value.get_secret_value() for value in (site.key, site.secret) if value is not None]
    kwargs = dict(site.driver_options)
    if site.region:
        kwargs.setdefault("region", site.region)

    def build() -> Any:
        return cls(*args, **kwargs)

    return build


def _ec2_class(base: Any) -> Any:
    """The EC2 driver class with responses tolerant of a namespace without ``/``."""
    from libcloud.compute.drivers.ec2 import EC2Response

    class _Response(EC2Response):  # type: ignore[misc]
        def parse_body(self) -> Any:
            self.body = _EC2_NAMESPACE.sub(r'xmlns="\1/"', str(self.body))  # type: ignore[has-type]
            return super().parse_body()

        def parse_error(self) -> Any:
            # Errors are matched without a namespace (AWS sends none).
            self.body = _EC2_NAMESPACE.sub("", str(self.body))
            return super().parse_error()

    connection = type("EC2Connection", (base.connectionCls,), {"responseCls": _Response})
    return type(base.__name__, (base,), {"connectionCls": connection})

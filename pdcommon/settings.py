"""Typed configuration shared by ``pd-dispatcher``, ``pd-eeagent`` and ``pd-cli``.

Settings are built once at the edge (the CLI) from YAML files and a mapping of
environment variables, then passed down. Nothing else in the project reads files
or ``os.environ`` for configuration.

The keys are the fixed ones of the architecture page, with the legacy keys of the
EPU Process Dispatcher and eeagent accepted verbatim::

    server:
      amqp: {uri: "amqp://guest:guest@localhost//", exchange: default_dashi_exchange}
      # or the legacy form: {host, port, username, password, vhost}
    dashi: {sysname: null}
    processdispatcher: {service_name, database_url, engines, default_engine, ...}
    provisioner: {driver: local | static | libcloud, ...}
    eeagent: {name, node_id, slots, heartbeat, launch_type: {name, supd_directory}}
    pd: {name: process_dispatcher}
    security: {hmac_key: null, signature_max_age: 300, principals: {}, require_auth: false,
               client: {principal: null, secret: null}}

Environment variables ``PD_AMQP_URI`` and ``PD_DATABASE_URL`` override the files,
and ``PD_PRINCIPAL``/``PD_SECRET`` the client credentials (``security.client``).
"""

from __future__ import annotations

import copy
import difflib
import urllib.parse
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from dashi.masking import mask_uri as _mask_uri
from dashi.protocol import DEFAULT_MAX_MESSAGE_SIZE
from pdcommon.errors import ConfigError
from pdcommon.limits import RequestLimits

__all__ = [
    "DEFAULT_ENDED_LOGS_MAX_AGE",
    "DEFAULT_ENDED_LOGS_MAX_BYTES",
    "DEFAULT_EXCHANGE",
    "DEFAULT_SERVICE_NAME",
    "AmqpSettings",
    "ClientCredentials",
    "DashiSettings",
    "EEAgentSettings",
    "EngineSettings",
    "LibcloudSiteSettings",
    "LocalSiteSettings",
    "PrincipalSettings",
    "ProcessDispatcherSettings",
    "ProvisionerSettings",
    "RestartPolicySettings",
    "SecuritySettings",
    "Settings",
    "SiteSettings",
    "StaticSiteSettings",
    "check_unknown_keys",
    "default_state_dir",
    "load_settings",
    "unknown_keys",
]

#: The dashi exchange name used by every legacy component unless configured.
DEFAULT_EXCHANGE = "default_dashi_exchange"
#: The dispatcher's service (queue) name, as in the legacy system.
DEFAULT_SERVICE_NAME = "process_dispatcher"
#: The embedded, broker-less transport; its messages live under ``<state_dir>/broker``.
EMBEDDED_URI = "embedded://"
#: AMQP heartbeat in seconds (dashi's value).
DEFAULT_AMQP_HEARTBEAT = 30
#: Engine heartbeat defaults: monitoring is on by default
#: (docs/architecture.md, decision 3).
DEFAULT_HEARTBEAT_PERIOD = 30.0
DEFAULT_HEARTBEAT_WARNING = 45.0
DEFAULT_HEARTBEAT_MISSING = 60.0
#: Legacy defaults file: 30 s between launch retries, 2 s between restarts.
DEFAULT_DISPATCH_RETRY_SECONDS = 30.0
DEFAULT_MINIMUM_TIME_BETWEEN_STARTS = 2.0
#: The engine used when nothing is configured (the embedded default).
DEFAULT_ENGINE_ID = "default"
DEFAULT_ENGINE_SLOTS = 4
#: The provisioner site of engines that name none.
DEFAULT_SITE = "default"
#: Seconds a new node may take to send its first heartbeat before it is replaced:
#: local agents start in about a second; a VM boots, installs the project, starts.
DEFAULT_LOCAL_BOOT_TIMEOUT = 60.0
DEFAULT_CLOUD_BOOT_TIMEOUT = 900.0
#: Provisioner loop: a pass at least this often (seconds), sooner when woken.
DEFAULT_PROVISIONER_INTERVAL = 5.0
#: Seconds between two listings of the provider's nodes (vanished and orphan nodes).
DEFAULT_PROVISIONER_SYNC_INTERVAL = 60.0
#: Retry backoff of failed cloud calls: first delay, doubled up to the maximum.
DEFAULT_RETRY_INITIAL = 1.0
DEFAULT_RETRY_MAX = 300.0
#: Seconds terminated and failed node records stay visible in ``dump``.
DEFAULT_PROVISIONER_HISTORY = 3600.0
#: Create and destroy calls in flight at once.
DEFAULT_PROVISIONER_PARALLEL = 8
#: Seconds a local agent gets to stop cleanly (SIGTERM) before it is killed.
DEFAULT_LOCAL_STOP_TIMEOUT = 30.0
#: Seconds a node must have been unneeded before a scale-down retires it (the
#: need registered is the highest of that window): a burst of short processes
#: must not start and stop nodes every few seconds. A local agent costs about a
#: second of CPU to start, a VM minutes and money (cluster-autoscaler waits 10 min).
DEFAULT_LOCAL_SCALE_DOWN_GRACE = 30.0
DEFAULT_CLOUD_SCALE_DOWN_GRACE = 600.0
#: Slots of each agent of the default engine when it runs on the ``local`` driver
#: (the embedded default): an agent and its supervisord take ~65 MB whatever
#: their slot count, so a few wide agents serve hundreds of local processes.
DEFAULT_LOCAL_ENGINE_SLOTS = 64
#: Events kept per process (``processdispatcher.process_events_kept``).
DEFAULT_PROCESS_EVENTS_KEPT = 100
#: Events kept in the whole store (``processdispatcher.events_kept_total``): about
#: 300 bytes each without kept output, so ~60 MB at most.
DEFAULT_EVENTS_KEPT_TOTAL = 200_000
#: Restart policy defaults: a crash loop backs off 1 s, 2 s, 4 s ... up to 60 s and
#: ends ``850-FAILED`` at the 10th failure within 10 minutes (about 4 minutes).
DEFAULT_RESTART_INITIAL_DELAY = 1.0
DEFAULT_RESTART_MAX_DELAY = 60.0
DEFAULT_RESTART_FAILURE_LIMIT = 10
DEFAULT_RESTART_INTERVAL = 600.0
DEFAULT_RESTART_JITTER = 0.2
#: Budget of an agent's ended rounds' log files (``eeagent.ended_logs_max_bytes``,
#: ``eeagent.ended_logs_max_age``), kept until the dispatcher's cleanup: 256 MiB is
#: about six rounds that filled their rotated logs (40 MB each) and thousands of
#: ordinary ones; a day is long enough to read the logs of last night's failures.
DEFAULT_ENDED_LOGS_MAX_BYTES = 256 * 1024 * 1024
DEFAULT_ENDED_LOGS_MAX_AGE = 86400.0
#: Seconds a signed agent command stays valid after (and before) its timestamp:
#: room for clock skew between hosts and for a command waiting in the agent's
#: queue while the agent restarts (an unused queue expires after 60 s).
DEFAULT_SIGNATURE_MAX_AGE = 300.0
#: Shortest accepted HMAC key (characters): a short shared secret can be guessed
#: offline from one captured signed message.
MIN_HMAC_KEY_LENGTH = 16

#: Keys of the legacy EPU configuration files that are accepted and have no use here
#: (EPUM and ZooKeeper settings; the legacy doctor's top-level
#: ``monitor_resource_heartbeats``, read here under ``processdispatcher``; the
#: legacy bootstrap's ``loggers``, ``logging_config_files``, ``system`` and the
#: ``server.memory`` test transport): reported at INFO, not refused as misspelt keys.
LEGACY_IGNORED_KEYS = frozenset(
    {
        "server.zookeeper",
        "server.memory",
        "processdispatcher.static_resources",
        "processdispatcher.definition_id",
        "processdispatcher.domain_config",
        "processdispatcher.epum_service_name",
        "monitor_resource_heartbeats",
        "loggers",
        "logging_config_files",
        "system",
    }
)
#: The sections whose keys ``pd-dispatcher`` checks (``NAME.*``: each entry of the
#: mapping ``NAME``); an unknown key there is refused at start (:func:`check_unknown_keys`).
DISPATCHER_SECTIONS = (
    "",
    "server",
    "server.amqp",
    "dashi",
    "processdispatcher",
    "processdispatcher.engines.*",
    "provisioner",
    "pd",
)
#: The sections whose keys ``pd-eeagent`` checks.
AGENT_SECTIONS = ("", "server", "server.amqp", "dashi", "eeagent", "eeagent.launch_type", "pd")

_Model = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
_Strict = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class AmqpSettings(BaseModel):
    """``server.amqp``: how to reach the broker."""

    model_config = _Model

    uri: str | None = None
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = None
    vhost: str | None = None
    exchange: str = DEFAULT_EXCHANGE
    heartbeat: int = Field(DEFAULT_AMQP_HEARTBEAT, ge=0)
    ssl: bool = False
    #: TLS to the broker (``amqps://`` URLs): the CA file the broker's certificate
    #: must chain to, and this program's client certificate and key (mutual TLS).
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    #: Largest reply body (bytes) a service publishes; set it to the broker's
    #: ``max_message_size`` when that is lowered.
    max_message_size: int = Field(DEFAULT_MAX_MESSAGE_SIZE, gt=0)

    def __repr_args__(self) -> Any:
        # The URL and the legacy password hold the broker's credentials: masked.
        for name, value in super().__repr_args__():
            if name == "uri" and isinstance(value, str):
                value = _mask_uri(value)
            elif name == "password" and value is not None:
                value = "***"
            yield name, value

    def resolved_uri(self) -> str:
        """The kombu URL: ``uri`` if set, else one built from the legacy keys, else embedded."""
        if self.uri:
            return self.uri
        if self.host:
            user = urllib.parse.quote(self.username or "guest", safe="")
            password = urllib.parse.quote(self.password or "guest", safe="")
            port = f":{self.port}" if self.port else ""
            vhost = urllib.parse.quote(self.vhost or "/", safe="")
            return f"amqp://{user}:{password}@{self.host}{port}/{vhost}"
        return EMBEDDED_URI


class ServerSettings(BaseModel):
    model_config = _Model
    amqp: AmqpSettings = AmqpSettings()


class DashiSettings(BaseModel):
    """``dashi``: wire-protocol options."""

    model_config = _Model

    sysname: str | None = None
    serializer: Literal["json"] = "json"
    #: Send server tracebacks to remote callers (off by default: security).
    send_tracebacks: bool = False

    @field_validator("sysname")
    @classmethod
    def _no_dots(cls, value: str | None) -> str | None:
        if value is not None and not value:
            return None
        return value


class RestartPolicySettings(BaseModel):
    """A restart policy (docs/configuration.md "Restart policy"): backoff and a limit.

    On top of the restart mode (which ends are restarted) and throttling: the n-th
    restart within ``interval`` waits ``initial_delay * 2**(n-1)`` seconds (at most
    ``max_delay``, give or take ``jitter`` of it), and the ``failure_limit``-th
    restartable end within ``interval`` seconds ends the process ``850-FAILED``
    instead ("restart limit reached"). ``failure_limit: 0`` restarts for ever and
    ``initial_delay: 0`` restarts at once: both together are the legacy behaviour.
    """

    model_config = _Strict

    initial_delay: float = Field(DEFAULT_RESTART_INITIAL_DELAY, ge=0, le=86400)
    max_delay: float = Field(DEFAULT_RESTART_MAX_DELAY, ge=0, le=86400)
    failure_limit: int = Field(DEFAULT_RESTART_FAILURE_LIMIT, ge=0, le=10000)
    interval: float = Field(DEFAULT_RESTART_INTERVAL, gt=0, le=30 * 86400)
    jitter: float = Field(DEFAULT_RESTART_JITTER, ge=0, le=1)


class EngineSettings(BaseModel):
    """One entry of ``processdispatcher.engines`` (legacy keys)."""

    model_config = _Model

    slots: int = Field(ge=1)
    base_need: int = Field(0, ge=0)
    config: dict[str, Any] | None = None
    replicas: int = Field(1, ge=1)
    spare_slots: int = Field(0, ge=0)
    iaas_allocation: str | None = None
    maximum_vms: int | None = Field(None, ge=0)
    heartbeat_period: float = Field(DEFAULT_HEARTBEAT_PERIOD, gt=0)
    heartbeat_warning: float | None = DEFAULT_HEARTBEAT_WARNING
    heartbeat_missing: float | None = DEFAULT_HEARTBEAT_MISSING
    deployable_type: str | None = None
    #: Name of the provisioner site (under ``provisioner.sites``) this engine uses.
    site: str | None = None
    #: The restart policy of this engine's processes (default: the dispatcher's).
    restart_policy: RestartPolicySettings | None = None

    @model_validator(mode="after")
    def _heartbeats(self) -> EngineSettings:
        warning, missing = self.heartbeat_warning, self.heartbeat_missing
        if (warning is None) != (missing is None):
            raise ValueError("heartbeat_warning and heartbeat_missing must be given together")
        if warning is not None and missing is not None:
            if warning <= self.heartbeat_period:
                raise ValueError("heartbeat_warning must be greater than heartbeat_period")
            if missing <= warning:
                raise ValueError("heartbeat_missing must be greater than heartbeat_warning")
        return self


def _default_engines() -> dict[str, EngineSettings]:
    return {DEFAULT_ENGINE_ID: EngineSettings(slots=DEFAULT_ENGINE_SLOTS)}


class ProcessDispatcherSettings(BaseModel):
    """``processdispatcher``: the daemon's own keys (legacy names kept)."""

    model_config = _Model

    service_name: str = DEFAULT_SERVICE_NAME
    #: SQLAlchemy URL; ``None`` means SQLite in ``<state_dir>/dispatcher.db``.
    database_url: str | None = None
    engines: dict[str, EngineSettings] = Field(default_factory=_default_engines)
    default_engine: str | None = None
    process_engines: dict[str, str] = Field(default_factory=dict)
    restart_throttling_config: dict[str, Any] = Field(
        default_factory=lambda: {"minimum_time_between_starts": DEFAULT_MINIMUM_TIME_BETWEEN_STARTS}
    )
    dispatch_retry_seconds: float | None = Field(DEFAULT_DISPATCH_RETRY_SECONDS, ge=0)
    launch_type: str = "supd"
    #: Number of threads that serve RPCs concurrently.
    rpc_workers: int = Field(8, ge=1, le=256)
    monitor_resource_heartbeats: bool = True
    #: Depth and size limits of request arguments (see :mod:`pdcommon.limits`).
    limits: RequestLimits = RequestLimits()
    #: The restart policy of processes whose engine sets none.
    restart_policy: RestartPolicySettings = RestartPolicySettings()
    #: Events kept per process (the oldest go first).
    process_events_kept: int = Field(DEFAULT_PROCESS_EVENTS_KEPT, ge=1, le=100_000)
    #: Events kept in the whole store (the oldest go first).
    events_kept_total: int = Field(DEFAULT_EVENTS_KEPT_TOTAL, ge=1)
    #: Seconds any round may run before it is terminated (None: no limit).
    max_process_age: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _engine_references(self) -> ProcessDispatcherSettings:
        if self.default_engine is not None and self.default_engine not in self.engines:
            raise ValueError(f"default_engine {self.default_engine!r} is not among the engines")
        if self.default_engine is None and len(self.engines) > 1:
            raise ValueError("default_engine is required when more than one engine is configured")
        for path, engine_id in self.process_engines.items():
            if not path:
                raise ValueError("process_engines has an empty module path")
            if engine_id not in self.engines:
                raise ValueError(f"process_engines maps {path!r} to unknown engine {engine_id!r}")
        return self

    @property
    def effective_default_engine(self) -> str | None:
        """The default engine; with exactly one engine configured it is that one."""
        if self.default_engine is not None:
            return self.default_engine
        if len(self.engines) == 1:
            return next(iter(self.engines))
        return None


class StaticSiteSettings(BaseModel):
    """A ``static`` site: nothing is provisioned; nodes come with ``node_state``."""

    model_config = _Strict

    driver: Literal["static"] = "static"


class LocalSiteSettings(BaseModel):
    """A ``local`` site: each node is ``replicas`` local ``pd-eeagent`` processes."""

    model_config = _Strict

    driver: Literal["local"] = "local"
    boot_timeout: float = Field(DEFAULT_LOCAL_BOOT_TIMEOUT, gt=0)
    #: Where node directories go; default ``<state_dir>/nodes``.
    directory: Path | None = None
    #: The agent command (argv, no shell); default ``<this python> -m cli.eeagent``.
    agent_command: list[str] | None = None
    #: Agent heartbeat seconds; default the engine's ``heartbeat_period``.
    heartbeat: float | None = Field(None, gt=0)
    stop_timeout: float = Field(DEFAULT_LOCAL_STOP_TIMEOUT, gt=0)
    log_level: str = "info"
    #: Seconds a node stays after it became unneeded (0: retired at once).
    scale_down_grace: float = Field(DEFAULT_LOCAL_SCALE_DOWN_GRACE, ge=0)


class LibcloudSiteSettings(BaseModel):
    """A ``libcloud`` site: nodes are VMs of any Apache Libcloud compute provider.

    Credentials are :class:`~pydantic.SecretStr`: they never show in a repr.
    """

    model_config = _Strict

    driver: Literal["libcloud"] = "libcloud"
    #: A Libcloud ``Provider`` name: ``ec2``, ``openstack``, ``gce``, ``dummy`` ...
    provider: str
    key: SecretStr | None = None
    secret: SecretStr | None = None
    region: str | None = None
    #: Further driver constructor arguments (``host``, ``port``, ``secure`` ...).
    driver_options: dict[str, Any] = Field(default_factory=dict)
    image: str
    size: str
    location: str | None = None
    key_pair: str | None = None
    security_groups: list[str] = Field(default_factory=list)
    #: Extra tags on every node (the provisioner's own ``pd-*`` tags win).
    tags: dict[str, str] = Field(default_factory=dict)
    #: Further ``create_node`` arguments (``ex_*`` extensions of the provider).
    create_options: dict[str, Any] = Field(default_factory=dict)
    #: Renames of the ``create_node`` arguments for ``user_data``, ``tags``,
    #: ``key_pair`` and ``security_groups`` (EC2/OpenStack names by default).
    argument_names: dict[str, str] = Field(default_factory=dict)
    boot_timeout: float = Field(DEFAULT_CLOUD_BOOT_TIMEOUT, gt=0)
    #: Seconds a VM stays after it became unneeded (0: retired at once).
    scale_down_grace: float = Field(DEFAULT_CLOUD_SCALE_DOWN_GRACE, ge=0)
    #: The broker URI agents on the VMs use; default ``server.amqp.uri``.
    agent_amqp_uri: SecretStr | None = None
    #: Shell commands cloud-init runs first (e.g. install python3-pip).
    setup_commands: list[str] = Field(default_factory=list)
    #: The shell command that installs this project on the VM.
    install_command: str = "python3 -m pip install process-dispatcher"
    #: The agent executable on the VM.
    agent_command: str = "pd-eeagent"
    #: The agents' ``state_dir`` on the VM.
    agent_state_dir: str = "/var/lib/process-dispatcher"
    #: Agent heartbeat seconds; default the engine's ``heartbeat_period``.
    agent_heartbeat: float | None = Field(None, gt=0)


SiteSettings = Annotated[
    StaticSiteSettings | LocalSiteSettings | LibcloudSiteSettings, Field(discriminator="driver")
]
_SITE: TypeAdapter[SiteSettings] = TypeAdapter(SiteSettings)


class ProvisionerSettings(BaseModel):
    """``provisioner``: how engine needs become nodes.

    ``driver`` is the driver of engines that name no ``site`` (their site is
    ``sites.default`` when it exists); ``sites`` are named driver options, each
    validated as :class:`LocalSiteSettings`, :class:`LibcloudSiteSettings` or
    :class:`StaticSiteSettings` by its ``driver`` key (default: ``driver``).
    """

    model_config = _Model

    driver: Literal["static", "local", "libcloud"] = "local"
    #: Named sites; an engine may pick one with its ``site`` key.
    sites: dict[str, dict[str, Any]] = Field(default_factory=dict)
    interval: float = Field(DEFAULT_PROVISIONER_INTERVAL, gt=0)
    sync_interval: float = Field(DEFAULT_PROVISIONER_SYNC_INTERVAL, gt=0)
    retry_initial: float = Field(DEFAULT_RETRY_INITIAL, gt=0)
    retry_max: float = Field(DEFAULT_RETRY_MAX, gt=0)
    history: float = Field(DEFAULT_PROVISIONER_HISTORY, ge=0)
    max_parallel: int = Field(DEFAULT_PROVISIONER_PARALLEL, ge=1, le=256)

    @model_validator(mode="after")
    def _typed_sites(self) -> ProvisionerSettings:
        for name in self.sites:
            self.site(name)
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must not be less than retry_initial")
        return self

    def scale_down_grace(self, name: str | None) -> float:
        """Seconds a node of site ``name`` (``None``: the default site) stays unneeded
        before a scale-down retires it; 0 for ``static`` sites and unknown ones."""
        try:
            site = self.site(name)
        except (KeyError, ValueError):
            return 0.0
        return float(getattr(site, "scale_down_grace", 0.0))

    def site(self, name: str | None) -> SiteSettings:
        """The typed settings of site ``name`` (``None``: the default site).

        Raises:
            KeyError: ``name`` is not a configured site (``None`` never raises).
            ValueError: the site's options are invalid (the message names the key).
        """
        if name is None or (name == DEFAULT_SITE and name not in self.sites):
            raw = self.sites.get(DEFAULT_SITE, {"driver": self.driver})
            name = DEFAULT_SITE
        else:
            raw = self.sites[name]
        data = {"driver": self.driver, **raw}
        if data["driver"] == "libcloud" and "provider" not in data and name == DEFAULT_SITE:
            raise ValueError(
                "provisioner.driver is libcloud: configure provisioner.sites.default "
                "(provider, image, size ...) or give each engine a site"
            )
        try:
            return _SITE.validate_python(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"][1:]) or "driver"
            raise ValueError(f"sites.{name}.{where}: {first['msg']}") from None


class LaunchTypeSettings(BaseModel):
    model_config = _Model

    name: Literal["supd"] = "supd"
    supd_directory: Path | None = None
    supdexe: Path | None = None


def _not_a_boolean(value: Any) -> Any:
    # YAML true/false would otherwise pass as the number 1/0.
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


class EEAgentSettings(BaseModel):
    """``eeagent``: the agent's legacy keys."""

    model_config = _Model

    name: str = "eeagent"
    node_id: str | None = None
    slots: int = Field(DEFAULT_ENGINE_SLOTS, ge=1)
    heartbeat: float = Field(DEFAULT_HEARTBEAT_PERIOD, gt=0)
    launch_type: LaunchTypeSettings = LaunchTypeSettings()
    #: Leave supervisord and its children running on a clean shutdown.
    leave_running_on_shutdown: bool = False
    #: The account processes that name no ``user`` run as (the agent must be root
    #: to run them as another account); ``None``: the agent's own.
    default_user: str | None = None
    #: Bytes the log files of ended rounds (not cleaned up yet) may take together;
    #: beyond it, the oldest ended rounds lose their log files (eeagent/logbudget.py).
    ended_logs_max_bytes: Annotated[int, BeforeValidator(_not_a_boolean), Field(gt=0)] = (
        DEFAULT_ENDED_LOGS_MAX_BYTES
    )
    #: Seconds an ended round keeps its log files at most.
    ended_logs_max_age: Annotated[
        float, BeforeValidator(_not_a_boolean), Field(gt=0, allow_inf_nan=False)
    ] = DEFAULT_ENDED_LOGS_MAX_AGE

    @field_validator("name")
    @classmethod
    def _name_has_no_dot(cls, value: str) -> str:
        # The dispatcher keeps only the text after the last "." of the sender.
        if not value or "." in value:
            raise ValueError("must be a non-empty name without '.'")
        return value


class PdSettings(BaseModel):
    model_config = _Model
    name: str = DEFAULT_SERVICE_NAME


class PrincipalSettings(BaseModel):
    """One entry of ``security.principals``: a role and a secret (or its hash).

    ``secret_hash`` is the hex of :func:`pdcommon.auth.principal_key` of the secret
    (``pd-dispatcher principal-hash`` prints it), so the dispatcher's file need not
    hold the secret itself.
    """

    model_config = _Strict

    role: Literal["reader", "operator", "admin"]
    secret: SecretStr | None = None
    secret_hash: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_secret(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        secret, hashed = data.get("secret"), data.get("secret_hash")
        if (secret is None) == (hashed is None):
            raise ValueError("give exactly one of secret and secret_hash")
        if secret is not None:
            _check_secret("secret", secret)
        if hashed is not None:
            value = hashed.get_secret_value() if isinstance(hashed, SecretStr) else hashed
            if not isinstance(value, str) or len(value) != 64:
                raise ValueError("secret_hash must be 64 hexadecimal digits")
            try:
                bytes.fromhex(value)
            except ValueError:
                raise ValueError("secret_hash must be 64 hexadecimal digits") from None
        return data


class ClientCredentials(BaseModel):
    """``security.client``: the principal a client (``pd-cli``, the client library)
    signs its requests as (``PD_PRINCIPAL``/``PD_SECRET`` override it)."""

    model_config = _Strict

    principal: str | None = None
    secret: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _both(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if (data.get("principal") is None) != (data.get("secret") is None):
            raise ValueError("give both principal and secret, or neither")
        if data.get("secret") is not None:
            _check_secret("secret", data["secret"])
        return data


def _check_secret(name: str, value: Any) -> None:
    """Refuse an unusable secret without quoting it (errors would show the value)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    if len(value) < MIN_HMAC_KEY_LENGTH:
        raise ValueError(f"{name} must be at least {MIN_HMAC_KEY_LENGTH} characters long")


class SecuritySettings(BaseModel):
    """``security``: who may command whom (see docs/security.md).

    * ``hmac_key`` is the master secret of the agents' keys: the dispatcher signs
      each command with the key of its agent (HKDF of the master and the agent's
      name, :func:`dashi.security.derive_key`) and takes a heartbeat only when
      signed with its sender's key. ``next_hmac_key`` is accepted too during a
      rotation. An agent is given its own key (``agent_key``, hex, and
      ``next_agent_key`` during a rotation), or the master (legacy files).
    * ``principals`` name the clients and their roles; ``require_auth`` refuses
      every request that is not authenticated (legacy peers too).
    * ``client`` is the principal a client signs as.

    Every secret is a :class:`~pydantic.SecretStr`: it shows in no repr or log.
    """

    model_config = _Strict

    hmac_key: SecretStr | None = None
    next_hmac_key: SecretStr | None = None
    agent_key: SecretStr | None = None
    next_agent_key: SecretStr | None = None
    signature_max_age: float = Field(DEFAULT_SIGNATURE_MAX_AGE, gt=0)
    principals: dict[str, PrincipalSettings] = Field(default_factory=dict)
    require_auth: bool = False
    client: ClientCredentials = ClientCredentials()

    @model_validator(mode="before")
    @classmethod
    def _usable_key(cls, data: Any) -> Any:
        # Checked on the whole section, not the field: a field error would quote the
        # offending value, and that value is the secret.
        if not isinstance(data, dict):
            return data
        for name in ("hmac_key", "next_hmac_key"):
            if data.get(name) is not None:
                _check_secret(name, data[name])
        for name in ("agent_key", "next_agent_key"):
            key = data.get(name)
            if key is None:
                continue
            if isinstance(key, SecretStr):
                key = key.get_secret_value()
            try:
                usable = isinstance(key, str) and len(bytes.fromhex(key)) == 32
            except ValueError:
                usable = False
            if not usable:
                raise ValueError(
                    f"{name} must be 64 hexadecimal digits (`pd-dispatcher agent-key NAME`)"
                )
        if data.get("next_hmac_key") is not None and data.get("hmac_key") is None:
            raise ValueError("next_hmac_key needs hmac_key (the current master)")
        return data


class Settings(BaseModel):
    """The whole configuration of one process."""

    model_config = _Model

    state_dir: Path
    server: ServerSettings = ServerSettings()
    dashi: DashiSettings = DashiSettings()
    processdispatcher: ProcessDispatcherSettings = ProcessDispatcherSettings()
    provisioner: ProvisionerSettings = ProvisionerSettings()
    eeagent: EEAgentSettings = EEAgentSettings()
    pd: PdSettings = PdSettings()
    security: SecuritySettings = SecuritySettings()
    logging: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _local_default_engine(cls, data: Any) -> Any:
        """Without configured engines, the default engine of a ``local`` default site
        has :data:`DEFAULT_LOCAL_ENGINE_SLOTS` slots (few agents, little memory)."""
        if not isinstance(data, Mapping):
            return data
        pd = data.get("processdispatcher")
        if (isinstance(pd, Mapping) and "engines" in pd) or not isinstance(pd, Mapping | None):
            return data
        provisioner = data.get("provisioner")
        if not isinstance(provisioner, Mapping | None):
            return data
        provisioner = provisioner or {}
        sites = provisioner.get("sites")
        default_site = sites.get(DEFAULT_SITE) if isinstance(sites, Mapping) else None
        driver = provisioner.get("driver", "local")
        if isinstance(default_site, Mapping):
            driver = default_site.get("driver", driver)
        if driver != "local":
            return data
        engines = {DEFAULT_ENGINE_ID: {"slots": DEFAULT_LOCAL_ENGINE_SLOTS}}
        return {**data, "processdispatcher": {**(pd or {}), "engines": engines}}

    @property
    def amqp_uri(self) -> str:
        return self.server.amqp.resolved_uri()

    @property
    def database_url(self) -> str:
        url = self.processdispatcher.database_url
        return url or f"sqlite:///{self.state_dir / 'dispatcher.db'}"


def unknown_keys(settings: Settings) -> list[str]:
    """The dotted keys of the dispatcher's sections that no setting reads, sorted.

    Sections accept unknown keys, because legacy files carry keys of the services
    this project replaces (see :data:`LEGACY_IGNORED_KEYS`); ``pd-dispatcher``
    refuses any other (:func:`check_unknown_keys`) and logs the legacy ones this
    returns at INFO. ``eeagent.*`` keys are the agent's to check.
    """
    sections: list[tuple[str, BaseModel]] = [
        ("", settings),
        ("server.", settings.server),
        ("server.amqp.", settings.server.amqp),
        ("dashi.", settings.dashi),
        ("processdispatcher.", settings.processdispatcher),
        ("provisioner.", settings.provisioner),
        ("pd.", settings.pd),
    ]
    return sorted(prefix + key for prefix, model in sections for key in model.model_extra or {})


def _section_models(settings: Settings, section: str) -> list[tuple[str, BaseModel]]:
    """``(dotted prefix, model)`` of ``section`` (each entry of a ``NAME.*`` mapping)."""
    path = section.removesuffix(".*")
    node: Any = settings
    for part in filter(None, path.split(".")):
        node = getattr(node, part)
    if section.endswith(".*"):
        return [(f"{path}.{key}.", model) for key, model in node.items()]
    return [(f"{path}." if path else "", node)]


def check_unknown_keys(
    settings: Settings, sections: Sequence[str], accepted: Collection[str] = LEGACY_IGNORED_KEYS
) -> None:
    """Refuse a key of ``sections`` that no setting reads, unless ``accepted`` lists it.

    Raises:
        ConfigError: one line naming the first unknown key (its dotted path) and the
            nearest valid key of its section (or the valid keys, when none is near).
    """
    unknown: list[tuple[str, str, list[str]]] = []
    for section in sections:
        for prefix, model in _section_models(settings, section):
            valid = sorted(type(model).model_fields)
            for key in model.model_extra or {}:
                if prefix + key not in accepted:
                    unknown.append((prefix + key, prefix, valid))
    if not unknown:
        return
    unknown.sort()
    dotted, prefix, valid = unknown[0]
    near = difflib.get_close_matches(dotted.removeprefix(prefix), valid, n=1)
    if near:
        hint = f"did you mean {prefix}{near[0]}?"
    else:
        hint = f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}"
    more = len(unknown) - 1
    suffix = f" (and {more} more unknown key{'s' if more > 1 else ''})" if more else ""
    raise ConfigError(f"configuration key {dotted}: unknown key; {hint}{suffix}")


def default_state_dir(environ: Mapping[str, str]) -> Path:
    """Where embedded state lives: ``$PD_STATE_DIR``, else ``$XDG_STATE_HOME/process-dispatcher``."""
    if environ.get("PD_STATE_DIR"):
        return Path(environ["PD_STATE_DIR"]).expanduser()
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "/tmp")) / ".local/state")
    return Path(base).expanduser() / "process-dispatcher"


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively with ``override`` (later wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = value


def read_config_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Read and deep-merge YAML files in order.

    Raises:
        ConfigError: a file is missing, unreadable, not YAML, or not a mapping.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from exc
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        merged = deep_merge(merged, data)
    return merged


def _format_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    value = first.get("input")
    shown = ""
    if first["type"] not in ("missing",) and not isinstance(value, dict | list):
        shown = f" (got {value!r})"
    return f"configuration key {key}: {first['msg']}{shown}{suffix}"


def load_settings(
    paths: Sequence[str | Path] = (),
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from YAML files, environment variables and dotted overrides.

    Args:
        paths: YAML files, deep-merged in order (later files win).
        environ: environment variables; ``PD_AMQP_URI``, ``PD_DATABASE_URL`` and
            ``PD_STATE_DIR`` are honoured.
        overrides: dotted keys (``{"dashi.sysname": "x"}``) applied last.

    Raises:
        ConfigError: with a one-line message naming the offending key.
    """
    environ = environ or {}
    data = read_config_files(paths)
    if environ.get("PD_AMQP_URI"):
        _set_path(data, "server.amqp.uri", environ["PD_AMQP_URI"])
    if environ.get("PD_DATABASE_URL"):
        _set_path(data, "processdispatcher.database_url", environ["PD_DATABASE_URL"])
    if environ.get("PD_PRINCIPAL") or environ.get("PD_SECRET"):
        _set_path(data, "security.client.principal", environ.get("PD_PRINCIPAL") or None)
        _set_path(data, "security.client.secret", environ.get("PD_SECRET") or None)
    for dotted, value in (overrides or {}).items():
        _set_path(data, dotted, value)
    if data.get("state_dir") is None or environ.get("PD_STATE_DIR"):
        data["state_dir"] = str(default_state_dir(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc

"""The libcloud driver: Libcloud's dummy provider, and EC2 served by moto on loopback."""

from __future__ import annotations

import base64
import http.server
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import (
    TAG_ENGINE,
    TAG_NODE,
    TAG_OWNER,
    NodeRequest,
    VMState,
    new_node_id,
)
from dispatcher.provisioner.errors import (
    CloudAuthError,
    CloudImageError,
    CloudQuotaError,
    CloudRequestError,
    NodeNotFoundError,
    ThrottledError,
    TransientCloudError,
)
from dispatcher.provisioner.fake import InlineExecutor
from dispatcher.provisioner.libcloud import LibcloudDriver, translate_error
from dispatcher.provisioner.manager import Provisioner
from dispatcher.provisioner.sites import Site
from dispatcher.registration import Registration
from dispatcher.store.memory import MemoryStore
from pdcommon.errors import ConfigError
from pdcommon.settings import LibcloudSiteSettings, ProvisionerSettings
from tests.provisioner.conftest import FakeClock

AMQP = "amqp://agent:s3cret-broker@broker.example:5672/%2F"
TEMPLATE = AgentTemplate(amqp_uri=AMQP, sysname="sys1", pd_name="process_dispatcher")
KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI-very-secret"
AMI = "ami-03cf127a"  # one of moto's built-in images


def request_for(engine_id: str = "engine1", replicas: int = 2) -> NodeRequest:
    return NodeRequest(new_node_id(engine_id), engine_id, slots=3, replicas=replicas, heartbeat=7)


# -- dummy provider -------------------------------------------------------------------------


def dummy_site(**extra: Any) -> LibcloudSiteSettings:
    return LibcloudSiteSettings(provider="dummy", key="0", image="1", size="1", **extra)


def test_the_dummy_provider_creates_lists_and_destroys_nodes() -> None:
    driver = LibcloudDriver(dummy_site(), template=TEMPLATE, owner="pd1")
    request = request_for()
    node = driver.create_node(request)
    # Then the node is listed as ours, with its engine, and the dummy's own nodes are not
    listed = driver.list_nodes()
    assert [(n.node_id, n.engine_id, n.provider_id) for n in listed] == [
        (request.node_id, "engine1", node.provider_id)
    ]
    driver.destroy_node(request.node_id, node.provider_id)
    assert driver.list_nodes() == []
    with pytest.raises(NodeNotFoundError):
        driver.destroy_node(request.node_id, node.provider_id)


def test_the_provisioner_runs_over_the_dummy_provider(registration: Registration) -> None:
    store = registration.store
    assert isinstance(store, MemoryStore)
    driver = LibcloudDriver(dummy_site(), template=TEMPLATE, owner="pd1")
    provisioner = Provisioner(
        store,
        registration.engines,
        {"default": Site("default", driver, 900)},
        registration,
        executor=InlineExecutor(),
    )
    provisioner.register_need("engine1", 2, [])
    provisioner.step()
    assert len(driver.list_nodes()) == 2
    assert {vm.state for vm in store.list_vms()} == {VMState.PENDING}
    provisioner.register_need("engine1", 0, [])
    provisioner.step()
    assert driver.list_nodes() == []
    assert {vm.state for vm in store.list_vms()} == {VMState.TERMINATED}


def test_agents_on_vms_cannot_use_the_embedded_broker() -> None:
    site = LibcloudSiteSettings(provider="ec2", key=KEY, secret=SECRET, image=AMI, size="t2.micro")
    with pytest.raises(ConfigError, match="embedded broker"):
        LibcloudDriver(site, template=AgentTemplate(amqp_uri="embedded://"), owner="pd1")


def test_credentials_never_show_in_the_repr_of_settings_or_driver() -> None:
    site = LibcloudSiteSettings(
        provider="ec2", key=KEY, secret=SECRET, image=AMI, size="t2.micro", region="us-east-1"
    )
    driver = LibcloudDriver(site, template=TEMPLATE, owner="pd1")
    for text in (repr(site), repr(driver), str(site)):
        assert SECRET not in text
        assert "s3cret-broker" not in text


# -- error translation ----------------------------------------------------------------------


def test_libcloud_errors_are_translated_by_kind() -> None:
    from libcloud.common.exceptions import BaseHTTPError, RateLimitReachedError
    from libcloud.common.types import InvalidCredsError, LibcloudError, ServiceUnavailableError

    cases = [
        (RateLimitReachedError(headers={"retry-after": "12"}), ThrottledError, 12.0),
        (BaseHTTPError(503, "RequestLimitExceeded: Request limit exceeded."), ThrottledError, None),
        (BaseHTTPError(500, "InternalError: oops"), TransientCloudError, None),
        (BaseHTTPError(400, "InsufficientInstanceCapacity: none left"), TransientCloudError, None),
        (ServiceUnavailableError(), TransientCloudError, None),
        (ConnectionRefusedError(111, "Connection refused"), TransientCloudError, None),
        (InvalidCredsError("AuthFailure: bad key"), CloudAuthError, None),
        (BaseHTTPError(401, "Unauthorized"), CloudAuthError, None),
        (BaseHTTPError(400, "InvalidAMIID.NotFound: no such image"), CloudImageError, None),
        (BaseHTTPError(400, "InstanceLimitExceeded: 20 at most"), CloudQuotaError, None),
        (BaseHTTPError(400, "InvalidKeyPair.NotFound: no such key"), CloudRequestError, None),
        (BaseHTTPError(400, "InvalidInstanceID.NotFound: gone"), NodeNotFoundError, None),
        (LibcloudError("odd"), CloudRequestError, None),
        (KeyError("x"), CloudRequestError, None),
    ]
    for exc, kind, retry_after in cases:
        error = translate_error(exc, "create n1", (SECRET,))
        assert type(error) is kind, (exc, error)
        assert str(error).startswith("create n1")
        if retry_after is not None:
            assert getattr(error, "retry_after", None) == retry_after


def test_credentials_are_masked_in_translated_messages() -> None:
    from libcloud.common.exceptions import BaseHTTPError

    error = translate_error(BaseHTTPError(400, f"Weird: echoed {SECRET}"), "list", (SECRET,))
    assert SECRET not in str(error)
    assert "***" in str(error)


# -- EC2 on moto ----------------------------------------------------------------------------


class FaultInjector:
    """A loopback HTTP proxy in front of moto that fails chosen EC2 actions.

    ``fail(action, status, code, times)`` makes the next ``times`` requests of
    that action get an EC2 error reply instead of reaching moto.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: dict[str, list[tuple[int, str]]] = {}
        self.actions: list[str] = []
        injector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._relay(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._relay(self.rfile.read(length))

            def _relay(self, body: bytes) -> None:
                query = urllib.parse.urlsplit(self.path).query
                params = urllib.parse.parse_qs(query) or urllib.parse.parse_qs(body.decode())
                action = (params.get("Action") or [""])[0]
                injector.actions.append(action)
                pending = injector.faults.get(action)
                if pending:
                    status, code = pending.pop(0)
                    reply = (
                        "<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error>"
                        f"<Code>{code}</Code><Message>injected</Message></Error></Errors>"
                        "<RequestID>x</RequestID></Response>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                forward = urllib.request.Request(
                    injector.upstream + self.path,
                    data=body or None,
                    headers=headers,
                    method=self.command,
                )
                try:
                    with urllib.request.urlopen(forward, timeout=30) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, action: str, status: int, code: str, times: int = 1) -> None:
        self.faults.setdefault(action, []).extend([(status, code)] * times)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[tuple[str, int]]:
    """moto's EC2 API on a loopback port, for this module."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()
    finally:
        server.stop()


@pytest.fixture
def proxy(moto_endpoint: tuple[str, int]) -> Iterator[FaultInjector]:
    host, port = moto_endpoint
    injector = FaultInjector(f"http://{host}:{port}")
    yield injector
    injector.close()


def ec2_site(port: int, **extra: Any) -> LibcloudSiteSettings:
    return LibcloudSiteSettings(
        provider="ec2",
        key=KEY,
        secret=SECRET,
        region="us-east-1",
        image=AMI,
        size="t2.micro",
        key_pair=None,
        security_groups=["default"],
        tags={"team": "science"},
        driver_options={
            "host": "127.0.0.1",
            "port": port,
            "secure": False,
            "signature_version": "4",
        },
        **extra,
    )


def ec2_driver(port: int, owner: str) -> LibcloudDriver:
    return LibcloudDriver(ec2_site(port), template=TEMPLATE, owner=owner)


def instance_user_data(driver: LibcloudDriver, instance_id: str) -> str:
    with driver._driver("read user data") as ec2:
        response = ec2.connection.request(
            "/",
            params={
                "Action": "DescribeInstanceAttribute",
                "InstanceId": instance_id,
                "Attribute": "userData",
            },
        )
    value = response.object.findtext(".//{*}userData/{*}value")
    return base64.b64decode(value).decode()


def written_configs(script: str) -> dict[str, Any]:
    """The agent configurations a boot script writes, by path."""
    configs = {}
    for line in script.splitlines():
        if line.startswith("write_config "):
            _, path, encoded = line.split(" ")
            configs[path] = yaml.safe_load(base64.b64decode(encoded))
    return configs


def test_ec2_create_sends_user_data_and_tags_and_a_new_driver_lists_the_node(
    proxy: FaultInjector, sysname: str
) -> None:
    owner = f"{sysname}.process_dispatcher"
    driver = ec2_driver(proxy.port, owner)
    request = request_for(replicas=2)
    # When a node is created
    node = driver.create_node(request)
    assert node.provider_id.startswith("i-")
    assert node.properties["private_ips"]
    # Then its user-data installs the project and starts both agents with the node's settings
    script = instance_user_data(driver, node.provider_id)
    assert script.startswith("#!/bin/sh\n")
    configs = written_configs(script)
    for name in request.agent_names:
        config = configs[f"/etc/process-dispatcher/{name}.yml"]
        assert config["eeagent"]["node_id"] == request.node_id
        assert config["eeagent"]["slots"] == 3
        assert config["eeagent"]["heartbeat"] == 7
        assert config["server"]["amqp"]["uri"] == AMQP
        assert config["dashi"]["sysname"] == "sys1"
    assert f"for name in {' '.join(request.agent_names)}; do" in script
    assert "    python3 -m pip install process-dispatcher\n" in script
    # And a new driver instance (a restarted dispatcher) finds it by its tags
    again = ec2_driver(proxy.port, owner)
    (listed,) = again.list_nodes()
    assert (listed.node_id, listed.engine_id, listed.provider_id) == (
        request.node_id,
        "engine1",
        node.provider_id,
    )
    # But another dispatcher's driver does not
    assert ec2_driver(proxy.port, f"{sysname}.other").list_nodes() == []
    # And the tags are on the instance
    with again._driver("tags") as ec2:
        (instance,) = ec2.list_nodes(ex_node_ids=[node.provider_id])
    tags = instance.extra["tags"]
    assert tags[TAG_OWNER] == owner and tags[TAG_NODE] == request.node_id
    assert tags[TAG_ENGINE] == "engine1" and tags["team"] == "science"
    # When the new driver destroys it, it is no longer listed
    again.destroy_node(request.node_id, node.provider_id)
    assert again.list_nodes() == []
    with pytest.raises(NodeNotFoundError):
        again.destroy_node(request.node_id, node.provider_id)


def test_ec2_throttling_and_auth_errors_are_translated(proxy: FaultInjector, sysname: str) -> None:
    driver = ec2_driver(proxy.port, sysname)
    proxy.fail("RunInstances", 503, "RequestLimitExceeded")
    with pytest.raises(ThrottledError):
        driver.create_node(request_for())
    proxy.fail("DescribeInstances", 401, "AuthFailure")
    with pytest.raises(CloudAuthError) as caught:
        driver.list_nodes()
    assert SECRET not in str(caught.value)


def test_the_provisioner_retries_a_cloud_api_error_adopts_after_restart_and_destroys(
    proxy: FaultInjector, sysname: str, registration: Registration, clock: FakeClock
) -> None:
    store = registration.store
    owner = f"{sysname}.process_dispatcher"
    settings = ProvisionerSettings(retry_initial=5, retry_max=60)

    def provisioner() -> Provisioner:
        site = Site("default", ec2_driver(proxy.port, owner), 900)
        return Provisioner(
            store,
            registration.engines,
            {"default": site},
            registration,
            settings=settings,
            executor=InlineExecutor(),
            clock=clock,
        )

    first = provisioner()
    # Given the cloud fails the first RunInstances with a server error
    proxy.fail("RunInstances", 500, "InternalError")
    first.register_need("engine1", 1, [])
    first.step()
    (vm,) = store.list_vms()
    assert vm.state == VMState.REQUESTED
    assert vm.last_error is not None and "InternalError" in vm.last_error
    # When the backoff expires, the create is retried and succeeds
    clock.advance(5)
    first.step()
    (vm,) = store.list_vms()
    assert vm.state == VMState.PENDING and vm.provider_id is not None
    assert proxy.actions.count("RunInstances") == 2
    # When the dispatcher restarts with no memory of its VM records' nodes
    for record in store.list_vms():
        store.remove_vm(record.node_id)
    second = provisioner()
    second.step()
    # Then it adopts its node from the tags
    (adopted,) = store.list_vms()
    assert (adopted.node_id, adopted.provider_id, adopted.reason) == (
        vm.node_id,
        vm.provider_id,
        "adopted",
    )
    # And on scale-down it destroys it
    second.register_need("engine1", 0, [])
    second.step()
    (done,) = store.list_vms()
    assert done.state == VMState.TERMINATED
    assert second.sites["default"].driver.list_nodes() == []


@pytest.mark.parametrize(
    ("status", "code", "error", "what"),
    [
        (400, "InstanceLimitExceeded", "CloudQuotaError", "quota exceeded"),
        (400, "VcpuLimitExceeded", "CloudQuotaError", "quota exceeded"),
        (400, "InvalidAMIID.NotFound", "CloudImageError", "image or size refused"),
        (400, "InvalidAMIID.Malformed", "CloudImageError", "image or size refused"),
        (401, "AuthFailure", "CloudAuthError", "credentials refused"),
        (403, "UnauthorizedOperation", "CloudAuthError", "credentials refused"),
    ],
)
def test_create_errors_fail_the_node_clearly_and_back_off_without_a_crash_loop(
    proxy: FaultInjector,
    sysname: str,
    registration: Registration,
    clock: FakeClock,
    status: int,
    code: str,
    error: str,
    what: str,
) -> None:
    store = registration.store
    driver = ec2_driver(proxy.port, f"{sysname}.process_dispatcher")
    provisioner = Provisioner(
        store,
        registration.engines,
        {"default": Site("default", driver, 900)},
        registration,
        settings=ProvisionerSettings(retry_initial=2, retry_max=16),
        executor=InlineExecutor(),
        clock=clock,
    )
    # Given the cloud refuses every RunInstances for a while
    proxy.fail("RunInstances", status, code, times=4)
    provisioner.register_need("engine1", 1, [])
    # When the provisioner makes a pass every second for 30 seconds
    for _ in range(30):
        provisioner.step()
        clock.advance(1)
    # Then each refused create failed its node with a reason naming the kind of error
    failed = [vm for vm in store.list_vms() if vm.state == VMState.FAILED]
    assert failed
    for vm in failed:
        assert vm.reason == f"creation failed: {what}"
        assert vm.last_error is not None and vm.last_error.startswith(f"{error}: ")
        assert code in vm.last_error and SECRET not in vm.last_error
    # And the replacements waited for a growing backoff (2, 4, 8 s): 4 attempts in
    # 30 s, not one per pass
    assert proxy.actions.count("RunInstances") == 4 == len(failed)
    # And once the cloud accepts the request, a node is created
    (pending,) = [vm for vm in store.list_vms() if vm.state in VMState.ACTIVE]
    for _ in range(40):
        if pending.state == VMState.PENDING:
            break
        clock.advance(1)
        provisioner.step()
        pending = store.get_vm(pending.node_id) or pending
    assert pending.state == VMState.PENDING and pending.provider_id is not None
    assert len(driver.list_nodes()) == 1
    driver.destroy_node(pending.node_id, pending.provider_id)

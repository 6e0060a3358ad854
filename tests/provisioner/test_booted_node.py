"""A ``libcloud`` node that boots from the dispatcher's own user-data, joins and serves.

The dispatcher runs for real (RabbitMQ, SQLite) with a ``libcloud`` site on moto's
EC2 API; :class:`~tests.provisioner.booted.BootingCloud` boots every instance moto
runs from its user-data in a clean Debian root (see that module). The node
installs the project from the wheelhouse, starts ``pd-eeagent`` with the
configuration and HMAC key the user-data carries, heartbeats, runs a process to
``500-RUNNING``; a reboot installs nothing twice; scale-down destroys it and its
processes are gone.
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashi.security import derive_key
from dispatcher.client import ProcessDispatcherClient
from dispatcher.provisioner.userdata import AGENT_CONFIG_DIR, BOOT_LOG
from dispatcher.service import DispatcherService
from eeagent.supervisor import stop_left_supervisord
from pdcommon.settings import load_settings
from tests.conftest import unavailable
from tests.provisioner import booted
from tests.support.waiting import wait_for

#: The first run builds the Debian root (debootstrap) and the wheelhouse.
pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq, pytest.mark.timeout(900)]

HMAC_KEY = "booted-node-hmac-key-0123456789abcdef"
AMI = "ami-03cf127a"  # one of moto's built-in images
INSTALL = (
    f"python3 -m venv /opt/pd && /opt/pd/bin/pip install --quiet --no-index "
    f"--find-links {booted.WHEELS_IN_VM} process-dispatcher"
)


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def debian_root() -> Path:
    reason = booted.missing_reason()
    if reason is not None:
        unavailable(reason)
    return booted.debian_root()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return booted.wheelhouse(tmp_path_factory.mktemp("wheels"))


def settings_for(tmp_path: Path, amqp_uri: str, endpoint: str, sysname: str) -> Any:
    port = int(endpoint.rsplit(":", 1)[1])
    return load_settings(
        overrides={
            "state_dir": str(tmp_path / "state"),
            "server.amqp.uri": amqp_uri,
            "dashi.sysname": sysname,
            "security.hmac_key": HMAC_KEY,
            "processdispatcher.engines": {
                "engine1": {
                    "slots": 2,
                    "heartbeat_period": 1,
                    "heartbeat_warning": 5,
                    "heartbeat_missing": 30,
                }
            },
            "processdispatcher.default_engine": "engine1",
            "provisioner.driver": "libcloud",
            "provisioner.interval": 1,
            "provisioner.sync_interval": 2,
            "provisioner.sites": {
                "default": {
                    "driver": "libcloud",
                    "provider": "ec2",
                    "key": "AKIDEXAMPLE",
                    "secret": "example-secret",
                    "region": "us-east-1",
                    "image": AMI,
                    "size": "t2.micro",
                    "driver_options": {
                        "host": "127.0.0.1",
                        "port": port,
                        "secure": False,
                        "signature_version": "4",
                    },
                    "install_command": INSTALL,
                    "agent_command": "/opt/pd/bin/pd-eeagent",
                    "agent_heartbeat": 1,
                    "boot_timeout": 600,
                    "scale_down_grace": 20,
                }
            },
        }
    )


def vm_states(client: ProcessDispatcherClient) -> dict[str, str]:
    return {node: vm["state"] for node, vm in client.dump().get("vms", {}).items()}


def process_state(client: ProcessDispatcherClient, upid: str) -> str | None:
    record = client.describe_process(upid)
    return None if record is None else str(record["state"])


def agents_in(vm: booted.ChrootVM) -> list[int]:
    return [pid for pid, cmd in vm.processes() if "pd-eeagent" in cmd]


def test_a_node_boots_from_its_user_data_joins_serves_and_goes(
    tmp_path: Path, amqp_uri: str, moto_endpoint: str, debian_root: Path, wheels: Path
) -> None:
    cloud = booted.BootingCloud(moto_endpoint, debian_root, wheels, tmp_path / "vms")
    (tmp_path / "vms").mkdir()
    cloud.start()
    settings = settings_for(tmp_path, amqp_uri, moto_endpoint, f"boot{uuid.uuid4().hex[:8]}")
    service = DispatcherService.build(settings, stop_supervisord=stop_left_supervisord)
    service.start()
    client = ProcessDispatcherClient.from_settings(settings, timeout=20)
    try:
        client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
        # When a process needs a node
        client.schedule_process("p1", "sleeper", restart_mode="NEVER")
        # Then a VM is created, boots from its user-data and its agent registers
        wait_for(lambda: cloud.vms, 60, "an instance booted")
        ((instance_id, vm),) = cloud.vms.items()
        wait_for(lambda: client.dump()["resources"], 600, "the node's agent registered")
        print(f"\nboot to first heartbeat: {time.time() - vm.boots[0]:.1f}s")
        # And the process runs on it, inside the VM
        wait_for(lambda: process_state(client, "p1") == "500-RUNNING", 120, "p1 running")
        commands = [cmd for _, cmd in vm.processes()]
        assert any(cmd == "/bin/sleep 600" for cmd in commands), commands
        assert any("supervisord" in cmd for cmd in commands), commands
        assert agents_in(vm)
        assert list(vm_states(client).values()) == ["running"]
        # And the secrets the user-data carries are readable by root only
        configs = list(vm.file(AGENT_CONFIG_DIR).glob("*.yml"))
        assert configs
        assert stat.S_IMODE(vm.file(AGENT_CONFIG_DIR).stat().st_mode) == 0o700
        secrets = [HMAC_KEY, "guest:guest"]
        for config in configs:
            assert stat.S_IMODE(config.stat().st_mode) == 0o600
            # the agent's own key, derived from the master, never the master itself
            agent_key = derive_key(HMAC_KEY, f"{settings.dashi.sysname}.{config.stem}").hex()
            assert agent_key in config.read_text() and HMAC_KEY not in config.read_text()
            secrets.append(agent_key)
        boot_log = vm.file(BOOT_LOG)
        assert stat.S_IMODE(boot_log.stat().st_mode) == 0o600
        assert not [secret for secret in secrets if secret in boot_log.read_text()]
        assert vm.file("/var/lib/process-dispatcher/boot-status").read_text() == "ok\n"

        # When the process ends and the VM reboots
        client.terminate_process("p1")
        wait_for(lambda: process_state(client, "p1") == "700-TERMINATED", 60, "p1 terminated")
        before = agents_in(vm)
        vm.reboot()
        # Then the user-data runs again without installing twice, and the agent is back
        wait_for(lambda: boot_log.read_text().count("pd-node-boot: done") == 2, 60, "reboot")
        text = boot_log.read_text()
        assert text.count("pd-node-boot: installed\n") == 1
        assert "already installed; not installing again" in text
        wait_for(lambda: agents_in(vm) and agents_in(vm) != before, 30, "the agent restarted")

        # When the work is gone for the scale-down grace
        # Then the VM is destroyed and every process of it is gone
        wait_for(lambda: list(vm_states(client).values()) == ["terminated"], 120, "scale-down")
        wait_for(lambda: not vm.running, 60, "the instance powered off")
        assert vm.processes() == []
        instance = cloud.ec2.describe_instances(InstanceIds=[instance_id])
        assert instance["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
        assert cloud.errors == []
    finally:
        client.close()
        service.stop()
        cloud.close()

"""The boot script of ``libcloud`` nodes (``userdata``): its text, and its failures
run for real in a Debian root (the successful boot is ``test_booted_node``)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from dashi.security import derive_key
from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import NodeRequest
from dispatcher.provisioner.userdata import BOOT_LOG, MIN_PYTHON, build_user_data
from pdcommon.settings import LibcloudSiteSettings
from tests.conftest import unavailable
from tests.provisioner import booted
from tests.support.waiting import wait_for

BROKER_PASSWORD = "br0ker-pa55word"
HMAC_KEY = "user-data-hmac-key-0123456789"
TEMPLATE = AgentTemplate(
    amqp_uri=f"amqp://agent:{BROKER_PASSWORD}@10.0.0.1:5672/%2F",
    hmac_key=SecretStr(HMAC_KEY),
)
REQUEST = NodeRequest("pd-engine1-0123456789", "engine1", slots=2, replicas=2, heartbeat=5)


def script(**site: object) -> str:
    settings = LibcloudSiteSettings(provider="ec2", image="ami-1", size="t3.small", **site)
    return build_user_data(settings, TEMPLATE, REQUEST)


def test_the_script_is_valid_sh_and_carries_no_secret_in_clear() -> None:
    text = script(setup_commands=["apt-get install -y python3-venv"])
    assert text.startswith("#!/bin/sh\n")
    subprocess.run(["sh", "-n"], input=text, text=True, check=True)
    agent_keys = [derive_key(HMAC_KEY, name).hex() for name in REQUEST.agent_names]
    assert not [secret for secret in [BROKER_PASSWORD, HMAC_KEY, *agent_keys] if secret in text]
    assert "umask 077" in text and "chmod 600" in text
    assert f"sys.version_info < {MIN_PYTHON}" in text
    # the setup commands run before the install, both only once
    assert text.index("apt-get install -y python3-venv") < text.index("pip install")
    assert text.index('if [ -e "$PD_STATE/installed" ]') < text.index("apt-get install")


@pytest.fixture(scope="module")
def debian_root() -> Path:
    reason = booted.missing_reason()
    if reason is not None:
        unavailable(reason)
    return booted.debian_root()


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first run builds the Debian root
@pytest.mark.parametrize(
    ("broken", "step", "status"),
    [
        ("install", "install (exit status 3)", 3),
        ("python", f"python3 >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (exit status 1)", 1),
    ],
)
def test_a_failing_boot_says_which_step_failed_where_the_provider_shows_it(
    tmp_path: Path, debian_root: Path, broken: str, step: str, status: int
) -> None:
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    vm = booted.ChrootVM(debian_root, tmp_path / "vm", empty)
    if broken == "python":
        fake = vm.file("/usr/local/bin/python3")
        fake.write_text("#!/bin/sh\nexit 1\n")
        fake.chmod(0o755)
    text = script(install_command="exit 3" if broken == "install" else "true")
    try:
        vm.boot(text)
        wait_for(lambda: "user-data exited" in vm.console.read_text(), 60, "the boot script")
        console = vm.console.read_text()
        # Then the script failed, on the console (the provider's console output) too
        assert f"user-data exited with status {status}" in console
        assert f"pd-node-boot: failed: {step}; see {BOOT_LOG}" in console
        boot_status = vm.file("/var/lib/process-dispatcher/boot-status").read_text()
        assert boot_status == f"failed: {step}\n"
        # And no agent was started, nor the install marked done
        assert not vm.file("/var/lib/process-dispatcher/installed").exists()
        assert not list(vm.file("/var/lib/process-dispatcher").glob("*.pid"))
        assert BROKER_PASSWORD not in vm.file(BOOT_LOG).read_text()
    finally:
        vm.stop()

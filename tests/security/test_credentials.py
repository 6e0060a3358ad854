"""Credentials never show: ``pd-dispatcher`` and ``pd-eeagent`` run on RabbitMQ with
a password in the broker URL, a master key, principals (one by its secret, one by
its hash) and client credentials, with ``require_auth`` on and every logger at DEBUG
(kombu and amqp included), and no secret appears in their output, their agents'
output (nor the agents' own keys), or ``dump``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import RpcTimeoutError
from dashi.security import MessageSigner
from dispatcher.client import ProcessDispatcherClient
from pdcommon.auth import principal_key
from pdcommon.settings import load_settings
from tests.eeagent.conftest import agent_command, wait_for
from tests.infra import RabbitMQServer

pytestmark = [pytest.mark.rabbitmq, pytest.mark.supervisord, pytest.mark.slow]

PD_DISPATCHER = str(Path(sys.executable).parent / "pd-dispatcher")
#: Every logger at DEBUG, to stderr: what a verbose operator would see.
DEBUG_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"level": "DEBUG", "handlers": ["stderr"]},
}


class Secrets:
    def __init__(self, rabbitmq: RabbitMQServer) -> None:
        self.rabbitmq = rabbitmq
        self.vhost = f"cred-{uuid.uuid4().hex[:8]}"
        self.user = f"{self.vhost}-pd"
        self.password = f"Pw-{secrets.token_hex(12)}"
        self.key = f"Key-{secrets.token_hex(16)}"
        self.operator_secret = f"Op-{secrets.token_hex(16)}"
        self.admin_secret = f"Adm-{secrets.token_hex(16)}"
        self.sysname = f"c{uuid.uuid4().hex[:8]}"

    @property
    def uri(self) -> str:
        port = self.rabbitmq.port
        return f"amqp://{self.user}:{self.password}@127.0.0.1:{port}/{self.vhost}"

    def assert_absent(self, text: str, where: str, *others: str) -> None:
        assert self.password not in text, f"the broker password appears in {where}"
        assert self.key not in text, f"the HMAC key appears in {where}"
        for secret in (
            self.operator_secret,
            self.admin_secret,
            principal_key(self.admin_secret).hex(),
            *others,
        ):
            assert secret not in text, f"a secret appears in {where}"

    def base_config(self, state_dir: Path) -> dict[str, Any]:
        return {
            "state_dir": str(state_dir),
            "server": {"amqp": {"uri": self.uri}},
            "dashi": {"sysname": self.sysname},
            "security": {
                "hmac_key": self.key,
                "require_auth": True,
                "principals": {
                    "operator": {"role": "operator", "secret": self.operator_secret},
                    "root": {
                        "role": "admin",
                        "secret_hash": principal_key(self.admin_secret).hex(),
                    },
                },
                "client": {"principal": "root", "secret": self.admin_secret},
            },
            "logging": DEBUG_LOGGING,
        }


@pytest.fixture
def creds(rabbitmq: RabbitMQServer) -> Iterator[Secrets]:
    made = Secrets(rabbitmq)
    for args in (
        ("add_vhost", made.vhost),
        ("add_user", made.user, made.password),
        ("set_permissions", "-p", made.vhost, made.user, ".*", ".*", ".*"),
    ):
        result = rabbitmq.ctl("rabbitmqctl", *args)
        assert result.returncode == 0, result.stderr
    try:
        yield made
    finally:
        rabbitmq.ctl("rabbitmqctl", "delete_vhost", made.vhost)
        rabbitmq.ctl("rabbitmqctl", "delete_user", made.user)


def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("PD_")},
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_the_dispatcher_and_its_agents_show_neither_the_password_nor_the_key(
    creds: Secrets, tmp_path: Path
) -> None:
    # Given a dispatcher with a local pool, on a password-protected broker, with a key
    state_dir = tmp_path / "state"
    config = creds.base_config(state_dir)
    config["processdispatcher"] = {
        "engines": {
            "e1": {
                "slots": 2,
                "heartbeat_period": 1,
                "heartbeat_warning": 3,
                "heartbeat_missing": 6,
            }
        }
    }
    config["provisioner"] = {"driver": "local", "sites": {"default": {"heartbeat": 1}}}
    config_path = tmp_path / "dispatcher.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "dispatcher.log"
    proc = spawn([PD_DISPATCHER, "--config", str(config_path)], log)
    settings = load_settings([config_path])
    try:
        with ProcessDispatcherClient.from_settings(settings, timeout=20) as pd:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    pd.list_definitions()
                    break
                except RpcTimeoutError:
                    assert time.monotonic() < deadline, log.read_text()
            # When it runs work on an agent it started, and is asked for its dump
            pd.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
            pd.schedule_process("p1", "sleeper", restart_mode="NEVER")
            wait_for(lambda: pd.describe_process("p1")["state"] == "500-RUNNING", timeout=90)
            dump = pd.dump()
            # (the node's directory goes with the node: read its agents' output now)
            agent_logs = {
                str(path): path.read_text(errors="replace")
                for path in (state_dir / "nodes").rglob("*.log")
            }
            # (each agent's own key is in its private configuration file, nowhere else)
            agent_keys = [
                yaml.safe_load(path.read_text())["security"]["agent_key"]
                for path in (state_dir / "nodes").rglob("*.yml")
            ]
            assert agent_keys
            pd.terminate_process("p1")
            wait_for(lambda: pd.describe_process("p1")["state"] == "700-TERMINATED", timeout=30)
    finally:
        stop(proc)
    # Then the work was done with signed commands (nothing was refused) ...
    output = log.read_text(errors="replace")
    assert "refused" not in output
    # ... the broker URL was logged, masked ...
    assert f"{creds.user}:***@" in output
    # ... and neither secret appears in the dispatcher's output, the dump, or the
    # output of the agents it started
    creds.assert_absent(output, "the dispatcher's output")
    creds.assert_absent(json.dumps(dump), "dump")
    assert agent_logs
    creds.assert_absent(output, "the dispatcher's output", *agent_keys)
    for path, text in agent_logs.items():
        creds.assert_absent(text, path, *agent_keys)


def test_an_agent_shows_neither_secret_and_runs_processes_as_its_default_user(
    creds: Secrets, tmp_path: Path, supervisord_bin: str
) -> None:
    # Given pd-eeagent with the password, the key and default_user nobody, at DEBUG
    config = creds.base_config(tmp_path / "state")
    home = tmp_path / "supd"
    config["eeagent"] = {
        "name": "agent1",
        "node_id": "node1",
        "heartbeat": 1,
        "default_user": "nobody",
        "launch_type": {"name": "supd", "supd_directory": str(home)},
    }
    config_path = tmp_path / "eeagent.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "eeagent.log"
    proc = spawn([*agent_command(), "--config", str(config_path)], log)
    broker = BrokerConfig(uri=creds.uri, sysname=creds.sysname)
    try:
        with (
            RpcClient(broker, "process_dispatcher", signer=MessageSigner(creds.key)) as pd,
            RpcClient(broker, "process_dispatcher") as unsigned,
        ):
            # (a fire to a queue that does not exist yet is dropped: wait for the agent)
            wait_for(lambda: _beat(pd) is not None, 60)
            args = {"u_pid": "p1", "round": 1, "run_type": "supd"}
            params = {"exec": "sleep", "argv": ["600"], "working_directory": "/"}
            # When an unsigned launch and then a signed one arrive
            unsigned.fire("agent1", "launch_process", parameters=params, **args)
            pd.fire("agent1", "launch_process", parameters=params, **args)
            beat = wait_for(lambda: _running(pd), timeout=30)
        assert beat["upid"] == "p1"
        # Then the signed one runs, as nobody (when the agent is root)
        state = json.loads((home / "agent1" / "state.json").read_text())
        pid = state["processes"][0]["pid"]
        if os.geteuid() == 0:
            # (supervisord's child switches user between fork and exec: wait for it)
            wait_for(lambda: _uid(pid) == 65534, timeout=5)
    finally:
        stop(proc)
    output = log.read_text(errors="replace")
    # And the unsigned one was refused and logged, without either secret
    assert "refused launch_process" in output and "must carry a signature" in output
    creds.assert_absent(output, "the agent's output")
    for path in (home / "agent1").rglob("*"):
        if path.is_file() and path.suffix in (".log", ".conf", ".out", ".json"):
            creds.assert_absent(path.read_text(errors="replace"), str(path))


def _uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def _beat(pd: RpcClient) -> dict[str, Any] | None:
    try:
        beat: dict[str, Any] = pd.call("agent1", "dump_state", rpc=True, timeout=2)
    except RpcTimeoutError:
        return None
    return beat


def _running(pd: RpcClient) -> dict[str, Any] | None:
    beat = _beat(pd) or {"processes": []}
    return next((p for p in beat["processes"] if p["state"] == [500, "RUNNING"]), None)

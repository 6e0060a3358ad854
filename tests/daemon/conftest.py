"""A real ``pd-dispatcher`` daemon in a subprocess, and clients to talk to it."""

from __future__ import annotations

import os
import signal
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
from dispatcher.client import ProcessDispatcherClient

PD_DISPATCHER = str(Path(sys.executable).parent / "pd-dispatcher")
SERVICE = "process_dispatcher"


class Daemon:
    """``pd-dispatcher --config FILE`` on one broker and one database.

    :meth:`start` may be called again after the process stopped or was killed; the
    configuration (and so the state) stays the same.
    """

    def __init__(self, state_dir: Path, amqp_uri: str, database_url: str | None) -> None:
        self.state_dir = state_dir
        self.amqp_uri = amqp_uri
        self.sysname = f"d{uuid.uuid4().hex[:10]}"
        processdispatcher: dict[str, Any] = {}
        if database_url is not None:
            processdispatcher["database_url"] = database_url
        config = {
            "server": {"amqp": {"uri": amqp_uri}},
            "dashi": {"sysname": self.sysname},
            "processdispatcher": processdispatcher,
            "provisioner": {"driver": "static"},
        }
        self.config_path = state_dir / "dispatcher.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = state_dir / "dispatcher.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
        env["PD_STATE_DIR"] = str(self.state_dir)
        return env

    def broker(self) -> BrokerConfig:
        return BrokerConfig(uri=self.amqp_uri, sysname=self.sysname, state_dir=self.state_dir)

    def client(self, name: str = "test-client", timeout: float = 20.0) -> ProcessDispatcherClient:
        return ProcessDispatcherClient(
            RpcClient(self.broker(), name, timeout=timeout), SERVICE, timeout=timeout
        )

    def start(self, ready_timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [PD_DISPATCHER, "--config", str(self.config_path), "--log-level", "info"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        """Return once the daemon answers an RPC."""
        deadline = time.monotonic() + timeout
        with self.client("readiness-probe", timeout=1.0) as probe:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(f"pd-dispatcher exited with {self.proc.returncode}:\n{self.logs()}")
                try:
                    probe.list_definitions()
                    return
                except RpcTimeoutError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"pd-dispatcher did not answer in {timeout}s:\n{self.logs()}")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(
    params=[
        "embedded-sqlite",
        pytest.param("rabbitmq-postgres", marks=[pytest.mark.rabbitmq, pytest.mark.postgres]),
    ]
)
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    """A daemon (not started) on the embedded defaults, then on RabbitMQ and PostgreSQL."""
    if request.param == "embedded-sqlite":
        instance = Daemon(tmp_path, "embedded://", None)
    else:
        instance = Daemon(
            tmp_path,
            request.getfixturevalue("amqp_uri"),
            request.getfixturevalue("postgres_url"),
        )
    try:
        yield instance
    finally:
        instance.kill()

"""Launch latency: ``launch_process`` → the heartbeat reporting ``500-RUNNING``,
side by side with bare supervisord add-and-start over XML-RPC.

Each round does both, alternately, in the same run:

* **agent**: a ``pd-eeagent`` subprocess (its own supervisord); the bench fires
  ``launch_process`` the way the dispatcher does and times until a heartbeat lists
  the process as ``[500, "RUNNING"]``; the process is then cleaned up (untimed);
* **bare**: a second, private supervisord driven directly: write the program
  section, ``reloadConfig``, ``addProcessGroup``, ``startProcess(wait=False)``,
  ``getProcessInfo`` = RUNNING; then stop and remove it (untimed).

It prints p50/p99 of both and their ratio (target: agent p50 <= 3 x bare p50).

    .venv/bin/python bench/eeagent.py                  # broker-less (embedded transport)
    .venv/bin/python bench/eeagent.py --launches 500
    .venv/bin/python bench/eeagent.py --rabbitmq       # a private RabbitMQ
    .venv/bin/python bench/eeagent.py --amqp-uri amqp://guest:guest@127.0.0.1:5672//
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

import yaml
from supervisor.xmlrpc import SupervisorTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.service import RpcService

PROGRAM = "/bin/sleep 600"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class BareSupervisord:
    """A private supervisord driven the minimal way over its unix socket."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "bare.sock"
        self.config = directory / "bare.conf"
        self.base = (
            f"[unix_http_server]\nfile = {self.socket}\n"
            f"[supervisord]\nlogfile = {directory / 'bare.log'}\n"
            f"pidfile = {directory / 'bare.pid'}\nnodaemon = true\nsilent = true\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        )
        self.config.write_text(self.base)
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "utf8", "-m", "supervisor.supervisord", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.connect()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.rpc("getPID")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def rpc(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.proxy.supervisor, method)(*args)
        except OSError:
            self.connect()
            raise

    def connect(self) -> None:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        self.proxy = xmlrpc.client.ServerProxy("http://localhost", transport=transport)

    def add_and_start(self, name: str) -> float:
        started = time.perf_counter()
        self.config.write_text(
            self.base
            + f"[program:{name}]\ncommand = {PROGRAM}\nautostart = false\nautorestart = false\n"
            "startsecs = 0\nstartretries = 0\nstopasgroup = true\n"
            f"stdout_logfile = {self.directory / name}.out\n"
        )
        self.rpc("reloadConfig")
        self.rpc("addProcessGroup", name)
        self.rpc("startProcess", name, False)
        assert self.rpc("getProcessInfo", name)["statename"] == "RUNNING"
        elapsed = time.perf_counter() - started
        time.sleep(0.02)  # let it exec: a stop right at spawn time can be lost
        self.rpc("stopProcess", name, True)
        self.rpc("removeProcessGroup", name)
        return elapsed

    def close(self) -> None:
        try:
            self.rpc("shutdown")
            self.proc.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


class Agent:
    """A pd-eeagent subprocess and a stand-in dispatcher that collects its heartbeats."""

    def __init__(self, directory: Path, broker: BrokerConfig, amqp_uri: str | None) -> None:
        settings = {
            "state_dir": str(directory / "state"),
            "server": {"amqp": {"uri": amqp_uri or "embedded://"}},
            "dashi": {"sysname": broker.sysname},
            "eeagent": {
                "name": "bench",
                "node_id": "bench-node",
                "slots": 4,
                "heartbeat": 30,
                "launch_type": {"name": "supd", "supd_directory": str(directory / "supd")},
            },
            "pd": {"name": "process_dispatcher"},
        }
        config = directory / "agent.yml"
        config.write_text(yaml.safe_dump(settings))
        self.beats: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pd = RpcService(broker, "process_dispatcher")
        self.pd.handle("heartbeat", self._heartbeat, validate=False)
        self.pd.start()
        self.client = RpcClient(broker, name="process_dispatcher")
        script = Path(sys.executable).with_name("pd-eeagent")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.eeagent"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
        self.proc = subprocess.Popen(
            [*command, "--config", str(config), "--log-level", "warning"],
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.wait(lambda message: True, timeout=60)

    def _heartbeat(self, message: dict[str, Any]) -> None:
        self.beats.put(message)

    def wait(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.beats.get(timeout=max(0.0, deadline - time.monotonic()))
            if predicate(message):
                return message

    def launch(self, upid: str) -> float:
        def running(message: dict[str, Any]) -> bool:
            return any(
                p["upid"] == upid and p["state"] == [500, "RUNNING"] for p in message["processes"]
            )

        started = time.perf_counter()
        self.client.fire(
            "bench",
            "launch_process",
            u_pid=upid,
            round=1,
            run_type="supd",
            parameters={"exec": "/bin/sleep", "argv": ["600"]},
        )
        self.wait(running)
        elapsed = time.perf_counter() - started
        self.client.fire("bench", "terminate_process", u_pid=upid, round=1)
        self.wait(
            lambda message: any(
                p["upid"] == upid and p["state"] == [700, "TERMINATED"]
                for p in message["processes"]
            )
        )
        self.client.fire("bench", "cleanup", u_pid=upid, round=1)
        self.wait(lambda message: all(p["upid"] != upid for p in message["processes"]))
        return elapsed

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.client.close()
        self.pd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=200)
    parser.add_argument("--amqp-uri", help="RabbitMQ URL (default: the embedded transport)")
    parser.add_argument(
        "--rabbitmq", action="store_true", help="start a private RabbitMQ and use it"
    )
    args = parser.parse_args()
    server = None
    if args.rabbitmq and not args.amqp_uri:
        from tests.infra import RabbitMQServer

        server = RabbitMQServer()
        server.start()
        args.amqp_uri = server.uri
    try:
        run(args)
    finally:
        if server is not None:
            server.close()


def run(args: argparse.Namespace) -> None:

    directory = Path(tempfile.mkdtemp(prefix="pd-bench-"))
    sysname = f"bench{uuid.uuid4().hex[:8]}"
    broker = (
        BrokerConfig(uri=args.amqp_uri, sysname=sysname)
        if args.amqp_uri
        else BrokerConfig(uri="embedded://", state_dir=directory / "state", sysname=sysname)
    )
    bare = BareSupervisord(directory)
    agent = Agent(directory, broker, args.amqp_uri)
    try:
        for i in range(10):  # warm-up
            bare.add_and_start(f"warm{i}")
            agent.launch(f"warm{i}")
        bare_times, agent_times = [], []
        for i in range(args.launches):
            bare_times.append(bare.add_and_start(f"b{i}"))
            agent_times.append(agent.launch(f"a{i}"))
    finally:
        agent.close()
        bare.close()
        shutil.rmtree(directory, ignore_errors=True)

    transport = "RabbitMQ" if args.amqp_uri else "embedded"
    print(f"{args.launches} launches each, transport: {transport}")
    print(f"{'':40} {'p50 ms':>8} {'p99 ms':>8}")
    for label, times in (
        ("bare supervisord add+start (XML-RPC)", bare_times),
        ("agent launch -> RUNNING heartbeat", agent_times),
    ):
        p50, p99 = statistics.median(times) * 1000, percentile(times, 0.99) * 1000
        print(f"{label:40} {p50:8.2f} {p99:8.2f}")
    ratio = statistics.median(agent_times) / statistics.median(bare_times)
    print(f"ratio agent/bare (p50): {ratio:.2f} (target <= 3)")


if __name__ == "__main__":
    main()

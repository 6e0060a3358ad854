"""The embedded default on a fresh and on a used state directory, side by side.

Starts ``pd-dispatcher`` with no configuration but ``PD_STATE_DIR`` (SQLite, the
embedded broker, the ``local`` provisioner) and measures sequential calls
(``describe_process``) from a client in this process: calls/s, p50 and p99.

The *used* state directory first goes through churn, with the daemon running:

* short processes (``/bin/true``) scheduled through the local pool, in waves,
  so local nodes (real ``pd-eeagent`` processes under supervisord) come and go;
* agents that stop: processes each serving many agent queues (as ``pd-eeagent``
  does, with the service queue's expiry) receive a few ``cleanup`` fires after
  they stopped, or are killed with SIGKILL;
* clients killed with SIGKILL in the middle of calls to the dispatcher.

Then the daemon restarts and the same calls are measured on both state
directories, in alternating rounds; the broker folder's content (files, message
files) is printed for both.

    .venv/bin/python bench/embedded.py
    .venv/bin/python bench/embedded.py --processes 300 --agents 30000 --killed-clients 1000
    .venv/bin/python bench/embedded.py --settle 90   # measure again once expiries passed
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashi.broker import BrokerConfig  # noqa: E402
from dashi.client import RpcClient  # noqa: E402
from dispatcher.client import ProcessDispatcherClient  # noqa: E402

BIN = Path(sys.executable).parent
SERVICE = "process_dispatcher"

_AGENTS = """
import signal, sys, time
from pathlib import Path
from dashi.broker import BrokerConfig
from dashi.service import RpcService
broker = BrokerConfig(uri="embedded://", state_dir=Path({state_dir!r}))
services = []
for name in {names!r}:
    svc = RpcService(broker, name)
    svc.handle("cleanup", lambda u_pid, round: None)
    svc.start()
    services.append(svc)
print("ready", flush=True)
if {clean!r}:
    sys.stdin.read()
    import threading
    stoppers = [threading.Thread(target=svc.stop) for svc in services]
    for thread in stoppers:
        thread.start()
    for thread in stoppers:
        thread.join()
else:
    time.sleep(3600)
"""

_CALLERS = """
import sys, threading
from pathlib import Path
from dashi.broker import BrokerConfig
from dashi.client import RpcClient
broker = BrokerConfig(uri="embedded://", state_dir=Path({state_dir!r}))
clients = [RpcClient(broker, f"killed-{{i}}", timeout=30) for i in range({count})]
started = threading.Barrier({count} + 1)
def loop(rpc):
    started.wait()
    while True:
        rpc.call("process_dispatcher", "describe_processes")
for rpc in clients:
    threading.Thread(target=loop, args=(rpc,), daemon=True).start()
started.wait()
print("calling", flush=True)
threading.Event().wait()
"""


def environment(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    env["PD_STATE_DIR"] = str(state_dir)
    return env


class Daemon:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = open(self.state_dir.parent / f"{self.state_dir.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(BIN / "pd-dispatcher")], env=environment(self.state_dir), stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception), self.client(timeout=2) as pd:
                pd.list_definitions()
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"pd-dispatcher did not answer on {self.state_dir}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)

    def client(self, timeout: float = 20.0) -> ProcessDispatcherClient:
        broker = BrokerConfig(uri="embedded://", state_dir=self.state_dir)
        return ProcessDispatcherClient(RpcClient(broker, "bench", timeout=timeout), SERVICE)


def measure(daemon: Daemon, calls: int) -> dict[str, float]:
    with daemon.client() as pd:
        for _ in range(min(100, calls)):
            pd.describe_process("absent")
        latencies = []
        started = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            pd.describe_process("absent")
            latencies.append(time.perf_counter() - t0)
        total = time.perf_counter() - started
    latencies.sort()
    return {
        "calls/s": calls / total,
        "p50 ms": statistics.median(latencies) * 1000,
        "p99 ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


def folder_content(state_dir: Path) -> dict[str, float]:
    files = messages = 0
    for _, _, names in os.walk(state_dir / "broker"):
        files += len(names)
        messages += sum(1 for name in names if name.endswith(".msg"))
    return {"broker files": files, "messages": messages}


def churn_processes(daemon: Daemon, count: int, wave: int) -> None:
    if count <= 0:
        return
    with daemon.client(timeout=60) as pd:
        pd.create_definition("short", "supd", {"exec": "/bin/true", "argv": []})
        done = 0
        started = time.monotonic()
        while done < count:
            upids = [f"short-{done + i}" for i in range(min(wave, count - done))]
            for upid in upids:
                pd.schedule_process(upid, "short", restart_mode="NEVER")
            deadline = time.monotonic() + 300
            while True:
                states = {str((pd.describe_process(u) or {}).get("state")) for u in upids}
                if all(s >= "700" for s in states):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"processes stuck: {states}")
                time.sleep(0.2)
            done += len(upids)
            rate = done / (time.monotonic() - started)
            print(f"  {done}/{count} short processes ({rate:.1f}/s)", file=sys.stderr)


def churn_agents(state_dir: Path, count: int, per_process: int) -> None:
    broker = BrokerConfig(uri="embedded://", state_dir=state_dir)
    made = 0
    with RpcClient(broker, SERVICE) as messenger:
        while made < count:
            names = [f"agent-{made + i}" for i in range(min(per_process, count - made))]
            clean = (made // per_process) % 2 == 0
            script = textwrap.dedent(_AGENTS).format(
                state_dir=str(state_dir), names=names, clean=clean
            )
            proc = subprocess.Popen(
                [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            if clean:
                assert proc.stdin is not None
                proc.stdin.close()
            else:
                proc.send_signal(signal.SIGKILL)
            proc.wait(60)
            for name in names:  # the final heartbeats' answers, never read
                for round_ in range(2):
                    messenger.fire(name, "cleanup", u_pid=f"{name}-p", round=round_)
            made += len(names)
            print(f"  {made}/{count} agents stopped", file=sys.stderr)


def kill_callers(state_dir: Path, count: int, per_process: int) -> None:
    killed = 0
    while killed < count:
        n = min(per_process, count - killed)
        script = textwrap.dedent(_CALLERS).format(state_dir=str(state_dir), count=n)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"calling"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        killed += n
        print(f"  {killed}/{count} clients killed mid-call", file=sys.stderr)


def stop_local_agents(state_dir: Path) -> None:
    from dispatcher.provisioner.sites import build_sites
    from pdcommon.settings import load_settings

    settings = load_settings(environ={"PD_STATE_DIR": str(state_dir)})
    for site in build_sites(settings).values():
        for node in site.driver.list_nodes():
            site.driver.destroy_node(node.node_id, node.provider_id)
        site.driver.close()


def table(rows: list[tuple[str, dict[str, Any]]]) -> None:
    keys = list(rows[0][1])
    print(f"{'':34}" + "".join(f"{k:>14}" for k in keys))
    for label, row in rows:
        print(f"{label:34}" + "".join(f"{row[k]:>14.1f}" for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="measurement rounds per daemon")
    parser.add_argument("--processes", type=int, default=200, help="short processes (local pool)")
    parser.add_argument("--wave", type=int, default=20, help="short processes per wave")
    parser.add_argument("--agents", type=int, default=2000, help="stopped agents (simulated)")
    parser.add_argument("--killed-clients", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=0, help="then wait, measure again")
    parser.add_argument("--dir", type=Path, default=None, help="where the state dirs go")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="pdb", dir=args.dir))
    fresh, used = Daemon(base / "fresh"), Daemon(base / "used")
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        used.start()
        print(f"churn on {used.state_dir}:", file=sys.stderr)
        t0 = time.monotonic()
        churn_processes(used, args.processes, args.wave)
        churn_agents(used.state_dir, args.agents, per_process=100)
        kill_callers(used.state_dir, args.killed_clients, per_process=50)
        churn_seconds = time.monotonic() - t0
        used.stop()
        used.start()  # a restart, as after an upgrade or a reboot
        with used.client(timeout=600) as pd:
            pd.describe_process("absent")  # after the killed clients' requests still queued
        fresh.start()
        label = f"used ({args.processes} proc, {args.agents} agents, {args.killed_clients} killed)"
        # Rounds alternate between the two daemons, so that load from elsewhere on
        # the machine weighs on both alike; the median round of each is shown.
        content = {"fresh": folder_content(fresh.state_dir), label: folder_content(used.state_dir)}
        runs: dict[str, list[dict[str, float]]] = {"fresh": [], label: []}
        for _ in range(args.rounds):
            runs["fresh"].append(measure(fresh, args.calls))
            runs[label].append(measure(used, args.calls))
        for name, results in runs.items():
            rows.append((name, {**median_run(results), **content[name]}))
        if args.settle:
            time.sleep(args.settle)
            settled = [measure(used, args.calls) for _ in range(args.rounds)]
            rows.append(
                (
                    f"used, {args.settle:g}s later",
                    {**median_run(settled), **folder_content(used.state_dir)},
                )
            )
        print(f"(churn took {churn_seconds:.0f}s; {args.rounds} rounds of {args.calls} calls)")
        table(rows)
        ratio = rows[1][1]["calls/s"] / rows[0][1]["calls/s"]
        print(f"used/fresh calls/s: {ratio:.2f}")
    finally:
        fresh.stop()
        used.stop()
        for daemon in (fresh, used):
            with contextlib.suppress(Exception):
                stop_local_agents(daemon.state_dir)


def median_run(results: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median calls/s."""
    ranked = sorted(results, key=lambda result: result["calls/s"])
    return ranked[len(ranked) // 2]


if __name__ == "__main__":
    main()

"""The local pool of the embedded default: schedule throughput, agent churn, memory.

``pd-dispatcher`` runs as a subprocess with nothing but ``PD_STATE_DIR`` set (a
fresh temporary directory per phase): SQLite, the embedded transport and the
``local`` provisioner starting ``pd-eeagent`` processes with their supervisord.

* **burst**: ``-n`` (500) ``/bin/true`` processes are scheduled by ``--clients``
  (4) threads, each with its own client; prints schedules/s, the latency of a
  ``schedule_process`` call (p50, p99, max), the time until every process ended,
  the peak need the dispatcher registered and the agents it started (both read
  from its log). Target: >= 100 schedules/s, p99 <= 1 s, agents started <= peak
  need + 2.
* **memory**: ``--sleepers`` (200) ``sleep 600`` processes are scheduled and
  waited for (``500-RUNNING``); prints the pool's agents and slots and the RSS
  (and PSS) of its agents, their supervisords and the processes. Target: the
  pool (agents + supervisords) well under 1 GB.

Usage::

    .venv/bin/python bench/local_pool.py                 # both phases
    .venv/bin/python bench/local_pool.py --phase burst -n 500 --clients 4
    .venv/bin/python bench/local_pool.py --phase memory --sleepers 200

Every agent is stopped at the end of a phase.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dispatcher.client import ProcessDispatcherClient
from pdcommon.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
FINAL = {"700-TERMINATED", "800-EXITED", "850-FAILED", "900-REJECTED"}
_NEED = re.compile(r"engine (\S+) needs (\d+) node")
_STARTED = re.compile(r"node (\S+): started agents \[([^\]]*)\]")


def wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


class Dispatcher:
    """``pd-dispatcher`` on the embedded default (only ``PD_STATE_DIR``), with its log."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
        self.environ["PD_STATE_DIR"] = str(state_dir)
        self.settings: Settings = load_settings(environ=self.environ)
        self.log_path = state_dir.parent / "dispatcher.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessDispatcherClient:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        script = Path(sys.executable).with_name("pd-dispatcher")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(script)], cwd=REPO, env=self.environ, stdout=log, stderr=subprocess.STDOUT
            )
        client = self.client()
        wait(lambda: _answers(client), 60, "the dispatcher", 0.2)
        return client

    def client(self) -> ProcessDispatcherClient:
        return ProcessDispatcherClient.from_settings(self.settings, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        from dispatcher.provisioner.sites import build_sites

        for site in build_sites(self.settings).values():
            for node in site.driver.list_nodes():
                site.driver.destroy_node(node.node_id, node.provider_id)
            site.driver.close()

    def pool_pids(self) -> tuple[list[int], list[int]]:
        """The pids of the running agents and of their supervisords."""
        agents: list[int] = []
        supervisords: list[int] = []
        for meta in (self.state_dir / "nodes").glob("*/node.json"):
            try:
                data = json.loads(meta.read_text())
            except (OSError, ValueError):
                continue
            for agent in data.get("agents", []):
                if Path(f"/proc/{agent['pid']}").exists():
                    agents.append(int(agent["pid"]))
        for pidfile in (self.state_dir / "nodes").glob("**/supd.pid"):
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if Path(f"/proc/{pid}").exists() and pid not in supervisords:
                supervisords.append(pid)
        return agents, supervisords


def _answers(client: ProcessDispatcherClient) -> bool:
    try:
        client.list_definitions()
    except Exception:
        return False
    return True


def _quietly(call: Callable[[], Any]) -> Any:
    """``call()``, or None when the dispatcher did not answer in time."""
    try:
        return call()
    except Exception:
        return None


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB (0 when it is gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _children(pids: list[int]) -> list[int]:
    found = []
    wanted = set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in wanted:
            found.append(int(entry.name))
    return found


def _pct(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(q * len(samples)))]


def burst(count: int, clients: int, keep_log: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="pd-bench-") as tmp:
        dispatcher = Dispatcher(Path(tmp) / "state")
        admin = dispatcher.start()
        try:
            admin.create_definition("true", "supd", {"exec": "/bin/true", "argv": []})
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()

            def client_loop(index: int) -> None:
                client = dispatcher.client()
                try:
                    for i in range(index, count, clients):
                        started = time.perf_counter()
                        try:
                            client.schedule_process(f"t{i}", "true", restart_mode="NEVER")
                        except Exception as exc:  # a timeout is a figure, not a crash
                            with lock:
                                errors.append(f"t{i}: {type(exc).__name__}: {exc}")
                            continue
                        with lock:
                            latencies.append(time.perf_counter() - started)
                finally:
                    client.close()

            threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began

            latencies.sort()
            print(
                f"burst: {len(latencies)} x /bin/true from {clients} clients in {elapsed:.1f} s: "
                f"{len(latencies) / elapsed:.1f} schedules/s; schedule_process p50 "
                f"{statistics.median(latencies) * 1000:.0f} ms, p99 "
                f"{_pct(latencies, 0.99) * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
                f"{len(errors)} errors",
                flush=True,
            )

            def all_final() -> bool:
                processes = _quietly(admin.describe_processes) or []
                done = [p for p in processes if str(p["state"]) in FINAL]
                return len(done) >= count - len(errors)

            wait(all_final, 600, "every process to end", 1.0)
            finished = time.perf_counter() - began
            text = dispatcher.log()
            needs = [int(m.group(2)) for m in _NEED.finditer(text)]
            started_agents = sum(
                len([a for a in m.group(2).split(",") if a.strip()])
                for m in _STARTED.finditer(text)
            )
            print(
                f"burst: every process ended after {finished:.1f} s; peak need "
                f"{max(needs, default=0)} node(s); agents started {started_agents}; "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            for error in errors[:5]:
                print(f"  error {error}")
        finally:
            admin.close()
            dispatcher.stop()
            if keep_log:
                Path(keep_log).write_text(dispatcher.log(), encoding="utf-8")


def memory(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="pd-bench-") as tmp:
        dispatcher = Dispatcher(Path(tmp) / "state")
        client = dispatcher.start()
        try:
            client.create_definition("sleeper", "supd", {"exec": "/bin/sleep", "argv": ["600"]})
            began = time.perf_counter()
            for i in range(count):
                client.schedule_process(f"s{i}", "sleeper", restart_mode="NEVER")

            def all_running() -> bool:
                processes = _quietly(client.describe_processes) or []
                return sum(str(p["state"]) == "500-RUNNING" for p in processes) >= count

            wait(all_running, 900, "every sleeper to run", 1.0)
            ready = time.perf_counter() - began
            agents, supervisords = dispatcher.pool_pids()
            programs = _children(supervisords)
            slots = sum(len(r.get("assigned") or []) for r in client.dump()["resources"].values())
            resources = client.dump()["resources"]
            slot_total = sum(int(r.get("slot_count") or 0) for r in resources.values())
            figures = {
                name: [_memory(pid) for pid in pids]
                for name, pids in (
                    ("agents", agents),
                    ("supervisords", supervisords),
                    ("processes", programs),
                )
            }

            def mb(values: list[tuple[int, int]], index: int) -> float:
                return sum(v[index] for v in values) / 1024

            pool_rss = mb(figures["agents"], 0) + mb(figures["supervisords"], 0)
            pool_pss = mb(figures["agents"], 1) + mb(figures["supervisords"], 1)
            print(
                f"memory: {count} x sleep 600 running after {ready:.1f} s on {len(agents)} agents "
                f"and {len(supervisords)} supervisords ({slot_total} slots, {slots} used)"
            )
            for name, values in figures.items():
                print(
                    f"memory: {name}: {len(values)}, RSS {mb(values, 0):.0f} MB, "
                    f"PSS {mb(values, 1):.0f} MB"
                )
            print(
                f"memory: pool (agents + supervisords): RSS {pool_rss:.0f} MB, PSS {pool_pss:.0f} MB"
            )
        finally:
            client.close()
            dispatcher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("burst", "memory", "both"), default="both")
    parser.add_argument("-n", type=int, default=500, help="/bin/true processes of the burst")
    parser.add_argument("--clients", type=int, default=4, help="clients of the burst")
    parser.add_argument("--sleepers", type=int, default=200, help="sleep 600 processes")
    parser.add_argument("--keep-log", metavar="FILE", help="copy the burst's dispatcher log there")
    args = parser.parse_args()
    if args.phase in ("burst", "both"):
        burst(args.n, args.clients, args.keep_log)
    if args.phase in ("memory", "both"):
        memory(args.sleepers)


if __name__ == "__main__":
    main()

"""A fake eeagent that speaks the real wire protocol over a real broker.

It behaves like the legacy test agent: ``launch_process`` records
the process as ``500-RUNNING`` and heartbeats at once; ``terminate_process`` marks
it ``700-TERMINATED``; ``restart_process`` sets the new round, RUNNING; ``cleanup``
forgets it. Tests can make it report ``850-FAILED`` or ``800-EXITED``. Every
heartbeat lists all the processes it holds, in the legacy message format.

With ``heartbeat_interval`` it also heartbeats periodically, as a real agent does,
so a dispatcher whose heartbeat monitor is on keeps it ``OK``.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.security import CommandGuard, MessageSigner, SignatureVerifier, StaticKeys
from dashi.service import RpcService


class FakeEEAgent:
    def __init__(
        self,
        broker: BrokerConfig,
        name: str,
        node_id: str,
        *,
        pd_name: str = "process_dispatcher",
        launch_state: str = "500-RUNNING",
        heartbeat_interval: float | None = None,
        key: bytes | None = None,
    ) -> None:
        """``key``: the agent's own key (``derive_key(master, prefixed name)``): it
        signs the heartbeats, and commands (and log reads) must be signed with it by
        the dispatcher (``None``: nothing is signed or checked)."""
        self.name = name
        self.node_id = node_id
        self.pd_name = pd_name
        self.launch_state = launch_state
        self.heartbeat_interval = heartbeat_interval
        self._stopping = threading.Event()
        self._beater: threading.Thread | None = None
        self.processes: dict[str, dict[str, Any]] = {}
        self.received: list[tuple[str, dict[str, Any]]] = []
        #: ``(upid, stream)`` → the output ``get_process_logs`` returns (tests set it).
        self.logs: dict[tuple[str, str], str] = {}
        #: ``get_process_logs`` replies only while this is set (tests clear it to hold a call).
        self.logs_gate = threading.Event()
        self.logs_gate.set()
        self.lock = threading.Lock()
        self.service = RpcService(broker, name)
        guard = None
        if key is not None:
            guard = CommandGuard(
                expected_sender=broker.prefixed(pd_name),
                destination=broker.prefixed(name),
                verifier=SignatureVerifier(StaticKeys(key), max_age=300),
            )
        for op in ("launch_process", "terminate_process", "restart_process", "cleanup"):
            self.service.handle(op, getattr(self, op), validate=False, guard=guard)
        self.service.handle("get_process_logs", self.get_process_logs, validate=False, guard=guard)
        signer = None if key is None else MessageSigner(StaticKeys(key))
        self.client = RpcClient(broker, name, signer=signer)

    def start(self) -> FakeEEAgent:
        self.service.start()
        self.heartbeat()
        if self.heartbeat_interval:
            self._stopping.clear()
            self._beater = threading.Thread(
                target=self._beat, name=f"fake-eeagent-{self.name}", daemon=True
            )
            self._beater.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._beater is not None:
            self._beater.join(10)
            self._beater = None
        self.service.stop()
        self.client.close()

    def _beat(self) -> None:
        assert self.heartbeat_interval
        while not self._stopping.wait(self.heartbeat_interval):
            self.heartbeat()

    # -- operations -------------------------------------------------------------------

    def launch_process(self, u_pid: str, round: int, run_type: str, parameters: Any) -> None:
        with self.lock:
            self.received.append(("launch_process", {"u_pid": u_pid, "round": round}))
            self.processes[u_pid] = {"round": int(round), "state": self.launch_state}
        self.heartbeat()

    def terminate_process(self, u_pid: str, round: int) -> None:
        with self.lock:
            self.received.append(("terminate_process", {"u_pid": u_pid, "round": round}))
            process = self.processes.get(u_pid)
            if process is not None and process["round"] == int(round):
                process["state"] = "700-TERMINATED"
        self.heartbeat()

    def restart_process(self, u_pid: str, round: int) -> None:
        with self.lock:
            self.received.append(("restart_process", {"u_pid": u_pid, "round": round}))
            if u_pid in self.processes:
                self.processes[u_pid] = {"round": int(round), "state": "500-RUNNING"}
        self.heartbeat()

    def cleanup(self, u_pid: str, round: int) -> None:
        with self.lock:
            self.received.append(("cleanup", {"u_pid": u_pid, "round": round}))
            process = self.processes.get(u_pid)
            if process is not None and process["round"] == int(round):
                del self.processes[u_pid]

    def get_process_logs(
        self, u_pid: str, round: int, stream: str = "stdout", tail_bytes: int = 65536
    ) -> str:
        with self.lock:
            self.received.append(("get_process_logs", {"u_pid": u_pid, "round": round}))
            text = self.logs.get((u_pid, stream))
        self.logs_gate.wait()
        if text is not None:
            return text[-tail_bytes:] if tail_bytes else ""
        return f"{stream} of {u_pid} round {round}\n"

    # -- test controls ----------------------------------------------------------------

    def set_state(self, upid: str, state: str, **report: Any) -> None:
        """Report ``upid`` in ``state``; ``report`` adds keys to its heartbeat entry
        (``msg``, or the additive ``exit_code``, ``signal``... of an ended round)."""
        with self.lock:
            self.processes[upid]["state"] = state
            self.processes[upid]["report"] = report
        self.heartbeat()

    def ops(self, op: str) -> list[dict[str, Any]]:
        with self.lock:
            return [args for name, args in self.received if name == op]

    def heartbeat(self) -> None:
        with self.lock:
            processes = [
                {
                    "upid": upid,
                    "round": str(p["round"]),
                    "state": [int(p["state"][:3]), p["state"][4:]],
                    "msg": "None",
                    **p.get("report", {}),
                }
                for upid, p in self.processes.items()
            ]
        message = {
            "eeagent_id": self.name,
            "node_id": self.node_id,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "processes": processes,
        }
        self.client.fire(self.pd_name, "heartbeat", message=message)

"""The agent on the wire: RPC operations, the monitor loop and heartbeats.

:class:`AgentService` serves the legacy operations on the queue named
``eeagent.name`` (one worker, so requests are handled in the order they arrive:
a terminate never overtakes its launch), polls the backend every
:data:`POLL_INTERVAL` seconds on a thread of its own, and fires heartbeats to
``pd.name`` (op ``heartbeat``, argument ``message``) from a third thread, so a slow
broker never delays monitoring. A heartbeat goes out as soon as the agent consumes
its queue (so a dispatcher that answers it reaches the agent), every
``eeagent.heartbeat`` seconds, and right after every state change (changes that
happen while one is being sent are coalesced into the next: each heartbeat carries
the full state).

``launch_process``, ``terminate_process``, ``restart_process`` and ``cleanup``
(and ``get_process_logs`` when the agent has a key) are accepted only from the
dispatcher (the ``sender`` header must be the sysname-prefixed ``pd.name``) and,
when a key is configured (the
agent's own ``security.agent_key``, or the master ``security.hmac_key`` it is
derived from), only with a valid signature made with this agent's key; one
:class:`~dashi.security.CommandGuard`, registered with those operations, checks
that before any handler runs. The nonces of accepted commands are kept in
``<home>/nonces.log`` (:mod:`eeagent.nonces`), so a replay is refused after a
restart too. A refused command changes nothing: a call gets a
``BadRequestError`` starting ``not authorized:``, a fire is dropped, and both are
logged. ``dump_state`` (and ``get_process_logs`` without a key) only read and
stay open to any sender. With a key,
heartbeats are signed with the agent's key too (a dispatcher with the master
takes no others, and takes them only about the agent that signed).

:func:`run_agent` builds the whole agent from :class:`~pdcommon.settings.Settings`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from dashi.broker import BrokerConfig
from dashi.client import RpcClient
from dashi.errors import AccessRefusedError
from dashi.security import (
    COMMAND_OPERATIONS,
    SIGNED_READ_OPERATIONS,
    CommandGuard,
    MessageSigner,
    SignatureVerifier,
)
from dashi.service import RpcService
from eeagent.agent import EEAgent
from eeagent.errors import StartCancelledError
from eeagent.logbudget import LogBudget
from eeagent.nonces import FileNonceJournal
from eeagent.persistence import AgentLock, StateStore
from eeagent.supdconf import STOP_WAIT_SECONDS
from eeagent.supervisor import SupervisorControl
from pdcommon.errors import DispatcherError
from pdcommon.settings import Settings
from pdcommon.wire import agent_signer, agent_verifier, broker_config

__all__ = [
    "POLL_INTERVAL",
    "AgentService",
    "Heartbeater",
    "Round",
    "agent_home",
    "ignored_keys",
    "run_agent",
]

log = logging.getLogger(__name__)

#: Seconds between two looks at supervisord (``getAllProcessInfo``: ~1.5 ms for 8
#: programs, so about 1.5 % of a core at this rate). Exits are seen this fast.
POLL_INTERVAL = 0.1
#: Seconds a heartbeat publish may keep trying to reach the broker.
HEARTBEAT_SEND_TIMEOUT = 5.0
#: Seconds each attempt to start consuming waits for the broker.
RPC_READY_TIMEOUT = 5.0
#: Environment variables supervisord (and so every process) does not inherit:
#: they carry the agent's own broker and database credentials.
PRIVATE_ENV_PREFIX = "PD_"
#: Legacy ``eeagent`` keys this agent accepts and ignores (legacy configuration
#: files required some of them; the launch types they configure are not supported).
LEGACY_IGNORED_KEYS = frozenset(
    {
        "poll_interval",
        "code_download",
        "launch_type.pyon_directory",
        "launch_type.container_args",
        "launch_type.persistence_directory",
    }
)


def _not_a_boolean(value: Any) -> Any:
    # JSON true/false would otherwise pass as round 1/0.
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


#: A process round on the wire: a non-negative integer (the dispatcher counts from 0).
Round = Annotated[int, BeforeValidator(_not_a_boolean), Field(ge=0)]


class Heartbeater:
    """Sends the agent's heartbeat periodically and on request, from its own thread.

    Args:
        build: returns the message to send.
        send: sends it; exceptions are logged and the next beat is tried as usual.
        interval: seconds between periodic beats (counted from the last beat).
    """

    def __init__(
        self,
        build: Callable[[], dict[str, Any]],
        send: Callable[[dict[str, Any]], None],
        interval: float,
    ) -> None:
        self.build = build
        self.send = send
        self.interval = interval
        self.sent = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Have a heartbeat sent as soon as possible (never blocks)."""
        self._wake.set()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called (and :meth:`stop` not yet)."""
        return self._thread is not None

    def start(self) -> None:
        """Start the thread; it sends the first heartbeat at once."""
        self._stop.clear()
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="eeagent-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, final: bool = True) -> None:
        """Stop the thread, after sending one last heartbeat if ``final``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(HEARTBEAT_SEND_TIMEOUT + 5)
            self._thread = None
        if final:
            self._beat()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            if self._stop.is_set():
                break
            self._wake.clear()
            self._beat()

    def _beat(self) -> None:
        try:
            self.send(self.build())
            self.sent += 1
        except DispatcherError as exc:
            log.warning("heartbeat not sent: %s", exc)
        except Exception:  # a bug must not stop the heartbeats
            log.exception("heartbeat failed")


class AgentService:
    """An :class:`EEAgent` served over dashi RPC, with its monitor and heartbeats.

    Args:
        agent: the agent (its ``on_change`` is wired to the heartbeater here).
        broker: where the broker is.
        pd_name: the dispatcher's service name (heartbeat destination).
        heartbeat: seconds between periodic heartbeats.
        poll_interval: seconds between two polls of the backend.
        leave_running: on :meth:`stop`, leave supervisord and its processes running.
        verifier: checks the signature of every command (``None``: no key is
            configured; only the sender is checked).
        signer: signs the heartbeats (``None``: they are not signed).
        on_refused: called (from the thread that waits for the broker) if the broker
            refuses the agent's login, virtual host or permissions; the agent stops
            trying and :attr:`refused` holds the error.
    """

    def __init__(
        self,
        agent: EEAgent,
        *,
        broker: BrokerConfig,
        pd_name: str,
        heartbeat: float,
        poll_interval: float = POLL_INTERVAL,
        leave_running: bool = False,
        verifier: SignatureVerifier | None = None,
        signer: MessageSigner | None = None,
        on_refused: Callable[[AccessRefusedError], None] | None = None,
    ) -> None:
        self.agent = agent
        self.on_refused = on_refused
        self.refused: AccessRefusedError | None = None
        self.broker = broker
        self.pd_name = pd_name
        self.poll_interval = poll_interval
        self.leave_running = leave_running
        self.client = RpcClient(broker, name=agent.name, signer=signer)
        self.heartbeater = Heartbeater(agent.heartbeat, self._send_heartbeat, heartbeat)
        agent.on_change = self.heartbeater.request
        self.rpc = RpcService(broker, agent.name, workers=1)
        self.guard = CommandGuard(
            expected_sender=broker.prefixed(pd_name),
            destination=broker.prefixed(agent.name),
            verifier=verifier,
        )
        self._register()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        self._rpc_starter: threading.Thread | None = None

    def _register(self) -> None:
        agent = self.agent

        def launch_process(u_pid: str, round: Round, run_type: str, parameters: Any = None) -> None:
            agent.launch_process(u_pid, round, run_type, parameters)

        def terminate_process(u_pid: str, round: Round) -> None:
            agent.terminate_process(u_pid, round)

        def restart_process(u_pid: str, round: Round) -> None:
            agent.restart_process(u_pid, round)

        def cleanup(u_pid: str, round: Round) -> None:
            agent.cleanup(u_pid, round)

        def dump_state(rpc: bool = False) -> dict[str, Any] | None:
            return agent.dump_state(rpc)

        def get_process_logs(
            u_pid: str, round: Round, stream: str = "stdout", tail_bytes: int = 65536
        ) -> str:
            return agent.get_process_logs(u_pid, round, stream, tail_bytes)

        for handler in (
            launch_process,
            terminate_process,
            restart_process,
            cleanup,
            dump_state,
            get_process_logs,
        ):
            op = handler.__name__
            guarded = op in COMMAND_OPERATIONS or (
                op in SIGNED_READ_OPERATIONS and self.guard.verifier is not None
            )
            guard = self.guard if guarded else None
            self.rpc.handle(op, handler, guard=guard)

    # -- lifecycle ----------------------------------------------------------------

    def start(self, *, wait_for_broker: bool = True) -> None:
        """Attach to the backend, then start monitoring, heartbeats and RPC service.

        Args:
            wait_for_broker: return only once the service consumes its queue;
                otherwise keep trying to reach the broker in the background.

        Raises:
            BackendStartError: supervisord could not be started.
        """
        self._stop.clear()
        self.agent.open()
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="eeagent-monitor", daemon=True
        )
        self._monitor.start()
        self._rpc_starter = threading.Thread(
            target=self._start_rpc, name="eeagent-rpc-start", daemon=True
        )
        self._rpc_starter.start()
        if wait_for_broker:
            self._rpc_starter.join()

    def stop(self) -> None:
        """Stop serving; stop or leave the processes (``leave_running``); send a last heartbeat."""
        self._stop.set()
        if self._rpc_starter is not None:
            self._rpc_starter.join()
        self.rpc.stop()
        if self._monitor is not None:
            self._monitor.join()
        self.agent.shutdown(leave_running=self.leave_running)
        self.heartbeater.stop(final=self.heartbeater.started)
        self.client.close()

    def _start_rpc(self) -> None:
        while not self._stop.is_set():
            try:
                self.rpc.start(ready_timeout=RPC_READY_TIMEOUT)
            except AccessRefusedError as exc:
                # Retrying cannot help: the broker's users or the configuration must change.
                self.refused = exc
                if self.on_refused is not None:
                    self.on_refused(exc)
                return
            except DispatcherError as exc:
                log.warning("%s; retrying", exc)
                continue
            log.info(
                "agent %s serving on %s (heartbeats to %s)",
                self.agent.name,
                self.broker.masked_uri,
                self.pd_name,
            )
            # Only now: a dispatcher answering the first heartbeat must find the queue.
            self.heartbeater.start()
            return

    def _monitor_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.agent.poll()
            except Exception:  # a bug must not stop monitoring
                log.exception("monitoring failed")

    def _send_heartbeat(self, message: dict[str, Any]) -> None:
        self.client.fire(self.pd_name, "heartbeat", timeout=HEARTBEAT_SEND_TIMEOUT, message=message)


def agent_home(settings: Settings) -> tuple[Path, Path]:
    """``(supd_directory, home)``: the configured or default directories of the agent.

    ``supd_directory`` defaults to ``<state_dir>/eeagent``; the agent's home (its
    supervisord, state file and process logs) is ``<supd_directory>/<eeagent.name>``.
    """
    supd_directory = settings.eeagent.launch_type.supd_directory or settings.state_dir / "eeagent"
    supd_directory = Path(supd_directory).expanduser().absolute()
    return supd_directory, supd_directory / settings.eeagent.name


def ignored_keys(settings: Settings) -> list[str]:
    """The ``eeagent.*`` configuration keys the agent does not use, sorted.

    Unknown keys are accepted, because legacy files carry keys of launch types this
    agent does not run. So that a misspelt key is not lost silently, :func:`run_agent`
    logs a warning for each of them (keys in :data:`LEGACY_IGNORED_KEYS` only at INFO).
    """
    eea = settings.eeagent
    keys = [f"eeagent.{key}" for key in eea.model_extra or {}]
    keys += [f"eeagent.launch_type.{key}" for key in eea.launch_type.model_extra or {}]
    return sorted(keys)


def run_agent(
    settings: Settings,
    environ: Mapping[str, str],
    stop: threading.Event,
    *,
    ready: Callable[[AgentService], None] | None = None,
) -> None:
    """Run the agent described by ``settings`` until ``stop`` is set.

    Args:
        settings: the whole configuration (``eeagent``, ``pd``, broker keys).
        environ: the agent's environment; supervisord and the processes get it
            without ``PD_*`` variables.
        stop: set it (e.g. from a signal handler) to shut down cleanly.
        ready: called once the agent runs.

    Raises:
        AgentLockedError: another agent runs in the same home directory.
        BackendStartError: supervisord could not be started.
        AccessRefusedError: the broker refused the agent's login, virtual host or
            permissions (the agent stops at once instead of retrying).
    """
    eea = settings.eeagent
    for key in ignored_keys(settings):
        if key.removeprefix("eeagent.") in LEGACY_IGNORED_KEYS:
            log.info("ignoring legacy configuration key %s (not used by this agent)", key)
        else:
            log.warning("ignoring unknown configuration key %s (misspelt?)", key)
    supd_directory, home = agent_home(settings)
    lock = AgentLock(home / "agent.lock")
    lock.acquire()
    try:
        control = SupervisorControl(
            home,
            supdexe=eea.launch_type.supdexe,
            environ={k: v for k, v in environ.items() if not k.startswith(PRIVATE_ENV_PREFIX)},
            # A stop during start-up (SIGTERM) does not wait for supervisord to answer.
            stopping=stop,
        )
        agent = EEAgent(
            name=eea.name,
            node_id=eea.node_id,
            slots=eea.slots,
            control=control,
            store=StateStore(home / "state.json"),
            default_directory=str(supd_directory),
            default_user=eea.default_user,
            stop_wait=STOP_WAIT_SECONDS,
            log_budget=LogBudget(
                max_bytes=eea.ended_logs_max_bytes, max_age=eea.ended_logs_max_age
            ),
        )
        service = AgentService(
            agent,
            broker=broker_config(settings),
            pd_name=settings.pd.name,
            heartbeat=eea.heartbeat,
            leave_running=eea.leave_running_on_shutdown,
            # Nonces of accepted commands live with the agent's state, so a command
            # captured on the wire is refused after a restart too.
            verifier=agent_verifier(settings, FileNonceJournal(home / "nonces.log")),
            signer=agent_signer(settings, eea.name),
            # The broker refused the agent: stop, and raise its error below.
            on_refused=lambda _exc: stop.set(),
        )
        if stop.is_set():
            log.info("agent %s stopped before it started", eea.name)
            return
        started = time.monotonic()
        try:
            service.start(wait_for_broker=False)
        except StartCancelledError:
            log.info("agent %s stopped while its supervisord was starting", eea.name)
            return
        log.info("agent %s started in %.2fs (home %s)", eea.name, time.monotonic() - started, home)
        if ready is not None:
            ready(service)
        try:
            stop.wait()
        finally:
            service.stop()
        if service.refused is not None:
            raise service.refused
    finally:
        lock.release()

"""The ``local`` driver: each node is ``replicas`` ``pd-eeagent`` processes on this machine.

Capabilities: create, destroy and list nodes; a restarted dispatcher adopts the
agents still running and forgets the nodes whose agents are all gone. This is the
embedded default: with the ``embedded://`` broker the agents share the
dispatcher's ``state_dir`` (the broker lives in ``<state_dir>/broker``).

Layout, under ``directory`` (default ``<state_dir>/nodes``)::

    <node_id>/node.json          owner, site, engine, created_at, agents (pid, identity)
    <node_id>/<agent>.yml        the agent's configuration (mode 0600: broker credentials)
    <node_id>/<agent>.log        the agent's stdout and stderr
    <node_id>/<agent>/           the agent's home (supervisord, state, process logs)

Each agent runs ``<agent_command> --config <agent>.yml --name <agent>`` in a
process group of its own, so it outlives a dispatcher restart and is stopped as a
whole. Its pid is in ``node.json`` before it runs: the driver first starts a
small gate (this interpreter, ``-I -S``) that waits on a pipe, records the gate's
pid (which the agent keeps), then tells the gate to ``exec`` the agent. A
dispatcher killed between the start and the record closes the pipe by dying,
and the gate exits without starting the agent; so every agent that runs is
listed, and a restarted dispatcher adopts it or stops it. Destroying a node sends SIGTERM to every agent (a clean agent shutdown
stops its processes and supervisord), SIGKILL to the groups still alive after
``stop_timeout`` seconds, and shuts down any supervisord left behind.

Configuration: ``provisioner: {driver: local}`` or a site ``{driver: local,
directory, agent_command, heartbeat, stop_timeout, boot_timeout, log_level}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from dashi.broker import BrokerConfig
from dispatcher.provisioner.agents import AgentTemplate
from dispatcher.provisioner.base import NodeRequest, ProvidedNode, SupervisordStopper
from dispatcher.provisioner.errors import (
    CloudRequestError,
    NodeNotFoundError,
    TransientCloudError,
)
from pdcommon import procfs
from pdcommon.settings import LocalSiteSettings

__all__ = ["LocalDriver"]

log = logging.getLogger(__name__)

#: The metadata file of a node (what a restarted dispatcher reads).
METADATA = "node.json"
#: Seconds between two looks at stopping agents.
_STOP_POLL = 0.05
#: Seconds an agent gets to show that it started (it must not exit at once).
_START_CHECK = 0.2
#: What the gate in front of every agent runs (see the module docstring): one
#: byte on stdin lets it become the agent; end of file (the dispatcher is gone
#: before recording its pid) ends it. The agent's stdin is /dev/null.
_GATE = (
    "import os, sys\n"
    "if os.read(0, 1) != b'+':\n"
    "    sys.exit(0)\n"
    "null = os.open(os.devnull, os.O_RDONLY)\n"
    "os.dup2(null, 0)\n"
    "os.close(null)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class LocalDriver:
    """Runs nodes as groups of local ``pd-eeagent`` processes; see the module docstring.

    Args:
        site: the site's settings.
        template: what every agent shares (broker URI, exchange, sysname, pd name).
        state_dir: the dispatcher's state directory (the agents' ``state_dir``).
        owner: the owner id written on every node (:func:`~.base.owner_id`).
        site_name: the site's name.
        clock: epoch seconds.
        stop_supervisord: shuts down the supervisord an agent left in its home
            directory (the agent package's ``stop_left_supervisord``, injected by
            the daemon's entry point); ``None``: such a supervisord is left running,
            with a warning.
    """

    kind = "local"
    provisions = True

    def __init__(
        self,
        site: LocalSiteSettings,
        *,
        template: AgentTemplate,
        state_dir: Path,
        owner: str,
        site_name: str = "default",
        clock: Callable[[], float] = time.time,
        stop_supervisord: SupervisordStopper | None = None,
    ) -> None:
        self.site = site
        self.stop_supervisord = stop_supervisord
        self.template = template
        self.state_dir = Path(state_dir).absolute()
        self.directory = Path(site.directory or self.state_dir / "nodes").absolute()
        self.owner = owner
        self.site_name = site_name
        self.clock = clock
        self.command = list(site.agent_command or [sys.executable, "-m", "cli.eeagent"])
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._boot_id = procfs.read_boot_id()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LocalDriver(site={self.site_name!r}, directory={str(self.directory)!r})"

    # -- Driver -------------------------------------------------------------------------

    def create_node(self, request: NodeRequest) -> ProvidedNode:
        """Start the node's agents (a leftover of an earlier attempt is stopped first).

        Raises:
            TransientCloudError: an agent could not be started, or exited at once.
            CloudRequestError: the agent command does not exist.
        """
        node_dir = self._node_dir(request.node_id)
        if (node_dir / METADATA).exists():
            log.info("node %s: stopping what an earlier attempt left", request.node_id)
            self._stop_node(node_dir)
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        heartbeat = self.site.heartbeat or request.heartbeat
        created_at = self.clock()
        metadata: dict[str, Any] = {
            "node_id": request.node_id,
            "engine_id": request.engine_id,
            "owner": self.owner,
            "site": self.site_name,
            "created_at": created_at,
            "slots": request.slots,
            "agents": [],
        }
        try:
            for name in request.agent_names:
                config = self.template.config(
                    agent_name=name,
                    state_dir=str(self.state_dir),
                    supd_directory=str(node_dir),
                    node_id=request.node_id,
                    slots=request.slots,
                    heartbeat=heartbeat,
                )
                child, agent = self._start_agent(node_dir, name, config)
                try:
                    metadata["agents"].append(agent)
                    self._write_metadata(node_dir, metadata)
                except BaseException:
                    _close_quietly(child)  # never let go: the gate exits
                    raise
                self._release_agent(child)
            self._check_started(node_dir, metadata)
        except (CloudRequestError, TransientCloudError):
            self._stop_node(node_dir)
            raise
        pids = [agent["pid"] for agent in metadata["agents"]]
        log.info("node %s: started agents %s (pids %s)", request.node_id, request.agent_names, pids)
        self._log_pool_size()
        return self._provided(metadata)

    def destroy_node(self, node_id: str, provider_id: str | None) -> None:
        """Stop the node's agents (SIGTERM, then SIGKILL) and remove its directory.

        Raises:
            NodeNotFoundError: this driver has no such node.
        """
        node_dir = self._node_dir(node_id)
        if not (node_dir / METADATA).exists():
            raise NodeNotFoundError(f"local node {node_id} not found")
        self._stop_node(node_dir)
        log.info("node %s: stopped", node_id)

    def list_nodes(self) -> list[ProvidedNode]:
        """The nodes of this owner and site with at least one agent alive.

        Nodes whose agents are all gone are forgotten (their directory is removed).
        """
        found = []
        if not self.directory.is_dir():
            return []
        for meta_path in sorted(self.directory.glob(f"*/{METADATA}")):
            metadata = _read_json(meta_path)
            if metadata is None:
                continue
            if metadata.get("owner") != self.owner or metadata.get("site") != self.site_name:
                continue
            if any(self._alive(agent) for agent in metadata.get("agents", [])):
                found.append(self._provided(metadata))
            else:
                log.info("node %s: no agent is alive; forgetting it", metadata.get("node_id"))
                self._stop_node(meta_path.parent)
        return found

    def pool_size(self) -> tuple[int, int, int]:
        """The agents of this owner and site that run, their slots, and the RSS in
        bytes of those agents and their supervisords (read from ``/proc``)."""
        agents = slots = rss = 0
        if not self.directory.is_dir():
            return 0, 0, 0
        for meta_path in self.directory.glob(f"*/{METADATA}"):
            metadata = _read_json(meta_path)
            if metadata is None or metadata.get("owner") != self.owner:
                continue
            if metadata.get("site") != self.site_name:
                continue
            for agent in metadata.get("agents", []):
                if not procfs.pid_alive(int(agent.get("pid") or 0)):
                    continue
                agents += 1
                slots += int(metadata.get("slots") or 0)
                rss += _rss(int(agent["pid"]))
                supd = _read_pid(meta_path.parent / str(agent.get("name", "")) / "supd.pid")
                if supd is not None:
                    rss += _rss(supd)
        return agents, slots, rss

    def _log_pool_size(self) -> None:
        agents, slots, rss = self.pool_size()
        log.info(
            "local pool of site %s: %d agent(s), %d slot(s), RSS %.0f MB (agents and supervisords)",
            self.site_name,
            agents,
            slots,
            rss / 2**20,
        )

    def close(self) -> None:
        """Forget the child handles; the agents keep running."""
        with self._lock:
            for child in self._children.values():
                child.poll()
            self._children.clear()

    # -- agents -------------------------------------------------------------------------

    def _start_agent(
        self, node_dir: Path, name: str, config: dict[str, Any]
    ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Start an agent's gate; its record for ``node.json``.

        The agent does not run until :meth:`_release_agent` (module docstring).
        """
        config_path = node_dir / f"{name}.yml"
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)
        argv = [
            *self.command,
            "--config",
            str(config_path),
            "--name",
            name,
            "--log-level",
            self.site.log_level,
        ]
        executable = shutil.which(argv[0])
        if executable is None:
            raise CloudRequestError(f"agent command not found: {argv[0]}")
        gate = [sys.executable, "-I", "-S", "-c", _GATE, executable, *argv[1:]]
        try:
            with open(node_dir / f"{name}.log", "ab") as output:
                child = subprocess.Popen(
                    gate,
                    stdin=subprocess.PIPE,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=node_dir,
                    start_new_session=True,
                    close_fds=True,
                )
        except FileNotFoundError as exc:
            raise CloudRequestError(f"agent command not found: {argv[0]}") from exc
        except OSError as exc:
            raise TransientCloudError(f"cannot start agent {name}: {exc.strerror}") from exc
        with self._lock:
            self._children[child.pid] = child
        return child, {
            "name": name,
            "pid": child.pid,
            "identity": procfs.identity(child.pid, self._boot_id),
        }

    def _release_agent(self, child: subprocess.Popen[bytes]) -> None:
        """Let a recorded agent's gate start the agent (a dead gate is left to
        :meth:`_check_started`)."""
        if child.stdin is None:
            return
        with contextlib.suppress(OSError):
            child.stdin.write(b"+")
        _close_quietly(child)

    def _check_started(self, node_dir: Path, metadata: dict[str, Any]) -> None:
        """Fail when an agent exited right away (bad command, bad configuration)."""
        deadline = time.monotonic() + _START_CHECK
        while True:
            for agent in metadata["agents"]:
                if not self._alive(agent):
                    tail = procfs.tail(node_dir / f"{agent['name']}.log", 400)
                    last = tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                    raise TransientCloudError(f"agent {agent['name']} exited at once: {last[0]}")
            if time.monotonic() >= deadline:
                return
            time.sleep(_STOP_POLL)

    def _alive(self, agent: dict[str, Any]) -> bool:
        """Whether the agent's process still runs (and is the one we started)."""
        pid = int(agent.get("pid") or 0)
        if pid <= 0:
            return False
        with self._lock:
            child = self._children.get(pid)
        if child is not None:
            if child.poll() is not None:
                with self._lock:
                    self._children.pop(pid, None)
                return False
            return True
        if not procfs.pid_alive(pid):
            return False
        expected = agent.get("identity")
        return expected is None or procfs.identity(pid, self._boot_id) == expected

    def _stop_node(self, node_dir: Path) -> None:
        """Stop every agent of a node, clean up after them, and remove the directory."""
        metadata = _read_json(node_dir / METADATA) or {"agents": []}
        agents = [agent for agent in metadata.get("agents", []) if self._alive(agent)]
        for agent in agents:
            _signal_group(int(agent["pid"]), signal.SIGTERM)
        deadline = time.monotonic() + self.site.stop_timeout
        while any(self._alive(agent) for agent in agents) and time.monotonic() < deadline:
            time.sleep(_STOP_POLL)
        for agent in agents:
            if self._alive(agent):
                log.warning("agent %s did not stop in time; killing it", agent["name"])
                _signal_group(int(agent["pid"]), signal.SIGKILL)
        for agent in agents:
            self._reap(int(agent["pid"]))
        for agent in metadata.get("agents", []):
            self._stop_leftover_supervisord(node_dir / str(agent.get("name", "")))
        self._delete_queues([str(agent.get("name")) for agent in metadata.get("agents", [])])
        shutil.rmtree(node_dir, ignore_errors=True)

    def _stop_leftover_supervisord(self, home: Path) -> None:
        """Shut down a supervisord an agent left (it runs in a session of its own)."""
        if not (home / "supd.pid").exists():
            return
        if self.stop_supervisord is None:
            log.warning("a supervisord may be left running in %s (no way to stop it given)", home)
            return
        try:
            self.stop_supervisord(home)
        except Exception as exc:  # best effort: the node is going away
            log.warning("could not stop the supervisord left in %s: %s", home, exc)

    def _delete_queues(self, names: list[str]) -> None:
        """Delete stopped agents' queues (bindings, unread messages) on the embedded broker.

        A broker expires them by itself (``x-expires``); on the embedded one they
        would wait for a sweep.
        """
        broker = BrokerConfig(
            uri=self.template.amqp_uri,
            exchange=self.template.exchange,
            sysname=self.template.sysname,
            state_dir=self.state_dir,
        )
        if not broker.is_embedded or not names:
            return
        connection = broker.connection()
        try:
            with connection:
                channel = connection.default_channel
                for name in names:
                    channel.queue_delete(broker.prefixed(name))
        except (OSError, *connection.channel_errors) as exc:
            log.warning("could not delete the queues of agents %s: %s", names, exc)

    def _reap(self, pid: int) -> None:
        with self._lock:
            child = self._children.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)

    # -- metadata -----------------------------------------------------------------------

    def _node_dir(self, node_id: str) -> Path:
        if not node_id or "/" in node_id or node_id.startswith("."):
            raise CloudRequestError(f"invalid node id {node_id!r}")
        return self.directory / node_id

    @staticmethod
    def _write_metadata(node_dir: Path, metadata: dict[str, Any]) -> None:
        temporary = node_dir / f".{METADATA}.tmp"
        temporary.write_text(json.dumps(metadata, indent=1), encoding="utf-8")
        temporary.replace(node_dir / METADATA)

    def _provided(self, metadata: dict[str, Any]) -> ProvidedNode:
        agents = metadata.get("agents", [])
        return ProvidedNode(
            node_id=metadata["node_id"],
            provider_id=metadata["node_id"],
            engine_id=metadata.get("engine_id"),
            site=metadata.get("site"),
            properties={
                "hostname": socket.gethostname(),
                "pids": [agent["pid"] for agent in agents],
                "directory": str(self._node_dir(metadata["node_id"])),
            },
            created_at=metadata.get("created_at"),
        )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if procfs.pid_alive(pid) else None


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 when it is gone)."""
    try:
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident * os.sysconf("SC_PAGE_SIZE")


def _close_quietly(child: subprocess.Popen[bytes]) -> None:
    """Close the pipe to an agent's gate (it may have exited already)."""
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group the agent leads (it was started in a session of its own)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    except PermissionError:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)

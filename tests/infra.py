"""Private RabbitMQ and PostgreSQL servers for the test session.

Each server runs as a child of the test process, on free 127.0.0.1 ports, with all of
its state in a private temporary directory; nothing touches the system services or
their data. :meth:`stop` / :meth:`restart` keep the port and data directory, so
clients can reconnect after a restart; :meth:`close` stops the server and deletes its
directory. Every server is also closed at interpreter exit (``atexit``); on Linux its
main process is started through ``setpriv --pdeathsig`` so that even a test run killed
with SIGKILL does not leave brokers or databases behind (their temporary directories
are removed by the next run).

Binaries are looked up in the Debian locations (``/usr/lib/rabbitmq/bin``,
``/usr/lib/postgresql/<version>/bin``) unless ``PD_TEST_RABBITMQ_BIN`` or
``PD_TEST_PG_BIN`` name another directory. ``missing_reason()`` says why a server
cannot be run here (``None`` when it can).
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PostgresServer",
    "RabbitMQServer",
    "ServerStartError",
    "free_port",
    "supervisord_path",
]

LOG_TAIL_LINES = 60
MIN_PORT = 20000
OWNER_FILE = "owner.pid"


class ServerStartError(RuntimeError):
    """A private server did not start; the message includes the tail of its logs."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now.

    Chosen below the kernel's ephemeral range when possible, so that no outgoing
    connection can take it while a server is down for a restart.
    """
    low = _ephemeral_port_low()
    if low > MIN_PORT + 1000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(MIN_PORT, low)
            if _bindable(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_port_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    if path is None or not path.exists():
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:  # pragma: no cover - diagnostics only
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _logs_excerpt(paths: list[Path]) -> str:
    parts = []
    for path in paths:
        tail = _tail(path)
        if tail:
            parts.append(f"--- last lines of {path} ---\n{tail}")
    return "\n".join(parts) if parts else "(no log output)"


def _die_with_us(sig: signal.Signals, argv: list[str]) -> list[str]:
    """``argv`` prefixed so the process gets ``sig`` when the test process dies.

    Uses util-linux ``setpriv --pdeathsig`` (Linux). The kernel sends the signal when
    the *thread* that spawned the child exits, so this is only done from the main
    thread; servers started from other threads rely on ``atexit`` alone.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return argv
    return [setpriv, f"--pdeathsig={sig.name.removeprefix('SIG')}", "--", *argv]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _wait_proc(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment minus anything that would redirect the servers."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RABBITMQ_", "ERL_", "PG")) and key not in {"HOME", "NOTIFY_SOCKET"}
    }
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LANG"] = env["LC_ALL"] = "C.UTF-8"
    env.update(extra)
    return env


class _Registry:
    """Servers to close at interpreter exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: list[Any] = []
        atexit.register(self.close_all)

    def add(self, server: Any) -> None:
        with self._lock:
            if server not in self._servers:
                self._servers.append(server)

    def discard(self, server: Any) -> None:
        with self._lock:
            if server in self._servers:
                self._servers.remove(server)

    def close_all(self) -> None:
        with self._lock:
            servers = list(reversed(self._servers))
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()


_REGISTRY = _Registry()


def supervisord_path() -> str | None:
    """The ``supervisord`` next to the running interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / "supervisord"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("supervisord")


# --------------------------------------------------------------------------- RabbitMQ


def _find_rabbitmq_bin() -> Path | None:
    override = os.environ.get("PD_TEST_RABBITMQ_BIN")
    if override:
        candidates = [override]
    else:
        bundled = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin")
        candidates = ["/usr/lib/rabbitmq/bin", *sorted(bundled, reverse=True)]
    for candidate in candidates:
        path = Path(candidate)
        if (path / "rabbitmq-server").is_file() and os.access(path / "rabbitmq-server", os.X_OK):
            return path
    return None


def _find_epmd() -> str | None:
    found = shutil.which("epmd")
    if found:
        return found
    matches = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"), reverse=True)
    return matches[0] if matches else None


class RabbitMQServer:
    """A private RabbitMQ node (no plugins, guest/guest, 127.0.0.1 only).

    The node runs with its own Erlang port mapper (``epmd``) on a private port, a
    random node name and its own cookie, so it never clashes with a system broker
    or with another test session on the same machine.
    """

    def __init__(
        self,
        *,
        bin_dir: Path | str | None = None,
        start_timeout: float = 90.0,
        extra_config: Sequence[str] = (),
    ) -> None:
        """``extra_config``: more ``rabbitmq.conf`` lines (e.g. a TLS listener)."""
        self.extra_config = list(extra_config)
        found = Path(bin_dir) if bin_dir is not None else _find_rabbitmq_bin()
        if found is None:
            raise FileNotFoundError(self.missing_reason() or "rabbitmq-server not found")
        self.bin_dir = found
        self.start_timeout = start_timeout
        self.base_dir: Path | None = None
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.nodename = f"pdtest{secrets.token_hex(4)}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self.last_start_seconds: float | None = None

    # -- discovery

    @staticmethod
    def missing_reason() -> str | None:
        """Why a private broker cannot be started here, or ``None``."""
        if _find_rabbitmq_bin() is None:
            return (
                "RabbitMQ is not installed (no /usr/lib/rabbitmq/bin/rabbitmq-server; "
                "install the Debian package rabbitmq-server or set PD_TEST_RABBITMQ_BIN)"
            )
        if _find_epmd() is None:
            return "Erlang's epmd was not found (install the Debian package erlang-base)"
        return None

    # -- public API

    @property
    def uri(self) -> str:
        if not self.port:
            raise RuntimeError("the broker was never started")
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker (on first start: pick ports, create the data dir)."""
        if self.running:
            return
        if self.base_dir is None:
            self._prepare()
        self._start_epmd()
        assert self.base_dir is not None
        began = time.monotonic()
        self._console = open(self.base_dir / "log" / "console.log", "ab")  # noqa: SIM115
        self._proc = subprocess.Popen(
            _die_with_us(signal.SIGTERM, [str(self.bin_dir / "rabbitmq-server")]),
            env=self._env(),
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _REGISTRY.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.last_start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (graceful, then SIGKILL); keeps ports, node name and data."""
        proc, self._proc = self._proc, None
        if proc is not None:
            beam_pid = self._beam_pid()
            if proc.poll() is None:
                # The wrapper script forwards SIGTERM to the VM and waits for it.
                _signal_pid(proc.pid, signal.SIGTERM)
                if not _wait_proc(proc, timeout):
                    _signal_group(proc.pid, signal.SIGKILL)
                    _wait_proc(proc, 10)
            # Anything left in the group (the VM, erl_child_setup, inet_gethost).
            if _group_alive(proc.pid):
                if beam_pid is not None:
                    _signal_pid(beam_pid, signal.SIGTERM)
                if not _wait_until(lambda: not _group_alive(proc.pid), 10):
                    _signal_group(proc.pid, signal.SIGKILL)
                    _wait_until(lambda: not _group_alive(proc.pid), 10)
            if beam_pid is not None and _pid_alive(beam_pid):
                _signal_pid(beam_pid, signal.SIGKILL)
        if self._console is not None:
            self._console.close()
            self._console = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and its epmd and delete all of its files."""
        self.stop()
        epmd, self._epmd = self._epmd, None
        if epmd is not None and epmd.poll() is None:
            epmd.terminate()
            if not _wait_proc(epmd, 5):
                epmd.kill()
                epmd.wait()
        _REGISTRY.discard(self)
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def ctl(self, tool: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a CLI tool (``rabbitmqctl``, ``rabbitmq-diagnostics``...) against this node."""
        cli_port = str(free_port())
        env = self._env(
            RABBITMQ_CTL_DIST_PORT_MIN=cli_port,
            RABBITMQ_CTL_DIST_PORT_MAX=cli_port,
        )
        return subprocess.run(
            [str(self.bin_dir / tool), "-q", "-n", self.nodename, *args],
            env=env,
            cwd=self.base_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def set_max_message_size(self, size: int) -> None:
        """Set the running node's ``max_message_size`` (bytes; RabbitMQ's default is 128 MiB).

        Channels opened afterwards enforce it (a larger publish closes the channel
        with 406 PRECONDITION_FAILED); a restart goes back to the default.
        """
        done = self.ctl(
            "rabbitmqctl", "eval", f"application:set_env(rabbit, max_message_size, {int(size)})."
        )
        if done.returncode != 0:
            raise RuntimeError(f"could not set max_message_size: {done.stderr or done.stdout}")

    def logs(self) -> str:
        return _logs_excerpt(self._log_files())

    # -- internals

    def _prepare(self) -> None:
        base = _private_dir("pdtest-rabbitmq-")
        self.base_dir = base
        for sub in ("mnesia", "log", "home"):
            (base / sub).mkdir()
        cookie = base / "home" / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(stat.S_IRUSR)
        (base / "enabled_plugins").write_text("[].\n")
        (base / "rabbitmq-env.conf").write_text("")
        (base / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    "loopback_users.guest = true",
                    "disk_free_limit.absolute = 1MB",
                    "vm_memory_high_watermark.relative = 0.9",
                    "log.console = false",
                    "log.file.level = info",
                    *self.extra_config,
                    "",
                ]
            )
        )
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()

    def _env(self, **extra: str) -> dict[str, str]:
        base = self.base_dir
        assert base is not None
        return _clean_env(
            {
                "HOME": str(base / "home"),
                "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(base / "log"),
                "RABBITMQ_LOGS": str(base / "log" / "rabbit.log"),
                "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
                "RABBITMQ_NODENAME": self.nodename,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                # Erlang distribution on loopback only.
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_CRASH_DUMP_SECONDS": "0",  # no crash dump, just exit
                **extra,
            }
        )

    def _start_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        epmd = _find_epmd()
        if epmd is None:
            raise ServerStartError("epmd not found")
        assert self.base_dir is not None
        log = open(self.base_dir / "log" / "epmd.log", "ab")  # noqa: SIM115
        with log:
            self._epmd = subprocess.Popen(
                _die_with_us(
                    signal.SIGKILL, [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"]
                ),
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _REGISTRY.add(self)
        if not _wait_until(lambda: _port_open(self.epmd_port) or self._epmd.poll() is not None, 10):
            raise ServerStartError(f"epmd did not listen on {self.epmd_port}\n{self.logs()}")
        if self._epmd.poll() is not None:
            raise ServerStartError(f"epmd exited with {self._epmd.returncode}\n{self.logs()}")

    def _beam_pid(self) -> int | None:
        if self.base_dir is None:
            return None
        try:
            return int((self.base_dir / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _log_files(self) -> list[Path]:
        if self.base_dir is None:
            return []
        log_dir = self.base_dir / "log"
        return [log_dir / "console.log", log_dir / "rabbit.log", log_dir / "epmd.log"]

    def _wait_ready(self) -> None:
        from kombu import Connection  # kombu is a project dependency

        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"rabbitmq-server exited with status {proc.returncode} during start\n"
                    f"{self.logs()}"
                )
            if _port_open(self.port, timeout=0.5):
                conn = Connection(self.uri, connect_timeout=5)
                try:
                    conn.connect()
                    return
                except Exception as exc:  # not ready yet
                    last_error = exc
                finally:
                    conn.release()
            time.sleep(0.1)
        raise ServerStartError(
            f"rabbitmq-server did not accept AMQP connections on 127.0.0.1:{self.port} "
            f"within {self.start_timeout:.0f}s (last error: {last_error!r})\n{self.logs()}"
        )


# --------------------------------------------------------------------------- PostgreSQL


def _pg_version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/", path)
    return tuple(int(part) for part in match.group(1).split(".")) if match else (0,)


def _find_pg_bin() -> Path | None:
    override = os.environ.get("PD_TEST_PG_BIN")
    if override:
        path = Path(override)
        return path if (path / "initdb").is_file() and (path / "postgres").is_file() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_pg_version_key, reverse=True)
    for initdb in found:
        path = Path(initdb).parent
        if (path / "postgres").is_file():
            return path
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path and shutil.which("postgres"):
        return Path(initdb_on_path).parent
    return None


class PostgresServer:
    """A private PostgreSQL cluster (trust auth, superuser ``postgres``, 127.0.0.1 only).

    When the tests run as root, the cluster is initialised and run as the ``postgres``
    OS user (PostgreSQL refuses to run as root); otherwise as the current user.
    """

    superuser = "postgres"

    def __init__(self, *, bin_dir: Path | str | None = None, start_timeout: float = 60.0) -> None:
        found = Path(bin_dir) if bin_dir is not None else _find_pg_bin()
        if found is None:
            raise FileNotFoundError(self.missing_reason() or "PostgreSQL not found")
        self.bin_dir = found
        self.start_timeout = start_timeout
        self.base_dir: Path | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.last_start_seconds: float | None = None
        self.initdb_seconds: float | None = None

    # -- discovery

    @staticmethod
    def missing_reason() -> str | None:
        """Why a private PostgreSQL cannot be started here, or ``None``."""
        if _find_pg_bin() is None:
            return (
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; "
                "install the Debian package postgresql or set PD_TEST_PG_BIN)"
            )
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root but there is no 'postgres' OS user to run PostgreSQL as"
        return None

    # -- public API

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq connection string (for psycopg)."""
        if not self.port:
            raise RuntimeError("the server was never started")
        return f"host=127.0.0.1 port={self.port} user={self.superuser} dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        """A SQLAlchemy URL using the psycopg (3) driver."""
        if not self.port:
            raise RuntimeError("the server was never started")
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server (on first start: pick a port and run initdb)."""
        if self.running:
            return
        if self.base_dir is None:
            self._prepare()
        base = self.base_dir
        assert base is not None
        began = time.monotonic()
        self._log = open(base / "postgres.log", "ab")  # noqa: SIM115
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(base / "sock"),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(base / "data")]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self._proc = subprocess.Popen(
            _die_with_us(signal.SIGQUIT, argv),
            env=_clean_env({"HOME": str(base)}),
            cwd=base,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._run_as(),
        )
        _REGISTRY.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.last_start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL; keeps data."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0)):
                if proc.poll() is not None:
                    break
                _signal_pid(proc.pid, sig)
                _wait_proc(proc, wait)
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            # Backends exit on their own once the postmaster is gone; make sure.
            if not _wait_until(lambda: not _group_alive(proc.pid), 5):
                _signal_group(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        _REGISTRY.discard(self)
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    def connect(self, dbname: str = "postgres", **kwargs: Any) -> Any:
        """A psycopg connection (autocommit by default)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(self.dsn(dbname), **kwargs)

    def create_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def logs(self) -> str:
        if self.base_dir is None:
            return "(no log output)"
        server_log = self.base_dir / "postgres.log"
        if server_log.exists():
            return _logs_excerpt([server_log])
        return _logs_excerpt([self.base_dir / "initdb.log"])

    # -- internals

    @staticmethod
    def _run_as() -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def _prepare(self) -> None:
        base = _private_dir("pdtest-postgres-")
        self.base_dir = base
        (base / "sock").mkdir()
        run_as = self._run_as()
        if run_as:
            owner = pwd.getpwnam("postgres")
            for path in (base, base / "sock"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.port = free_port()
        began = time.monotonic()
        with open(base / "initdb.log", "wb") as log:
            result = subprocess.run(
                [
                    str(self.bin_dir / "initdb"),
                    f"--pgdata={base / 'data'}",
                    f"--username={self.superuser}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                env=_clean_env({"HOME": str(base)}),
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
                **run_as,
            )
        self.initdb_seconds = time.monotonic() - began
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed with status {result.returncode}\n{self.logs()}")

    def _wait_ready(self) -> None:
        import psycopg

        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(
                    f"postgres exited with status {proc.returncode} during start\n{self.logs()}"
                )
            if _port_open(self.port, timeout=0.5):
                try:
                    with self.connect(connect_timeout=5) as conn:
                        conn.execute("SELECT 1")
                    return
                except psycopg.Error as exc:  # e.g. "the database system is starting up"
                    last_error = exc
            time.sleep(0.05)
        raise ServerStartError(
            f"postgres did not accept connections on 127.0.0.1:{self.port} within "
            f"{self.start_timeout:.0f}s (last error: {last_error!r})\n{self.logs()}"
        )


def _private_dir(prefix: str) -> Path:
    """A new temp dir (``<prefix>*``) recording its owner's PID.

    Directories of the same kind left behind by a test process that no longer exists
    (killed before its atexit handlers ran) are removed first. As root, the dir is
    placed where another user (``postgres``) can traverse its ancestors.
    """
    parent = Path(tempfile.gettempdir())
    if os.geteuid() == 0 and not _world_traversable(parent):
        parent = Path("/tmp")
    _remove_stale_dirs(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (path / OWNER_FILE).write_text(f"{os.getpid()}\n")
    return path


def _remove_stale_dirs(parent: Path, prefix: str) -> None:
    for path in parent.glob(f"{prefix}*"):
        try:
            owner = int((path / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)


def _world_traversable(path: Path) -> bool:
    for part in [path, *path.parents]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    return True

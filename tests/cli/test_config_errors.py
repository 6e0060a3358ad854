"""Common configuration mistakes, made with the real console scripts: each one is a
single ``Error:`` line naming the cause (never a traceback, never a password) and
the documented exit status.

* ``pd-dispatcher`` and ``pd-eeagent``: 2 for a usage or configuration error, 1 when
  they cannot start (the broker or the database unreachable or refusing access);
* ``pd-cli``: 2 for a usage or configuration error, 3 when the broker is
  unreachable or refuses the login.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ensure_running
from tests.infra import PostgresServer, RabbitMQServer

BIN = Path(sys.executable).parent
PD_DISPATCHER = str(BIN / "pd-dispatcher")
PD_EEAGENT = str(BIN / "pd-eeagent")
PD_CLI = str(BIN / "pd-cli")
#: A generous bound for a command that must fail at once (it is not a speed target).
RUN_TIMEOUT = 120

#: Each command, as an operator starts it (pd-cli with a command that needs the broker).
COMMANDS = {
    "pd-dispatcher": [PD_DISPATCHER],
    "pd-eeagent": [PD_EEAGENT],
    "pd-cli": [PD_CLI, "--timeout", "2", "process", "list"],
}
#: Exit status of each command when the broker refuses it (documented in --help).
REFUSED_STATUS = {"pd-dispatcher": 1, "pd-eeagent": 1, "pd-cli": 3}
#: What starts each command's error line after "Error: " (pd-cli names the command run).
ERROR_PREFIX = {"pd-dispatcher": "", "pd-eeagent": "", "pd-cli": "pd-cli process list: "}


def run(
    command: str, config: dict[str, object] | None, tmp_path: Path, **env: str
) -> tuple[int, str]:
    """Run ``command`` with ``config`` (if any) and a clean ``PD_*`` environment."""
    argv = list(COMMANDS[command])
    if config is not None:
        path = tmp_path / f"{command}-{uuid.uuid4().hex[:6]}.yml"
        path.write_text(yaml.safe_dump(config))
        argv[1:1] = ["--config", str(path)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PD_")}
    environ.update(env)
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
        cwd=tmp_path,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: an agent then stops the supervisord it started.
            proc.terminate()
            output, _ = proc.communicate(timeout=60)
            pytest.fail(f"{command} did not exit within {RUN_TIMEOUT}s:\n{output}")
    return proc.returncode, output


def error_line(output: str) -> str:
    """The command's last line, after checking that nothing went wrong in between."""
    assert "Traceback" not in output, output
    lines = output.strip().splitlines()
    assert lines, "the command printed nothing"
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], output
    return lines[-1]


# -- state_dir ---------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_state_dir_that_is_a_file_is_one_line_with_status_2(command, tmp_path):
    # Given a state_dir that names a regular file
    state = tmp_path / "state"
    state.write_text("not a directory\n")
    # When the command starts / Then it says so in one line and exits 2
    status, output = run(command, {"state_dir": str(state)}, tmp_path)
    assert error_line(output) == f"Error: configuration key state_dir: {state} is not a directory"
    assert status == 2
    assert state.read_text() == "not a directory\n"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_state_dir_under_a_file_names_the_file_with_status_2(command, tmp_path):
    # Given PD_STATE_DIR below a regular file
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = blocker / "sub" / "state"
    # When the command starts / Then the line names the file in the way
    status, output = run(command, None, tmp_path, PD_STATE_DIR=str(state))
    assert error_line(output) == (
        f"Error: configuration key state_dir: {state} cannot be created: "
        f"{blocker} is not a directory"
    )
    assert status == 2


def test_a_state_dir_that_cannot_be_created_is_one_line_with_status_2(tmp_path):
    # Given a state_dir where even root may not create a directory (sysfs)
    state = Path("/sys") / f"pd-test-{uuid.uuid4().hex[:8]}"
    # When the daemon starts / Then the line names the path and the reason
    status, output = run("pd-dispatcher", {"state_dir": str(state)}, tmp_path)
    line = error_line(output)
    assert line.startswith(f"Error: configuration key state_dir: {state} cannot be created: ")
    assert status == 2
    assert not state.exists()


def test_a_sqlite_database_under_a_file_is_one_line_with_status_2(tmp_path):
    # Given a database URL whose directory is a regular file
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = {
        "state_dir": str(tmp_path / "state"),
        "processdispatcher": {"database_url": f"sqlite:///{blocker}/pd.db"},
    }
    # When the daemon starts / Then one line names the database and the reason
    status, output = run("pd-dispatcher", config, tmp_path)
    line = error_line(output)
    assert (
        line
        == f"Error: cannot use database sqlite:///{blocker}/pd.db: {blocker} is not a directory"
    )
    assert status == 2


# -- unknown keys ------------------------------------------------------------------


#: Misspelt keys, the daemon that reads their section, and the valid key it suggests.
MISSPELT = [
    ("pd-dispatcher", "processdispatcher.dispatch_retry_secnds", 5, "dispatch_retry_seconds"),
    ("pd-dispatcher", "processdispatcher.databse_url", "postgresql://pd:Secret-1@db/pd", None),
    ("pd-dispatcher", "processdispatcher.engines.default.heartbeat_warnng", 50, None),
    ("pd-dispatcher", "provisioner.intervall", 5, None),
    ("pd-dispatcher", "provisoner", {}, "provisioner"),
    ("pd-eeagent", "provisoner", {}, "provisioner"),
    ("pd-dispatcher", "server.amqp.hearbeat", 10, None),
    ("pd-eeagent", "server.amqp.hearbeat", 10, None),
    ("pd-eeagent", "eeagent.slotz", 3, "slots"),
]


def _nearest(key: str, suggestion: str | None) -> str:
    """The valid key suggested for ``key``: ``suggestion`` in its section, or the key
    with its last part's typo undone (``databse_url`` -> ``database_url``)."""
    *section, leaf = key.split(".")
    fixed = (
        suggestion
        or {
            "databse_url": "database_url",
            "heartbeat_warnng": "heartbeat_warning",
            "intervall": "interval",
            "hearbeat": "heartbeat",
        }[leaf]
    )
    return ".".join([*section, fixed])


@pytest.mark.parametrize(
    ("command", "key", "value", "suggestion"),
    MISSPELT,
    ids=[f"{command}-{key}" for command, key, _, _ in MISSPELT],
)
def test_a_misspelt_key_is_refused_naming_the_nearest_valid_key(
    tmp_path, command, key, value, suggestion
):
    # Given a configuration with one misspelt key (legacy keys around it)
    state = tmp_path / "state"
    config: dict[str, object] = {
        "state_dir": str(state),
        "processdispatcher": {"engines": {"default": {"slots": 2}}, "static_resources": True},
        "eeagent": {"poll_interval": 2},
    }
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[leaf] = value
    # When the daemon starts / Then one line names the key and the nearest valid
    # one, with status 2, before anything is created (and never with the value)
    status, output = run(command, config, tmp_path)
    assert error_line(output) == (
        f"Error: configuration key {key}: unknown key; did you mean {_nearest(key, suggestion)}?"
    )
    assert status == 2
    assert not state.exists()
    assert "Secret-1" not in output


#: Keys of legacy configuration files that both daemons accept (and ignore).
LEGACY_KEYS = {
    "monitor_resource_heartbeats": True,
    "loggers": {"eeagent": {"handlers": ["console"], "level": "INFO"}},
    "logging_config_files": [],
    "system": {"name": "pd"},
    "server": {"zookeeper": {"enabled": False}, "memory": {"name": "x"}},
    "processdispatcher": {
        "engines": {"default": {"slots": 2}},
        "default_engine": "default",
        "process_engines": {},
        "restart_throttling_config": {"minimum_time_between_starts": 2},
        "dispatch_retry_seconds": 30,
        "launch_type": "supd",
        "static_resources": True,
        "definition_id": "pd_definition",
        "domain_config": {"engine_conf": None},
        "epum_service_name": "epu_management_service",
    },
    "eeagent": {
        "poll_interval": 2,
        "code_download": {"enabled": False},
        "launch_type": {
            "name": "supd",
            "pyon_directory": "/opt/pyon",
            "container_args": "--noshell",
            "persistence_directory": "/tmp/p",
        },
    },
}


@pytest.mark.parametrize("command", ["pd-dispatcher", "pd-eeagent"])
def test_legacy_keys_are_accepted(tmp_path, command):
    # Given a legacy configuration, and a state_dir that is a file (so the daemon
    # stops at the next check, after the keys)
    state = tmp_path / "state"
    state.write_text("")
    config = {**LEGACY_KEYS, "state_dir": str(state)}
    # When the daemon starts / Then the keys pass: the error is the state_dir's
    status, output = run(command, config, tmp_path)
    assert error_line(output) == f"Error: configuration key state_dir: {state} is not a directory"
    assert status == 2


# -- broker ------------------------------------------------------------------------


class BrokerUser:
    """A vhost and a password-protected user with every permission on it."""

    def __init__(self, rabbitmq: RabbitMQServer) -> None:
        self.rabbitmq = rabbitmq
        self.vhost = f"cfg-{uuid.uuid4().hex[:8]}"
        self.user = f"{self.vhost}-pd"
        self.password = f"Pw-{secrets.token_hex(12)}"

    def uri(self, *, password: str | None = None, vhost: str | None = None) -> str:
        return (
            f"amqp://{self.user}:{password or self.password}@127.0.0.1:"
            f"{self.rabbitmq.port}/{vhost or self.vhost}"
        )

    def masked(self, *, vhost: str | None = None) -> str:
        return f"amqp://{self.user}:***@127.0.0.1:{self.rabbitmq.port}/{vhost or self.vhost}"


@pytest.fixture(scope="module")
def broker_user(rabbitmq: RabbitMQServer) -> Iterator[BrokerUser]:
    """One user for the module: the tests only fail to log in with it."""
    ensure_running(rabbitmq)
    made = BrokerUser(rabbitmq)
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


@pytest.mark.rabbitmq
@pytest.mark.supervisord
@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_wrong_broker_password_fails_at_once_naming_access_refused(
    command, broker_user, tmp_path
):
    # Given a configuration with the right user and a wrong password
    wrong = f"Wrong-{secrets.token_hex(8)}"
    config = {
        "state_dir": str(tmp_path / "state"),
        "server": {"amqp": {"uri": broker_user.uri(password=wrong)}},
    }
    # When the command starts
    status, output = run(command, config, tmp_path)
    # Then it fails without retrying, on one line naming the refusal, password hidden
    assert error_line(output) == (
        f"Error: {ERROR_PREFIX[command]}broker {broker_user.masked()} refused the login of user "
        f"'{broker_user.user}' (ACCESS_REFUSED: wrong user name or password)"
    )
    assert status == REFUSED_STATUS[command]
    assert "reconnecting" not in output and "retrying" not in output
    assert wrong not in output and broker_user.password not in output


@pytest.mark.rabbitmq
@pytest.mark.supervisord
@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_unknown_vhost_fails_at_once_naming_it(command, broker_user, tmp_path):
    # Given the right credentials and a vhost that does not exist
    vhost = f"{broker_user.vhost}-missing"
    config = {
        "state_dir": str(tmp_path / "state"),
        "server": {"amqp": {"uri": broker_user.uri(vhost=vhost)}},
    }
    # When the command starts / Then the broker's reason is the line
    status, output = run(command, config, tmp_path)
    assert error_line(output) == (
        f"Error: {ERROR_PREFIX[command]}broker {broker_user.masked(vhost=vhost)} refused access: "
        f"NOT_ALLOWED - vhost {vhost} not found"
    )
    assert status == REFUSED_STATUS[command]
    assert "reconnecting" not in output and "retrying" not in output
    assert broker_user.password not in output


# -- database ----------------------------------------------------------------------


@pytest.fixture
def password_role(postgres: PostgresServer) -> Iterator[tuple[str, str, str]]:
    """``(role, password, database)``: a role that must give its password (scram)."""
    role = f"pdcfg_{uuid.uuid4().hex[:8]}"
    password = f"Pw-{secrets.token_hex(12)}"
    assert postgres.base_dir is not None
    hba = postgres.base_dir / "data" / "pg_hba.conf"
    original = hba.read_text()
    # The first matching line wins: this role authenticates, everyone else is trusted.
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
    with postgres.connect() as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {role} OWNER {role}")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield role, password, role
    finally:
        hba.write_text(original)
        with postgres.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
            conn.execute(f"DROP DATABASE IF EXISTS {role}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.postgres
def test_a_wrong_database_password_is_one_line_with_status_1(postgres, password_role, tmp_path):
    # Given a PostgreSQL URL with the right role and a wrong password
    role, password, database = password_role
    wrong = f"Wrong-{secrets.token_hex(8)}"
    url = f"postgresql+psycopg://{role}:{wrong}@127.0.0.1:{postgres.port}/{database}"
    config = {"state_dir": str(tmp_path / "state"), "processdispatcher": {"database_url": url}}
    # When the daemon starts / Then one line names the refusal, password hidden
    status, output = run("pd-dispatcher", config, tmp_path)
    line = error_line(output)
    assert f"{role}:***@127.0.0.1:{postgres.port}/{database}" in line
    assert f'password authentication failed for user "{role}"' in line
    assert wrong not in output and password not in output
    assert status == 1

"""The three commands: --help everywhere, usage errors, unreachable brokers."""

from __future__ import annotations

import socket

import click
import pytest
from click.testing import CliRunner

from cli.dispatcher import main as pd_dispatcher
from cli.pdcli import main as pd_cli


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["definition"],
        ["definition", "create"],
        ["process"],
        ["process", "schedule"],
        ["dump"],
        ["system-boot"],
    ],
)
def test_every_pd_cli_command_has_help(args):
    result = CliRunner().invoke(pd_cli, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


@pytest.mark.parametrize("args", [[], ["db"], ["db", "upgrade"], ["serve"]])
def test_pd_dispatcher_has_help(args):
    result = CliRunner().invoke(pd_dispatcher, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_pd_dispatcher_help_explains_the_embedded_defaults():
    result = CliRunner().invoke(pd_dispatcher, ["--help"])
    assert "embedded defaults" in result.output
    assert "SIGTERM" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["process", "schedule", "p1", "--restart-mode", "SOMETIMES"],
        ["process", "schedule", "p1", "--subscriber", "no-colon"],
        ["process", "schedule", "p1", "--constraint", "novalue"],
        ["definition", "create", "d1"],
        ["definition", "create", "d1", "--exec", "/bin/true", "--env", "NOEQUALS"],
        ["system-boot", "maybe"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_with_status_2(args, tmp_path):
    result = CliRunner().invoke(pd_cli, args, env={"PD_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2, result.output


def test_a_bad_configuration_file_is_a_one_line_usage_error(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("server: {amqp: {heartbeat: -5}}\n")
    result = CliRunner().invoke(pd_cli, ["--config", str(bad), "dump"])
    assert result.exit_code == 2
    assert "server.amqp.heartbeat" in result.output
    assert "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_broker_exits_3_and_names_it_once_without_the_password():
    port = _free_port()
    uri = f"amqp://operator:hunter2@127.0.0.1:{port}//"
    result = CliRunner().invoke(pd_cli, ["--timeout", "600", "dump"], env={"PD_AMQP_URI": uri})
    assert result.exit_code == 3
    # One line: the command, the broker (named once) and the cause; a refused
    # connection is reported at once, not as a reply timeout.
    assert result.output == (
        f"Error: pd-cli dump: broker amqp://operator:***@127.0.0.1:{port}// "
        "unreachable (connection refused)\n"
    )
    assert "hunter2" not in result.output


def test_no_dispatcher_on_the_embedded_transport_names_the_command_and_the_folder(tmp_path):
    state = tmp_path / "state"
    result = CliRunner().invoke(
        pd_cli, ["--timeout", "0.5", "process", "list"], env={"PD_STATE_DIR": str(state)}
    )
    assert result.exit_code == 3
    assert result.output == (
        "Error: pd-cli process list: no reply within 0.5s: the embedded broker's folder "
        f"{state}/broker does not exist (is pd-dispatcher running?)\n"
    )
    # Nothing was created: neither the state directory nor its broker folder.
    assert not state.exists()


def test_no_dispatcher_on_an_existing_state_directory_names_it(tmp_path):
    from dashi.transport.folder import BrokerFolder

    BrokerFolder(tmp_path / "broker").ensure()  # a dispatcher ran there once
    tmp_path.chmod(0o700)
    result = CliRunner().invoke(
        pd_cli, ["--timeout", "0.5", "node", "list"], env={"PD_STATE_DIR": str(tmp_path)}
    )
    assert result.exit_code == 3
    assert result.output == (
        "Error: pd-cli node list: no reply within 0.5s: the service's queue "
        "'process_dispatcher' does not exist (is pd-dispatcher running?) "
        f"(state directory {tmp_path})\n"
    )


def test_a_state_directory_under_a_file_is_still_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(
        pd_cli, ["process", "list"], env={"PD_STATE_DIR": str(tmp_path / "file" / "state")}
    )
    assert result.exit_code == 2
    assert "is not a directory" in result.output


@pytest.mark.parametrize("value", ["RUNNING", "running", "500", "500-RUNNING", "Running"])
def test_a_state_option_takes_the_name_with_or_without_its_number_in_any_case(value):
    from cli.pdcli import process_list, process_wait

    for command in (process_list, process_wait):
        (option,) = [p for p in command.params if p.name == "states"]
        assert option.type_cast_value(click.Context(command), [value]) == ("500-RUNNING",)


def test_an_unknown_state_is_a_usage_error_listing_the_states(tmp_path):
    result = CliRunner().invoke(
        pd_cli, ["process", "list", "--state", "RUNING"], env={"PD_STATE_DIR": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert "'RUNING' is not a process state: UNSCHEDULED, " in result.output


def test_tail_beyond_the_limit_names_the_option_and_the_limit(tmp_path):
    result = CliRunner().invoke(
        pd_cli, ["process", "logs", "p1", "--tail", "10000000"], env={"PD_STATE_DIR": str(tmp_path)}
    )
    assert result.exit_code == 2
    assert (
        "Invalid value for '--tail': 10000000 bytes is more than the limit of 4194304 bytes "
        "(4 MiB)" in result.output
    )
    assert "tail_bytes" not in result.output
    help_text = CliRunner().invoke(pd_cli, ["process", "logs", "--help"]).output
    assert "at most 4194304 (4 MiB)" in " ".join(help_text.split())


def test_the_cli_reference_in_docs_is_current():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "scripts/cli_reference.py", "--check"], cwd=root, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()

"""The three commands: --help everywhere, usage errors, unreachable brokers."""

from __future__ import annotations

import socket

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


def test_an_unreachable_broker_exits_3_and_names_it_without_the_password():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"amqp://operator:hunter2@127.0.0.1:{port}//"
    result = CliRunner().invoke(pd_cli, ["--timeout", "1", "dump"], env={"PD_AMQP_URI": uri})
    assert result.exit_code == 3
    # (the cause, and the broker named once)
    assert result.output.strip().endswith("unreachable for 1s (connection refused)")
    assert result.output.count(f"amqp://operator:***@127.0.0.1:{port}//") == 1
    assert "hunter2" not in result.output


def test_no_dispatcher_on_the_embedded_transport_is_a_timeout_with_status_3(tmp_path):
    result = CliRunner().invoke(
        pd_cli, ["--timeout", "0.5", "process", "list"], env={"PD_STATE_DIR": str(tmp_path)}
    )
    assert result.exit_code == 3
    assert "no reply within" in result.output


def test_the_cli_reference_in_docs_is_current():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "scripts/cli_reference.py", "--check"], cwd=root, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()

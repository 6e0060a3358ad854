"""Every ``pd-cli`` command through click's ``CliRunner`` against a real dispatcher.

One :class:`~dispatcher.service.DispatcherService` runs for the module on the
session's RabbitMQ broker (its own sysname, SQLite database and ``static``
provisioner), with engine ``engine1`` and one node ``node1`` announced with
``node_state``. A :class:`~tests.support.fake_eeagent.FakeEEAgent` on that node
speaks the real wire protocol, so processes reach ``500-RUNNING`` and have logs.
Each test uses its own process and definition ids.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from cli.pdcli import main as pd_cli
from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from pdcommon.settings import load_settings
from pdcommon.wire import broker_config
from tests.support.fake_eeagent import FakeEEAgent
from tests.support.signals import sigint_as_in_a_terminal
from tests.support.waiting import waiter

pytestmark = [pytest.mark.rabbitmq]

REPO = Path(__file__).resolve().parents[2]
NODE = "node1"
AGENT = "cli_agent1"
ENGINE = "engine1"
#: Slots of the one agent: enough for every process the module leaves running.
SLOTS = 64
#: Seconds a wait for a state may take before the test fails.
WAIT = 30.0


wait_for = waiter(WAIT)


class Cluster:
    """The dispatcher, a client for direct checks, the fake agent, and a CLI runner."""

    def __init__(self, tmp_path: Path, amqp_uri: str) -> None:
        self.tmp_path = tmp_path
        self.amqp_uri = amqp_uri
        self.sysname = f"cli{uuid.uuid4().hex[:8]}"
        settings = load_settings(
            overrides={
                "state_dir": str(tmp_path / "state"),
                "server.amqp.uri": amqp_uri,
                "dashi.sysname": self.sysname,
                "processdispatcher.database_url": f"sqlite:///{tmp_path}/pd.db",
                "processdispatcher.engines": {
                    ENGINE: {
                        "slots": SLOTS,
                        "heartbeat_period": 1,
                        "heartbeat_warning": 5,
                        "heartbeat_missing": 10,
                    }
                },
                "processdispatcher.default_engine": ENGINE,
                "processdispatcher.restart_throttling_config": {"minimum_time_between_starts": 0},
                "provisioner.driver": "static",
            }
        )
        self.service = DispatcherService.build(settings)
        self.service.start()
        self.client = ProcessDispatcherClient.from_settings(settings, timeout=20)
        self.client.node_state(NODE, "pd_domain_engine1", "600-RUNNING")
        self.agent = FakeEEAgent(
            broker_config(settings), AGENT, NODE, heartbeat_interval=0.5
        ).start()
        wait_for(lambda: AGENT in self.client.dump()["resources"], what="the agent registered")

    def env(self) -> dict[str, str]:
        return {
            "PD_AMQP_URI": self.amqp_uri,
            "PD_STATE_DIR": str(self.tmp_path / "cli-state"),
            "COLUMNS": "200",
        }

    def cli(self, *args: str, fmt: str | None = None) -> Result:
        """Run ``pd-cli --sysname S [--json|--yaml] ARGS`` with the broker in PD_AMQP_URI."""
        options = ["--sysname", self.sysname, "--timeout", "20"]
        if fmt:
            options.append(f"--{fmt}")
        return CliRunner().invoke(pd_cli, [*options, *args], env=self.env())

    def ok(self, *args: str, fmt: str | None = None) -> Result:
        result = self.cli(*args, fmt=fmt)
        assert result.exit_code == 0, (result.output, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, fmt="json").stdout)

    def state(self, upid: str) -> str | None:
        record = self.client.describe_process(upid)
        return None if record is None else str(record["state"])

    def wait_state(self, upid: str, state: str) -> None:
        wait_for(lambda: self.state(upid) == state, what=f"{upid} {state}")

    def close(self) -> None:
        self.agent.stop()
        self.client.close()
        self.service.stop()


@pytest.fixture(scope="module")
def cluster(rabbitmq: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    made = Cluster(tmp_path_factory.mktemp("cli"), rabbitmq.uri)
    try:
        yield made
    finally:
        made.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def define(cluster: Cluster, definition_id: str | None = None) -> str:
    definition_id = definition_id or unique("def")
    cluster.ok("definition", "create", definition_id, "--exec", "/bin/sleep", "--arg", "600")
    return definition_id


def running(cluster: Cluster, upid: str | None = None, *options: str) -> str:
    upid = upid or unique("proc")
    cluster.ok("process", "schedule", upid, "--definition", define(cluster), *options)
    cluster.ok("process", "wait", upid)
    return upid


def assert_no_traceback(result: Result) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --------------------------------------------------------------------------- definitions


def test_definition_create_describe_update_list_remove(cluster: Cluster) -> None:
    # Given a definition created from --exec/--arg/--env/--workdir
    created = cluster.json(
        "definition",
        "create",
        "def-lifecycle",
        "--exec",
        "/bin/echo",
        "--arg",
        "hello world",
        "--arg",
        "-n",
        "--env",
        "GREETING=hi=there",
        "--workdir",
        "/tmp",
        "--name",
        "echoer",
        "--description",
        "says hello",
    )
    # Then the JSON is the stored definition record
    assert created == {
        "definition_id": "def-lifecycle",
        "definition_type": "supd",
        "executable": {
            "exec": "/bin/echo",
            "argv": ["hello world", "-n"],
            "env": {"GREETING": "hi=there"},
            "working_directory": "/tmp",
        },
        "name": "echoer",
        "description": "says hello",
        "version": None,
    }
    # And describe gives the same record as YAML, and as a field/value table
    described = yaml.safe_load(
        cluster.ok("definition", "describe", "def-lifecycle", fmt="yaml").stdout
    )
    assert described == created
    table = cluster.ok("definition", "describe", "def-lifecycle").stdout
    assert "definition_id" in table and "def-lifecycle" in table and "echoer" in table

    # When it is updated (replaced whole)
    updated = cluster.json("definition", "update", "def-lifecycle", "--exec", "/bin/true")
    assert updated["executable"] == {"exec": "/bin/true", "argv": []}
    assert updated["name"] is None

    # Then it is listed, and after removal it is gone
    assert "def-lifecycle" in cluster.json("definition", "list")
    assert "def-lifecycle" in cluster.ok("definition", "list").stdout
    cluster.ok("definition", "remove", "def-lifecycle")
    assert "def-lifecycle" not in cluster.json("definition", "list")
    missing = cluster.cli("definition", "describe", "def-lifecycle")
    assert missing.exit_code == 1
    assert "no definition 'def-lifecycle'" in missing.output


def test_definition_create_from_a_yaml_file(cluster: Cluster, tmp_path: Path) -> None:
    file = tmp_path / "def.yml"
    file.write_text(
        yaml.safe_dump(
            {
                "name": "from-file",
                "description": "a file",
                "executable": {"exec": "/bin/sleep", "argv": ["5"]},
            }
        )
    )
    record = cluster.json("definition", "create", "def-file", "--file", str(file))
    assert record["executable"] == {"exec": "/bin/sleep", "argv": ["5"]}
    assert (record["name"], record["description"]) == ("from-file", "a file")


def test_definition_max_runtime_is_stored_shown_and_taken_by_its_processes(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a definition created with --max-runtime
    definition_id = unique("def-max")
    created = cluster.json(
        "definition", "create", definition_id, "--exec", "/bin/sleep", "--arg", "600",
        "--max-runtime", "45",
    )  # fmt: skip
    # Then its record has the additive key, and describe shows it as a table row
    assert created["max_runtime_seconds"] == 45
    table = cluster.ok("definition", "describe", definition_id).stdout
    row = next(line for line in table.splitlines() if "max_runtime_seconds" in line)
    assert "45" in row
    # And a process scheduled without --max-runtime takes it
    upid = unique("p-max")
    cluster.ok("process", "schedule", upid, "--definition", definition_id)
    assert cluster.json("process", "describe", upid)["max_runtime_seconds"] == 45
    # When it is updated with another, Then that shows; without one, it is gone
    updated = cluster.json(
        "definition", "update", definition_id, "--exec", "/bin/true", "--max-runtime", "90.5"
    )
    assert updated["max_runtime_seconds"] == 90.5
    cleared = cluster.json("definition", "update", definition_id, "--exec", "/bin/true")
    assert "max_runtime_seconds" not in cleared
    # And a definition file may carry it too (--max-runtime overrides it)
    file = tmp_path / "def.yml"
    file.write_text(
        yaml.safe_dump({"executable": {"exec": "/bin/true"}, "max_runtime_seconds": 30})
    )
    from_file = cluster.json("definition", "create", unique("def-file"), "--file", str(file))
    assert from_file["max_runtime_seconds"] == 30
    overridden = cluster.json(
        "definition", "create", unique("def-file"), "--file", str(file), "--max-runtime", "5"
    )
    assert overridden["max_runtime_seconds"] == 5


def test_a_definition_max_runtime_past_the_limit_is_refused_and_nothing_stored(
    cluster: Cluster,
) -> None:
    definition_id = unique("def-max")
    result = cluster.cli(
        "definition", "create", definition_id, "--exec", "/bin/true", "--max-runtime", "1e9"
    )
    assert result.exit_code == 1
    assert "BadRequestError" in result.output and "max_runtime_seconds" in result.output
    assert_no_traceback(result)
    assert definition_id not in cluster.json("definition", "list")


def test_remote_errors_exit_1_with_the_message_and_no_traceback(cluster: Cluster) -> None:
    define(cluster, "def-dup")
    duplicate = cluster.cli("definition", "create", "def-dup", "--exec", "/bin/true")
    assert duplicate.exit_code == 1
    assert "WriteConflictError" in duplicate.output
    assert_no_traceback(duplicate)

    unknown_def = cluster.cli("definition", "remove", "def-never-made")
    assert unknown_def.exit_code == 1
    assert "NotFoundError" in unknown_def.output

    unknown = cluster.cli("process", "terminate", "no-such-process")
    assert unknown.exit_code == 1
    assert "NotFoundError: process no-such-process does not exist" in unknown.output
    assert_no_traceback(unknown)

    no_definition = cluster.cli("process", "schedule", "p-nodef")
    assert no_definition.exit_code == 1
    assert "NotFoundError" in no_definition.output

    no_such = cluster.cli("process", "describe", "no-such-process")
    assert no_such.exit_code == 1
    assert "no process 'no-such-process'" in no_such.output


# --------------------------------------------------------------------------- processes


def test_process_create_then_schedule_with_every_parameter(cluster: Cluster) -> None:
    definition_id = define(cluster)
    # Given a process created but not scheduled
    created = cluster.json("process", "create", "p-every", definition_id, "--name", "every")
    assert created == {"upid": "p-every", "state": "100-UNSCHEDULED", "round": 0, "assigned": None}

    # When it is scheduled with every schedule_process parameter
    scheduled = cluster.json(
        "process",
        "schedule",
        "p-every",
        "--definition",
        definition_id,
        "--configuration",
        '{"app": {"greeting": "hi"}}',
        "--subscriber",
        "watcher:process_changed",
        "--constraint",
        "hostname=nowhere",
        "--queueing-mode",
        "ALWAYS",
        "--restart-mode",
        "NEVER",
        "--engine",
        ENGINE,
        "--node-exclusive",
        "tag-every",
        "--name",
        "every-renamed",
    )
    # Then the reply is the process dict and the record holds every parameter
    assert set(scheduled) == {"upid", "state", "round", "assigned"}
    assert scheduled["upid"] == "p-every"
    record = cluster.json("process", "describe", "p-every")
    assert record["configuration"] == {"app": {"greeting": "hi"}}
    assert record["subscribers"] == [["watcher", "process_changed"]]
    assert record["constraints"] == {"hostname": "nowhere", "engine": ENGINE}
    assert record["queueing_mode"] == "ALWAYS"
    assert record["restart_mode"] == "NEVER"
    assert record["node_exclusive"] == "tag-every"
    assert record["name"] == "every-renamed"
    # And no agent matches hostname=nowhere, so it waits
    cluster.wait_state("p-every", "300-WAITING")

    # When the same request is repeated it is idempotent; a different one is refused
    again = cluster.cli(
        "process",
        "schedule",
        "p-every",
        "--definition",
        definition_id,
        "--restart-mode",
        "ALWAYS",
    )
    assert again.exit_code == 1
    assert "BadRequestError" in again.output
    assert_no_traceback(again)


def test_process_wait_reaches_running_and_reports_the_state(cluster: Cluster) -> None:
    upid = unique("p-wait")
    cluster.ok("process", "schedule", upid, "--definition", define(cluster))
    waited = cluster.json("process", "wait", upid, "--timeout", str(WAIT))
    assert waited == {"upid": upid, "state": "500-RUNNING"}
    assert cluster.state(upid) == "500-RUNNING"
    assert upid in cluster.agent.processes


def test_process_wait_times_out_with_status_3(cluster: Cluster) -> None:
    # Given a process no agent can take
    upid = unique("p-stuck")
    cluster.ok(
        "process", "schedule", upid, "--definition", define(cluster), "--constraint", "hostname=x"
    )
    cluster.wait_state(upid, "300-WAITING")
    # When pd-cli waits for it to run, briefly
    result = cluster.cli("process", "wait", upid, "--timeout", "0.3", "--poll", "0.05")
    # Then it gives up with status 3, naming the state it saw
    assert result.exit_code == 3
    assert f"timed out waiting for {upid} (it is 300-WAITING)" in result.output


def test_wait_and_describe_name_the_signal_that_killed_a_process(cluster: Cluster) -> None:
    # Given a running process its agent reports killed by SIGKILL
    upid = running(cluster, None, "--restart-mode", "NEVER")
    reason = "killed by signal SIGKILL (9)"
    cluster.agent.set_state(upid, "850-FAILED", msg=reason, signal=9)
    cluster.wait_state(upid, "850-FAILED")
    # When pd-cli waits for it
    result = cluster.cli("process", "wait", upid)
    # Then it exits 1 with the reason, which names the signal (said once)
    assert result.exit_code == 1
    assert f"Error: process {upid} is 850-FAILED: {reason}\n" in result.output
    # And describe shows the signal by name, the raw number in JSON
    table = cluster.ok("process", "describe", upid).stdout
    assert re.search(r"signal\s+SIGKILL \(9\)", table), table
    assert cluster.json("process", "describe", upid)["signal"] == 9


def test_process_wait_on_a_process_that_ended_otherwise_exits_1(cluster: Cluster) -> None:
    upid = unique("p-ended")
    cluster.ok(
        "process", "schedule", upid, "--definition", define(cluster), "--constraint", "hostname=x"
    )
    cluster.ok("process", "terminate", upid)
    result = cluster.cli("process", "wait", upid)
    assert result.exit_code == 1
    assert f"process {upid} is 700-TERMINATED" in result.output
    # And waiting for that very state succeeds
    assert cluster.json("process", "wait", upid, "--state", "700-TERMINATED")["state"] == (
        "700-TERMINATED"
    )
    unknown = cluster.cli("process", "wait", "never-scheduled")
    assert unknown.exit_code == 1
    assert "no process 'never-scheduled'" in unknown.output


def test_process_list_filters_by_state_engine_and_node_and_sorts(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex[:6]
    on_node = running(cluster, f"b-list-{tag}")
    definition_id = define(cluster)
    waiting = f"a-list-{tag}"
    cluster.ok(
        "process", "schedule", waiting, "--definition", definition_id, "--constraint", "hostname=x"
    )
    cluster.wait_state(waiting, "300-WAITING")
    other_engine = f"c-list-{tag}"
    engine_x = f"engine-x{tag}"  # an engine with no nodes: its process waits
    cluster.ok("engine", "add", engine_x, "--slots", "1")
    cluster.ok(
        "process", "schedule", other_engine, "--definition", definition_id, "--engine", engine_x
    )

    cluster.wait_state(other_engine, "300-WAITING")

    rows = [r for r in cluster.json("process", "list") if tag in r["upid"]]
    # Every row has the same stable shape
    assert all(
        set(r) == {"upid", "name", "state", "round", "engine", "node", "assigned", "group"}
        for r in rows
    )
    by_upid = {r["upid"]: r for r in rows}
    assert by_upid[on_node]["engine"] == ENGINE
    assert by_upid[on_node]["node"] == NODE
    assert by_upid[on_node]["assigned"] == AGENT
    assert by_upid[waiting]["node"] is None
    assert by_upid[other_engine]["engine"] == engine_x
    # Sorted by upid by default
    assert [r["upid"] for r in rows] == sorted(by_upid)

    def listed(*options: str) -> list[str]:
        return [r["upid"] for r in cluster.json("process", "list", *options) if tag in r["upid"]]

    assert listed("--state", "500-RUNNING") == [on_node]
    assert listed("--state", "500-RUNNING", "--state", "300-WAITING") == [
        waiting,
        on_node,
        other_engine,
    ]
    assert listed("--node", NODE) == [on_node]
    assert listed("--engine", engine_x) == [other_engine]
    assert listed("--engine", ENGINE) == [on_node]
    assert listed("--sort", "state") == sorted(by_upid, key=lambda u: (by_upid[u]["state"], u))
    assert listed("--sort", "upid", "--reverse") == sorted(by_upid, reverse=True)

    # The table shows the rows with a header
    table = cluster.ok("process", "list", "--node", NODE).stdout
    assert "upid" in table and "engine" in table and on_node in table and waiting not in table
    # And YAML has the JSON's shape
    assert yaml.safe_load(cluster.ok("process", "list", fmt="yaml").stdout) == cluster.json(
        "process", "list"
    )


def test_groups_and_labels_schedule_list_describe_and_bulk_terminate(cluster: Cluster) -> None:
    # Given processes scheduled in two groups with labels
    tag = uuid.uuid4().hex[:6]
    group_a, group_b = f"exp-a{tag}", f"exp-b{tag}"
    web = running(
        cluster, f"web-{tag}", "--group", group_a, "--label", "app=web", "--label", "tier=front"
    )
    db = running(cluster, f"db-{tag}", "--group", group_a, "--label", "app=db")
    other = running(cluster, f"other-{tag}", "--group", group_b, "--label", "app=web")
    # Then describe shows the group and labels
    record = cluster.json("process", "describe", web)
    assert record["group"] == group_a
    assert record["labels"] == {"app": "web", "tier": "front"}
    assert "group" not in cluster.json("process", "describe", running(cluster))

    def listed(*options: str) -> list[str]:
        return [r["upid"] for r in cluster.json("process", "list", *options)]

    # And the dispatcher filters the listing by group, selector and state
    assert listed("--group", group_a) == sorted([web, db])
    assert listed("--group", group_a, "-l", "app=web,tier!=db") == [web]
    mine = [u for u in listed("-l", "app=web,!tier", "--state", "RUNNING") if u.endswith(tag)]
    assert mine == [other]
    assert listed("--group", group_a, "-l", "app in (db,none)") == [db]
    assert listed("--group", group_b, "--state", "TERMINATED") == []
    rows = cluster.json("process", "list", "--group", group_b)
    assert [(r["upid"], r["group"]) for r in rows] == [(other, group_b)]
    # A bad selector is a usage error before any call, with no traceback
    bad = cluster.cli("process", "list", "-l", "app in (web")
    assert bad.exit_code == 2 and "unbalanced '('" in bad.output
    assert_no_traceback(bad)

    # When the first group is terminated without --yes and the prompt is declined
    declined = CliRunner().invoke(
        pd_cli,
        [
            "--sysname",
            cluster.sysname,
            "--timeout",
            "20",
            "process",
            "terminate",
            "--group",
            group_a,
        ],
        env=cluster.env(),
        input="n\n",
    )
    # Then it asked with the count, and nothing ended
    assert declined.exit_code == 1 and "Terminate 2 process(es)" in declined.output
    assert cluster.state(web) == cluster.state(db) == "500-RUNNING"
    # When it is confirmed
    confirmed = CliRunner().invoke(
        pd_cli,
        [
            "--sysname",
            cluster.sysname,
            "--timeout",
            "20",
            "--json",
            "process",
            "terminate",
            "--group",
            group_a,
        ],
        env=cluster.env(),
        input="y\n",
    )
    assert confirmed.exit_code == 0, confirmed.output
    result = json.loads(confirmed.stdout)
    assert sorted(result["terminated"]) == sorted([web, db]) and result["failed"] == []
    # Then the group ends, and the other group runs on
    cluster.wait_state(web, "700-TERMINATED")
    cluster.wait_state(db, "700-TERMINATED")
    assert cluster.state(other) == "500-RUNNING"
    # And with --yes again: nothing in play, both already ended
    again = cluster.json("process", "terminate", "--group", group_a, "--yes")
    assert again["terminated"] == [] and sorted(again["already_ended"]) == sorted([web, db])
    # And a label selector with --yes terminates the rest
    last = cluster.json("process", "terminate", "--group", group_b, "-l", "app=web", "--yes")
    assert last["terminated"] == [other]
    cluster.wait_state(other, "700-TERMINATED")


def test_group_ttl_sets_lists_and_clears_a_deadline(cluster: Cluster) -> None:
    # Given a group with a running process
    tag = uuid.uuid4().hex[:6]
    group = f"ttl-{tag}"
    upid = running(cluster, f"ttl-{tag}", "--group", group)
    # When it gets an hour to live
    set_ = cluster.json("group", "ttl", group, "3600")
    assert set_["group"] == group and set_["expires_at"] > 0
    # Then group list shows its process and its deadline
    rows = {r["group"]: r for r in cluster.json("group", "list")}
    assert rows[group] == {
        "group": group,
        "processes": 1,
        "in_play": 1,
        "expires_at": set_["expires_at"],
    }
    assert group in cluster.ok("group", "list").stdout
    # When it is cleared, Then the deadline is gone and the process still runs
    assert cluster.json("group", "ttl", group, "--clear") == {"group": group, "expires_at": None}
    rows = {r["group"]: r for r in cluster.json("group", "list")}
    assert rows[group]["expires_at"] is None
    assert cluster.state(upid) == "500-RUNNING"
    # And SECONDS or --clear is required, and a bad group is the dispatcher's error
    assert cluster.cli("group", "ttl", group).exit_code == 2
    assert cluster.cli("group", "ttl", group, "5", "--clear").exit_code == 2
    bad = cluster.cli("group", "ttl", "a b", "5")
    assert bad.exit_code == 1 and "invalid group" in bad.output
    assert_no_traceback(bad)
    cluster.ok("process", "terminate", upid)


def test_process_terminate_needs_a_upid_or_a_selection(cluster: Cluster) -> None:
    nothing = cluster.cli("process", "terminate")
    assert nothing.exit_code == 2 and "give a UPID, or --group" in nothing.output
    both = cluster.cli("process", "terminate", "p1", "--group", "g")
    assert both.exit_code == 2 and "not both" in both.output


def test_process_restart_starts_a_new_round(cluster: Cluster) -> None:
    upid = running(cluster)
    restarted = cluster.json("process", "restart", upid)
    assert restarted["upid"] == upid
    assert restarted["round"] == 1
    cluster.ok("process", "wait", upid)
    assert cluster.agent.ops("restart_process")[-1] == {"u_pid": upid, "round": 1}
    assert cluster.json("process", "describe", upid)["round"] == 1


def test_process_terminate_ends_a_running_process(cluster: Cluster) -> None:
    upid = running(cluster)
    terminated = cluster.json("process", "terminate", upid)
    assert terminated["state"] == "600-TERMINATING"
    assert cluster.json("process", "wait", upid, "--state", "700-TERMINATED")["state"] == (
        "700-TERMINATED"
    )
    assert {"u_pid": upid, "round": 0} in cluster.agent.ops("terminate_process")


def test_process_logs_prints_stdout_or_stderr_from_the_agent(cluster: Cluster) -> None:
    upid = running(cluster)
    assert cluster.ok("process", "logs", upid).stdout == f"stdout of {upid} round 0\n"
    assert cluster.ok("process", "logs", upid, "--stderr").stdout == f"stderr of {upid} round 0\n"
    cluster.agent.logs[(upid, "stdout")] = "line one\nline two\n"
    assert cluster.ok("process", "logs", upid, "--tail", "9").stdout == "line two\n"

    # A process that is not on an agent, or unknown, is a remote error
    waiting = unique("p-nologs")
    cluster.ok(
        "process",
        "schedule",
        waiting,
        "--definition",
        define(cluster),
        "--constraint",
        "hostname=x",
    )
    not_placed = cluster.cli("process", "logs", waiting)
    assert not_placed.exit_code == 1
    assert "BadRequestError" in not_placed.output and "not assigned" in not_placed.output
    unknown = cluster.cli("process", "logs", "no-such-process")
    assert unknown.exit_code == 1
    assert "NotFoundError" in unknown.output


def follow_logs(cluster: Cluster, upid: str) -> subprocess.Popen[str]:
    """``pd-cli process logs UPID --follow`` in a process of its own (to send it
    Ctrl-C), started as from a terminal: with SIGINT not ignored."""
    command = [sys.executable, "-m", "cli.pdcli", "--sysname", cluster.sysname]
    command += ["process", "logs", upid, "--follow", "--interval", "0.1"]
    with sigint_as_in_a_terminal():
        return subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **cluster.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def fetched_since(cluster: Cluster, upid: str, asked: int) -> bool:
    """Whether the agent got a ``get_process_logs`` for ``upid`` after its first
    ``asked`` requests (another process's fetch, e.g. a late one of an earlier
    test, does not count)."""
    return any(
        op == "get_process_logs" and args["u_pid"] == upid
        for op, args in cluster.agent.received[asked:]
    )


def test_process_logs_follow_prints_new_output_until_interrupted(cluster: Cluster) -> None:
    # Given a running process whose agent has some output
    upid = running(cluster)
    cluster.agent.logs[(upid, "stdout")] = "first\n"
    proc = follow_logs(cluster, upid)
    try:
        assert proc.stdout is not None
        # When pd-cli follows it, it prints what is there ...
        assert proc.stdout.readline() == "first\n"
        # ... and then only what is new
        cluster.agent.logs[(upid, "stdout")] = "first\nsecond\n"
        assert proc.stdout.readline() == "second\n"
        # And Ctrl-C ends it normally
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
        assert "Traceback" not in proc.stderr.read() if proc.stderr else True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_process_logs_follow_gets_ctrl_c_even_if_the_test_run_ignores_sigint(
    cluster: Cluster,
) -> None:
    # Given a test run started with SIGINT ignored (a background job of a
    # non-interactive shell), which its children would inherit
    upid = running(cluster)
    cluster.agent.logs[(upid, "stdout")] = "first\n"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = follow_logs(cluster, upid)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "first\n"
        # When Ctrl-C comes, pd-cli (started as from a terminal) still ends normally
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("fetch", ["first", "later"])
def test_process_logs_follow_interrupted_during_a_call_exits_normally(
    cluster: Cluster, fetch: str
) -> None:
    # Given pd-cli following a process's output, waiting for the reply to a fetch
    upid = running(cluster)
    cluster.agent.logs[(upid, "stdout")] = "first\n"
    if fetch == "first":
        cluster.agent.logs_gate.clear()
    asked = len(cluster.agent.received)
    proc = follow_logs(cluster, upid)
    try:
        assert proc.stdout is not None
        if fetch == "later":
            assert proc.stdout.readline() == "first\n"
            cluster.agent.logs_gate.clear()
            asked = len(cluster.agent.received)
        wait_for(lambda: fetched_since(cluster, upid, asked), what="a fetch")
        # When Ctrl-C comes then
        proc.send_signal(signal.SIGINT)
        # Then pd-cli ends normally, without a traceback
        assert proc.wait(WAIT) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        cluster.agent.logs_gate.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- nodes, engines


def test_node_list_shows_the_node_its_agent_and_slot_use(cluster: Cluster) -> None:
    running(cluster)
    rows = cluster.json("node", "list")
    (row,) = [r for r in rows if r["node_id"] == NODE]
    assert set(row) == {"node_id", "domain_id", "agents", "slots used", "node_exclusive"}
    assert row["domain_id"] == "pd_domain_engine1"
    assert row["agents"] == f"{AGENT} (OK)"
    used, total = row["slots used"].split("/")
    assert int(total) == SLOTS and 1 <= int(used) <= SLOTS
    table = cluster.ok("node", "list").stdout
    assert NODE in table and AGENT in table


def test_engine_list_shows_configured_and_added_engines(cluster: Cluster) -> None:
    engines = {e["engine_id"]: e for e in cluster.json("engine", "list")}
    assert engines[ENGINE]["slots"] == SLOTS
    assert ENGINE in cluster.ok("engine", "list").stdout


def test_engine_add_persists_the_engine(cluster: Cluster) -> None:
    added = cluster.json(
        "engine",
        "add",
        "engine-added",
        "--slots",
        "2",
        "--replicas",
        "2",
        "--base-need",
        "0",
        "--spare-slots",
        "1",
        "--maximum-vms",
        "3",
        "--heartbeat-period",
        "1",
        "--heartbeat-warning",
        "3",
        "--heartbeat-missing",
        "6",
    )
    expected = {
        "engine_id": "engine-added",
        "slots": 2,
        "replicas": 2,
        "base_need": 0,
        "spare_slots": 1,
        "maximum_vms": 3,
        "heartbeat_period": 1.0,
        "heartbeat_warning": 3.0,
        "heartbeat_missing": 6.0,
    }
    assert added == expected
    stored = cluster.service.store.list_engines()["engine-added"]
    assert stored["slots"] == 2 and stored["maximum_vms"] == 3

    again = cluster.cli("engine", "add", "engine-added", "--slots", "2")
    assert again.exit_code == 1
    assert "WriteConflictError" in again.output
    bad = cluster.cli(
        "engine",
        "add",
        "engine-bad",
        "--slots",
        "1",
        "--heartbeat-warning",
        "9",
        "--heartbeat-missing",
        "3",
    )
    assert bad.exit_code == 1
    assert "BadRequestError" in bad.output
    assert_no_traceback(bad)
    assert "engine-bad" not in cluster.service.store.list_engines()


# --------------------------------------------------------------------------- dump, system-boot


def test_dump_as_json_yaml_and_a_readable_tree(cluster: Cluster) -> None:
    upid = running(cluster)
    dumped = cluster.json("dump")
    assert {"resources", "processes", "nodes"} <= set(dumped)
    assert dumped["processes"][upid]["assigned"] == AGENT
    assert dumped["resources"][AGENT]["node_id"] == NODE
    assert AGENT in dumped["nodes"][NODE]["resources"]
    assert set(yaml.safe_load(cluster.ok("dump", fmt="yaml").stdout)) == set(dumped)

    # The table form is a tree of nodes, agents and their processes, then a table
    text = cluster.ok("dump").stdout
    assert f"nodes ({len(dumped['nodes'])})" in text
    assert NODE in text and f"engine={ENGINE}" in text
    assert f"{upid} round 0: 500-RUNNING" in text
    assert "processes" in text


def test_system_boot_on_and_off(cluster: Cluster) -> None:
    store = cluster.service.store
    cluster.ok("system-boot", "on")
    assert store.is_system_boot() is True
    cluster.ok("system-boot", "off")
    assert store.is_system_boot() is False


# --------------------------------------------------------------------------- configuration


def test_the_broker_can_come_from_a_config_file(cluster: Cluster, tmp_path: Path) -> None:
    config = tmp_path / "cli.yml"
    config.write_text(
        yaml.safe_dump(
            {"server": {"amqp": {"uri": cluster.amqp_uri}}, "dashi": {"sysname": cluster.sysname}}
        )
    )
    result = CliRunner().invoke(
        pd_cli,
        ["--json", "--config", str(config), "definition", "list"],
        env={"PD_AMQP_URI": None, "PD_STATE_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == cluster.client.list_definitions()


def test_a_wrong_sysname_is_a_timeout_naming_the_broker_with_the_password_masked(
    cluster: Cluster,
) -> None:
    result = CliRunner().invoke(
        pd_cli,
        ["--sysname", "nobody-here", "--timeout", "0.5", "process", "list"],
        env=cluster.env(),
    )
    assert result.exit_code == 3
    assert "no reply within" in result.output
    assert "guest:***@127.0.0.1" in result.output
    assert "guest:guest" not in result.output


def test_completion_prints_a_script_for_each_shell() -> None:
    for shell, marker in (("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete")):
        result = CliRunner().invoke(pd_cli, ["completion", shell])
        assert result.exit_code == 0
        assert marker in result.output
        assert "_PD_CLI_COMPLETE" in result.output


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--timeout", "soon", "dump"], "--timeout"),
        (["--timeout", "0", "dump"], "--timeout"),
        (["process", "wait", "p", "--timeout", "-1"], "--timeout"),
        (["process", "wait", "p", "--poll", "0"], "--poll"),
        (["process", "wait", "p", "--state", "RUNING"], "--state"),
        (["process", "list", "--state", "run"], "--state"),
        (["process", "list", "--sort", "colour"], "--sort"),
        (["process", "logs", "p", "--tail", "-1"], "--tail"),
        (["process", "logs", "p", "--tail", "many"], "--tail"),
        (["process", "logs", "p", "--interval", "0"], "--interval"),
        (["process", "schedule", "p", "--queueing-mode", "SOMETIMES"], "--queueing-mode"),
        (["process", "schedule", "p", "--restart-mode", "SOMETIMES"], "--restart-mode"),
        (["process", "schedule", "p", "--configuration", "{unclosed"], "--configuration"),
        (["process", "schedule", "p", "--configuration", "[1, 2]"], "--configuration"),
        (["process", "schedule", "p", "--subscriber", "no-colon"], "--subscriber"),
        (["process", "schedule", "p", "--constraint", "novalue"], "--constraint"),
        (["definition", "create", "d", "--exec", "/bin/true", "--env", "NOEQUALS"], "--env"),
        (["definition", "create", "d", "--file", "/no/such/file.yml"], "--file"),
        (
            ["definition", "create", "d", "--exec", "/bin/true", "--max-runtime", "0"],
            "--max-runtime",
        ),
        (
            ["definition", "create", "d", "--exec", "/bin/true", "--max-runtime", "x"],
            "--max-runtime",
        ),
        (
            ["definition", "update", "d", "--exec", "/bin/true", "--max-runtime", "-1"],
            "--max-runtime",
        ),
        (["engine", "add", "e", "--slots", "0"], "--slots"),
        (["engine", "add", "e", "--slots", "two"], "--slots"),
        (["engine", "add", "e", "--slots", "1", "--replicas", "0"], "--replicas"),
        (["engine", "add", "e", "--slots", "1", "--base-need", "-1"], "--base-need"),
        (["engine", "add", "e", "--slots", "1", "--spare-slots", "-1"], "--spare-slots"),
        (["engine", "add", "e", "--slots", "1", "--maximum-vms", "-1"], "--maximum-vms"),
        (["engine", "add", "e", "--slots", "1", "--heartbeat-period", "0"], "--heartbeat-period"),
        (["engine", "add", "e", "--slots", "1", "--heartbeat-warning", "x"], "--heartbeat-warning"),
        (
            ["engine", "add", "e", "--slots", "1", "--heartbeat-missing", "-2"],
            "--heartbeat-missing",
        ),
        (["engine", "add", "e"], "--slots"),
        (["process", "schedule", "p", "--definition", "d", "--group", "a/b"], "--group"),
        (["process", "schedule", "p", "--definition", "d", "--label", "bad key=v"], "--label"),
        (["process", "schedule", "p", "--definition", "d", "--label", "k=" + "v" * 64], "--label"),
        (["process", "list", "--group", ""], "--group"),
        (["process", "list", "-l", "app in (a"], "--label"),
        (["process", "list", "-l", "app notin x"], "--label"),
        (["process", "terminate", "--group", "x y"], "--group"),
        (["process", "terminate", "-l", "!"], "--label"),
        (["system-boot", "maybe"], "maybe"),
        (["completion", "tcsh"], "tcsh"),
        (["--config", "/no/such/config.yml", "dump"], "/no/such/config.yml"),
    ],
)
def test_bad_option_values_are_usage_errors_naming_the_option(
    args: list[str], named: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(pd_cli, args, env={"PD_STATE_DIR": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert_no_traceback(result)


def test_a_definition_file_without_an_executable_is_a_usage_error(tmp_path: Path) -> None:
    file = tmp_path / "def.yml"
    file.write_text("name: nothing to run\n")
    result = CliRunner().invoke(
        pd_cli,
        ["definition", "create", "d", "--file", str(file)],
        env={"PD_STATE_DIR": str(tmp_path)},
    )
    assert result.exit_code == 2
    assert "'executable'" in result.output

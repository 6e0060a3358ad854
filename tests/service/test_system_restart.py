"""Whole-system restart over real RPC: the legacy system-boot scenario end to end.

One 4-slot agent runs p1 (ABNORMAL), p2 (ALWAYS), p3 (NEVER) and p4 (ALWAYS,
``omit_from_system_restart``); p5 (ABNORMAL) and p6 (ABNORMAL, omitted) wait.
Everything stops (the site is lost), the operator begins a system boot offline
with ``pd-dispatcher --config FILE system-boot begin``, and a dispatcher starts on
the old database: p1, p2 and p5 are held back (``150-UNSCHEDULED_PENDING``), p3,
p4 and p6 end (``700-TERMINATED``), subscribers hear of each, and the dispatcher
stays ``SYSTEM_BOOTING`` while new and re-scheduled processes run; ending the boot
releases the held-back ones. With two dispatchers on one PostgreSQL database the
initialisation happens once.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cli.dispatcher import main as pd_dispatcher
from cli.pdcli import main as pd_cli
from dashi.errors import BadRequestError
from dashi.service import RpcService
from dispatcher.service import DispatcherService
from pdcommon.settings import Settings
from tests.service.conftest import DEFINITION, Harness, make_settings, wait_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

HELD = ["p1", "p2", "p5"]
ENDED = ["p3", "p4", "p6"]
OMIT = {"process": {"omit_from_system_restart": True}}


class Subscriber:
    """A dashi service recording the ``process_state`` notifications it gets."""

    def __init__(self, broker: Any) -> None:
        self.name = f"subscriber_{uuid.uuid4().hex[:8]}"
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.service = RpcService(broker, self.name)
        self.service.handle("process_state", self.process_state, validate=False)
        self.service.start()

    def process_state(self, process: dict[str, Any]) -> None:
        with self._lock:
            self.received.append(process)

    def states_of(self, upid: str) -> list[str]:
        with self._lock:
            return [p["state"] for p in self.received if p["upid"] == upid]

    def wait(self, upid: str, state: str) -> None:
        wait_for(lambda: state in self.states_of(upid), what=f"notification {upid} {state}")


@pytest.fixture
def subscriber_for() -> Iterator[Callable[[Harness], Subscriber]]:
    made: list[Subscriber] = []

    def make(harness: Harness) -> Subscriber:
        made.append(Subscriber(harness.broker))
        return made[-1]

    yield make
    for subscriber in made:
        subscriber.service.stop()


def config_file(tmp_path: Path, settings: Settings) -> Path:
    """A configuration file naming the dispatcher's database (all ``system-boot`` needs)."""
    path = tmp_path / f"boot-{uuid.uuid4().hex[:6]}.yml"
    database_url = settings.processdispatcher.database_url
    path.write_text(yaml.safe_dump({"processdispatcher": {"database_url": database_url}}))
    return path


def system_boot(config: Path, action: str) -> Any:
    """``pd-dispatcher --config FILE system-boot ACTION``."""
    return CliRunner().invoke(pd_dispatcher, ["--config", str(config), "system-boot", action])


def run_the_site(harness: Harness, subscriber: Subscriber) -> None:
    """p1-p4 running on one 4-slot agent, p5 and p6 waiting."""
    harness.define()
    harness.add_node("node1")
    subscribers = [[subscriber.name, "process_state"]]
    modes = {
        "p1": ("ABNORMAL", None),
        "p2": ("ALWAYS", None),
        "p3": ("NEVER", None),
        "p4": ("ALWAYS", OMIT),
        "p5": ("ABNORMAL", None),
        "p6": ("ABNORMAL", OMIT),
    }
    for upid, (restart_mode, configuration) in modes.items():
        harness.client.schedule_process(
            upid,
            DEFINITION,
            configuration=configuration,
            subscribers=subscribers,
            restart_mode=restart_mode,
        )
        harness.wait_state(upid, "500-RUNNING" if upid <= "p4" else "300-WAITING")


def check_boot_outcome(harness: Harness, subscriber: Subscriber) -> None:
    """The held-back and ended processes, notified; nodes and agents forgotten."""
    for upid in HELD:
        subscriber.wait(upid, "150-UNSCHEDULED_PENDING")
        record = harness.describe(upid)
        assert (record["state"], record["assigned"]) == ("150-UNSCHEDULED_PENDING", None)
    for upid in ENDED:
        subscriber.wait(upid, "700-TERMINATED")
        assert harness.describe(upid)["state"] == "700-TERMINATED"
    dump = harness.client.dump()
    assert "node1" not in dump["nodes"]
    assert not [r for r in dump["resources"].values() if r["node_id"] == "node1"]
    assert dump["system"]["state"] == "SYSTEM_BOOTING"
    assert dump["system"]["held_back"] == 3


def boot_while_running_then_end(harness: Harness, subscriber: Subscriber) -> None:
    """New and re-scheduled processes run while booting; ending the boot releases."""
    harness.add_node("node2", agents=2)  # 8 slots
    harness.client.schedule_process("p7", DEFINITION)
    harness.client.schedule_process("p3", DEFINITION, restart_mode="NEVER")
    assert harness.wait_state("p7", "500-RUNNING")["round"] == 0
    assert harness.wait_state("p3", "500-RUNNING")["round"] == 1
    for upid in HELD:  # still held back: the boot has not ended
        assert harness.describe(upid)["state"] == "150-UNSCHEDULED_PENDING"
    harness.client.set_system_boot(False)
    for upid in HELD:
        subscriber.wait(upid, "200-REQUESTED")
        assert harness.wait_state(upid, "500-RUNNING")["round"] == 1
    system = harness.client.dump()["system"]
    assert (system["state"], system["held_back"], system["system_boot"]) == ("OK", 0, False)
    for upid in ("p4", "p6"):
        assert harness.describe(upid)["state"] == "700-TERMINATED"


def test_system_restart_end_to_end_on_sqlite(
    tmp_path: Path, amqp_uri: str, subscriber_for: Callable[[Harness], Subscriber]
) -> None:
    settings = make_settings(tmp_path, amqp_uri)
    config = config_file(tmp_path, settings)
    # Given the site running
    before = Harness(settings, DispatcherService.build(settings))
    subscriber = subscriber_for(before)
    try:
        run_the_site(before, subscriber)
        # When a system boot is begun while the dispatcher runs, it is refused
        refused = system_boot(config, "begin")
        assert refused.exit_code == 1, refused.output
        assert "a dispatcher is running" in refused.output
        assert before.client.dump()["system"]["system_boot"] is False
    finally:
        before.close()  # the whole site is lost: agents and dispatcher
    # When the operator begins a system boot offline
    begun = system_boot(config, "begin")
    assert begun.exit_code == 0, begun.output
    assert "boot initialisation pending" in begun.output
    assert "system boot: on" in begun.output
    # and a dispatcher starts on the old database
    after = Harness(settings, DispatcherService.build(settings))
    try:
        # Then p1, p2 and p5 are held back and p3, p4 and p6 ended, each notified
        check_boot_outcome(after, subscriber)
        assert subscriber.states_of("p1").count("150-UNSCHEDULED_PENDING") == 1
        status = system_boot(config, "status")
        assert "state: SYSTEM_BOOTING" in status.output
        assert "held back: 3" in status.output
        # And new and re-scheduled processes run while booting; the end releases
        boot_while_running_then_end(after, subscriber)
    finally:
        after.close()


def test_a_start_without_the_flag_behaves_as_before(
    tmp_path: Path, amqp_uri: str, subscriber_for: Callable[[Harness], Subscriber]
) -> None:
    settings = make_settings(tmp_path, amqp_uri)
    config = config_file(tmp_path, settings)
    before = Harness(settings, DispatcherService.build(settings))
    subscriber = subscriber_for(before)
    try:
        run_the_site(before, subscriber)
    finally:
        before.close()
    # Given a boot begun and ended offline before any dispatcher started
    assert system_boot(config, "begin").exit_code == 0
    ended = system_boot(config, "end")
    assert ended.exit_code == 0, ended.output
    assert "system boot: off" in ended.output
    # When the dispatcher starts
    after = Harness(settings, DispatcherService.build(settings))
    try:
        # Then nothing is held back or ended: the processes keep their records
        wait_for(lambda: after.client.dump()["system"]["state"] == "OK", what="state OK")
        for upid in ("p1", "p2", "p3", "p4"):
            assert after.describe(upid)["state"] == "500-RUNNING"
        assert subscriber.states_of("p1") == ["350-ASSIGNED", "500-RUNNING"]  # from before
    finally:
        after.close()


def test_schedule_process_waits_for_a_pending_boot_initialisation(
    tmp_path: Path, amqp_uri: str
) -> None:
    settings = make_settings(tmp_path, amqp_uri)
    config = config_file(tmp_path, settings)
    assert system_boot(config, "begin").exit_code == 0
    # Given a dispatcher whose leader does not initialise (its singletons never run)
    service = DispatcherService.build(settings)
    service.elector = None
    service.core.boot_wait = 0.5
    harness = Harness(settings, service)
    try:
        harness.define()
        # When a process is scheduled, Then it is refused with a clear error
        with pytest.raises(BadRequestError, match="initialising a system boot"):
            harness.client.schedule_process("early", DEFINITION)
        # and nothing was stored
        assert harness.client.describe_process("early") is None
    finally:
        harness.close()


@pytest.mark.postgres
def test_system_restart_with_two_dispatchers_initialises_once(
    tmp_path: Path,
    amqp_uri: str,
    postgres_url: str,
    subscriber_for: Callable[[Harness], Subscriber],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sysname = f"boot{uuid.uuid4().hex[:8]}"

    def settings_of(name: str) -> Settings:
        return make_settings(tmp_path / name, amqp_uri, sysname=sysname, database_url=postgres_url)

    first_settings, second_settings = settings_of("a"), settings_of("b")
    config = config_file(tmp_path, first_settings)
    before = Harness(first_settings, DispatcherService.build(first_settings))
    subscriber = subscriber_for(before)
    try:
        run_the_site(before, subscriber)
    finally:
        before.close()
    assert system_boot(config, "begin").exit_code == 0
    # When two dispatchers start on the database at once
    caplog.set_level(logging.INFO, logger="dispatcher.doctor")
    first = DispatcherService.build(first_settings)
    second = DispatcherService.build(second_settings)
    second_harness = Harness(second_settings, second, start=False)
    first.start()
    second.start()
    harness = Harness(first_settings, first, start=False)
    try:
        # Then the boot outcome is the legacy one
        check_boot_outcome(harness, subscriber)
        # and the initialisation ran once: one notification each, one log line
        for upid in HELD:
            assert subscriber.states_of(upid).count("150-UNSCHEDULED_PENDING") == 1
        for upid in ENDED:
            assert subscriber.states_of(upid).count("700-TERMINATED") == 1
        booted = [
            r
            for r in caplog.records
            if r.getMessage().startswith("dispatcher initialised: SYSTEM_BOOTING")
        ]
        assert len(booted) == 1
        # When a process runs and the leader stops, the other leads without
        # initialising again: the running process is left alone
        harness.add_node("node2", agents=2)
        harness.client.schedule_process("p7", DEFINITION)
        harness.wait_state("p7", "500-RUNNING")
        leader, other = (first, second) if first.is_leader else (second, first)
        other_harness = second_harness if other is second else harness
        leader.stop()
        wait_for(lambda: other.is_leader, what="the other dispatcher leading")
        other_harness.client.set_system_boot(False)
        for upid in HELD:
            other_harness.wait_state(upid, "500-RUNNING")
        assert other_harness.describe("p7")["state"] == "500-RUNNING"
        assert other_harness.describe("p7")["round"] == 0
        booted = [
            r
            for r in caplog.records
            if r.getMessage().startswith("dispatcher initialised: SYSTEM_BOOTING")
        ]
        assert len(booted) == 1
    finally:
        for agent in harness.agents.values():
            agent.stop()
        harness.client.close()
        second_harness.client.close()
        second.stop()
        first.stop()


def test_pd_cli_system_boot_status_and_engine_list_show_the_boot(
    tmp_path: Path, amqp_uri: str, subscriber_for: Callable[[Harness], Subscriber]
) -> None:
    settings = make_settings(tmp_path, amqp_uri)
    config = config_file(tmp_path, settings)
    before = Harness(settings, DispatcherService.build(settings))
    subscriber = subscriber_for(before)
    try:
        run_the_site(before, subscriber)
    finally:
        before.close()
    assert system_boot(config, "begin").exit_code == 0
    after = Harness(settings, DispatcherService.build(settings))
    cli_config = tmp_path / "cli.yml"
    cli_config.write_text(
        yaml.safe_dump(
            {
                "server": {"amqp": {"uri": amqp_uri}},
                "dashi": {"sysname": settings.dashi.sysname},
            }
        )
    )

    def cli(*args: str) -> Any:
        result = CliRunner().invoke(pd_cli, ["--config", str(cli_config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    try:
        check_boot_outcome(after, subscriber)
        # Then the status shows the state and the held-back count
        status = cli("system-boot", "status")
        assert "state: SYSTEM_BOOTING" in status and "held back: 3" in status
        # and the need of engine1 counts the three held-back processes:
        # max(base_need 1, ceil(3 / 4)) = 1 node, why: held_back 3
        engines = after.client.list_engines()
        why = engines["engine1"]["status"]["why"]
        assert (why["held_back"], why["queued"], why["running"]) == (3, 0, 0)
        assert engines["engine1"]["status"]["need"] == 1
        assert engines["engine2"]["status"]["why"]["held_back"] == 0
        listing = cli("--json", "engine", "list")
        assert '"held_back": 3' in listing
        table = cli("engine", "list")
        assert "need" in table and "held_back" in table
        described = cli("engine", "describe", "engine1")
        assert "need: 1 node(s) (informational: static site)" in described
        assert "held_back=3" in described
        # When the boot ends through pd-cli
        cli("system-boot", "end")
        wait_for(lambda: after.client.dump()["system"]["state"] == "OK", what="the boot ended")
        for upid in HELD:
            assert after.describe(upid)["state"] in ("200-REQUESTED", "300-WAITING")
    finally:
        after.close()

"""Key rotation, executed as docs/security.md writes it.

The five ``# rotation step N: dispatcher|agent`` blocks of docs/security.md are
read and applied in order to a dispatcher and an agent on RabbitMQ (``OLD`` and
``NEW`` are the masters; ``{agent-key NAME}`` and ``{agent-key --next NAME}`` are
what ``pd-dispatcher agent-key`` prints with the dispatcher's configuration of the
time). After the start and after each step, the program changed is restarted and
a new process is scheduled: it runs (a launch signed by the dispatcher and taken by
the agent, heartbeats signed by the agent and taken by the dispatcher), and
nothing is refused.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cli.dispatcher import main as pd_dispatcher
from dispatcher.client import ProcessDispatcherClient
from dispatcher.service import DispatcherService
from eeagent.agent import EEAgent
from eeagent.fake import FakeProcessControl
from eeagent.nonces import FileNonceJournal
from eeagent.service import AgentService
from pdcommon.settings import Settings, deep_merge, load_settings
from pdcommon.wire import agent_signer, agent_verifier, broker_config
from tests.eeagent.conftest import sleeper
from tests.service.conftest import wait_for

pytestmark = pytest.mark.rabbitmq

DOC = Path(__file__).parents[2] / "docs" / "security.md"
MASTERS = {"OLD": "old-master-secret-0123456789", "NEW": "new-master-secret-9876543210"}
AGENT = "rot-agent"
_STEP = re.compile(r"```yaml\n *# rotation step (\d): (dispatcher|agent)\n(.*?)```", re.S)


def documented_steps() -> list[tuple[int, str, str]]:
    found = _STEP.findall(DOC.read_text())
    steps = [(int(n), who, textwrap.dedent(text)) for n, who, text in found]
    assert [n for n, _, _ in steps] == [1, 2, 3, 4, 5]
    return steps


class Installation:
    def __init__(self, tmp_path: Path, amqp_uri: str, sysname: str) -> None:
        self.tmp_path = tmp_path
        self.base: dict[str, Any] = {
            "server": {"amqp": {"uri": amqp_uri}},
            "dashi": {"sysname": sysname},
        }
        self.dispatcher_security: dict[str, Any] = {"hmac_key": MASTERS["OLD"]}
        self.agent_security: dict[str, Any] = {}
        self.dispatcher: DispatcherService | None = None
        self.agent: AgentService | None = None
        self.scheduled = 0

    def dispatcher_config(self) -> dict[str, Any]:
        return deep_merge(
            self.base,
            {
                "state_dir": str(self.tmp_path / "pd"),
                "processdispatcher": {
                    "database_url": f"sqlite:///{self.tmp_path}/pd.db",
                    "engines": {"e1": {"slots": 10}},
                },
                "provisioner": {"driver": "static"},
                "security": self.dispatcher_security,
            },
        )

    def settings(self, config: dict[str, Any]) -> Settings:
        path = self.tmp_path / "settings.yml"
        path.write_text(yaml.safe_dump(config))
        return load_settings([path])

    def agent_key(self, *args: str) -> str:
        """What ``pd-dispatcher agent-key ARGS`` prints with the dispatcher's configuration."""
        path = self.tmp_path / "dispatcher.yml"
        path.write_text(yaml.safe_dump(self.dispatcher_config()))
        result = CliRunner().invoke(pd_dispatcher, ["--config", str(path), "agent-key", *args])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    def restart_dispatcher(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.stop()
        self.dispatcher = DispatcherService.build(self.settings(self.dispatcher_config()))
        self.dispatcher.start()

    def restart_agent(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        settings = self.settings(
            deep_merge(
                self.base,
                {"state_dir": str(self.tmp_path / "agent"), "security": self.agent_security},
            )
        )
        self.agent = AgentService(
            EEAgent(name=AGENT, node_id="n1", slots=10, control=FakeProcessControl()),
            broker=broker_config(settings),
            pd_name="process_dispatcher",
            heartbeat=1,
            verifier=agent_verifier(settings, FileNonceJournal(self.tmp_path / "nonces.log")),
            signer=agent_signer(settings, AGENT),
        )
        self.agent.start()

    def work_goes_on(self) -> None:
        """A newly scheduled process runs."""
        self.scheduled += 1
        upid = f"p{self.scheduled}"
        settings = self.settings(self.dispatcher_config())
        with ProcessDispatcherClient.from_settings(settings, timeout=20) as client:
            client.schedule_process(upid, "D")
            wait_for(
                lambda: (client.describe_process(upid) or {}).get("state") == "500-RUNNING",
                what=f"{upid} running",
            )

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()


def fill(text: str, install: Installation) -> dict[str, Any]:
    for placeholder, args in (
        ("{agent-key --next NAME}", ("--next", AGENT)),
        ("{agent-key NAME}", (AGENT,)),
    ):
        if placeholder in text:
            text = text.replace(placeholder, install.agent_key(*args))
    security: dict[str, Any] = yaml.safe_load(text)["security"]
    return {k: MASTERS.get(v, v) if isinstance(v, str) else v for k, v in security.items()}


def test_a_rotation_done_as_documented_never_stops_work(
    tmp_path: Path, amqp_uri: str, sysname: str, caplog: pytest.LogCaptureFixture
) -> None:
    install = Installation(tmp_path, amqp_uri, sysname)
    try:
        # Given a dispatcher with master OLD and an agent with its key under OLD
        install.agent_security = {"agent_key": install.agent_key(AGENT)}
        install.restart_dispatcher()
        settings = install.settings(install.dispatcher_config())
        with ProcessDispatcherClient.from_settings(settings, timeout=20) as client:
            client.node_state("n1", "pd_domain_e1", "600-RUNNING")
            client.create_definition("D", "supd", sleeper())
        install.restart_agent()
        with caplog.at_level(logging.WARNING):
            install.work_goes_on()
            # When each documented step is applied, its program restarted
            for _, who, text in documented_steps():
                security = fill(text, install)
                if who == "dispatcher":
                    install.dispatcher_security = security
                    install.restart_dispatcher()
                else:
                    install.agent_security = security
                    install.restart_agent()
                # Then work goes on
                install.work_goes_on()
        # And nothing was refused; the old master is gone from both in the end
        assert not [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert install.dispatcher_security == {"hmac_key": MASTERS["NEW"]}
        assert set(install.agent_security) == {"agent_key"}
    finally:
        install.stop()

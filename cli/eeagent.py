"""``pd-eeagent``: the execution engine agent."""

from __future__ import annotations

import logging
import os
import threading

import click

from cli.common import (
    CONFIG_HELP,
    LOG_LEVEL_HELP,
    configure_logging,
    reported_errors,
    secure_state_dir,
    settings_from_options,
    stop_on_signals,
)
from pdcommon.settings import AGENT_SECTIONS
from pdcommon.settings import LEGACY_IGNORED_KEYS as SHARED_LEGACY_KEYS
from pdcommon.wire import broker_config

__all__ = ["main"]

HELP = """Run an execution engine agent: processes under a private supervisord.

The agent serves launch_process, terminate_process, restart_process, cleanup,
dump_state and get_process_logs on the queue named eeagent.name, and sends
heartbeats to the dispatcher (pd.name) at start-up, every eeagent.heartbeat
seconds and after every process state change.

Its supervisord, state file and process logs live in
<eeagent.launch_type.supd_directory>/<eeagent.name>/ (supd_directory defaults to
<state_dir>/eeagent). An agent killed with SIGKILL and started again reattaches to
the processes still running there.

SIGTERM or SIGINT stops the agent cleanly: its processes and supervisord are
stopped (reported 850-FAILED "stopped: the agent shut down") unless
eeagent.leave_running_on_shutdown is true, in which case they keep running for
the next agent to reattach to.

Exit status: 0 after a clean stop, 1 if the agent cannot start (e.g. the broker
refuses its login), 2 for a usage or configuration error.
"""

NAME_HELP = "Agent name: its queue and heartbeat id (eeagent.name). No '.' allowed."
NODE_ID_HELP = "Node id sent in heartbeats (eeagent.node_id)."
SLOTS_HELP = "How many processes may run at once (eeagent.slots)."
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_log_level(ctx: click.Context, param: click.Parameter, value: str) -> str:
    # A callback rather than click.Choice, so that --help (and docs/cli.md) keep
    # their wording; an unknown level would otherwise fall back to INFO silently.
    if value.lower() not in LOG_LEVELS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value.lower()


@click.command(help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_files", multiple=True, metavar="FILE", help=CONFIG_HELP)
@click.option("--name", metavar="NAME", help=NAME_HELP)
@click.option("--node-id", metavar="ID", help=NODE_ID_HELP)
@click.option("--slots", type=click.IntRange(min=1), metavar="N", help=SLOTS_HELP)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    callback=_check_log_level,
    help=LOG_LEVEL_HELP,
)
def main(
    config_files: tuple[str, ...],
    name: str | None,
    node_id: str | None,
    slots: int | None,
    log_level: str,
) -> None:
    from eeagent.service import LEGACY_IGNORED_KEYS, run_agent

    settings = settings_from_options(
        config_files,
        {"eeagent.name": name, "eeagent.node_id": node_id, "eeagent.slots": slots},
        checked_sections=AGENT_SECTIONS,
        accepted=SHARED_LEGACY_KEYS | {f"eeagent.{key}" for key in LEGACY_IGNORED_KEYS},
    )
    # The agent's home defaults to <state_dir>/eeagent; the embedded broker lives there too.
    if settings.eeagent.launch_type.supd_directory is None or broker_config(settings).is_embedded:
        secure_state_dir(settings)
    configure_logging(settings, log_level)
    stop = threading.Event()
    _stop_when_removed(config_files, stop)
    with stop_on_signals(stop), reported_errors():
        run_agent(settings, dict(os.environ), stop)


#: Seconds between two looks for the agent's configuration files.
CONFIG_CHECK_SECONDS = 5.0


def _stop_when_removed(config_files: tuple[str, ...], stop: threading.Event) -> None:
    """Stop the agent (as SIGTERM does) once a configuration file it was started with
    is gone at two looks in a row: its node was removed (a local node's directory
    deleted), and nothing will ever adopt or stop it otherwise."""
    paths = [os.path.abspath(path) for path in config_files]
    if not paths:
        return

    def watch() -> None:
        missing = 0
        while not stop.wait(CONFIG_CHECK_SECONDS):
            missing = missing + 1 if not all(os.path.exists(p) for p in paths) else 0
            if missing >= 2:
                logging.getLogger("eeagent").warning(
                    "configuration file removed (%s): stopping", ", ".join(paths)
                )
                stop.set()
                return

    threading.Thread(target=watch, name="pd-config-watch", daemon=True).start()


if __name__ == "__main__":  # pragma: no cover - python -m cli.eeagent
    main()

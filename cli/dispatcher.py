"""``pd-dispatcher``: the Process Dispatcher daemon."""

from __future__ import annotations

import logging
import sys
import threading

import click

from cli.common import (
    CONFIG_HELP,
    LOG_LEVEL_HELP,
    check_state_dir,
    configure_logging,
    reported_errors,
    secure_state_dir,
    settings_from_options,
    stop_on_signals,
)
from dashi.broker import mask_uri
from pdcommon.auth import principal_key
from pdcommon.settings import DISPATCHER_SECTIONS, LEGACY_IGNORED_KEYS, Settings, unknown_keys
from pdcommon.wire import agent_key_hex, broker_config

log = logging.getLogger(__name__)

HELP = """Run the Process Dispatcher daemon.

With no options it runs on the embedded defaults: state, SQLite database and a
broker-less transport under the state directory ($PD_STATE_DIR, else
~/.local/state/process-dispatcher), reachable by `pd-cli` and local agents with no
configuration. Point it at RabbitMQ and PostgreSQL with a configuration file
(server.amqp.uri, processdispatcher.database_url) or PD_AMQP_URI/PD_DATABASE_URL.

The database schema is migrated to the latest revision at start; `pd-dispatcher db
upgrade` does it explicitly. SIGTERM or SIGINT stops the daemon cleanly.

Exit status: 0 after a clean stop, 1 if the daemon cannot start (the broker or the
database unreachable or refusing access), 2 for a usage or configuration error.
"""


def _settings(ctx: click.Context) -> Settings:
    """The settings of the command line's files; an unknown key of the dispatcher's
    sections (legacy ones apart) is a configuration error."""
    return settings_from_options(ctx.obj["config_files"], checked_sections=DISPATCHER_SECTIONS)


def _report_unknown_keys(settings: Settings) -> None:
    for key in unknown_keys(settings):
        if key in LEGACY_IGNORED_KEYS:
            log.info("ignoring legacy configuration key %s (not used by this dispatcher)", key)


def _uses_state_dir(settings: Settings) -> bool:
    """Whether the daemon keeps anything under ``state_dir``: the embedded broker,
    the default SQLite database or the local provisioner's agents."""
    provisioner = settings.provisioner
    drivers = {provisioner.driver}
    drivers.update(site.get("driver", provisioner.driver) for site in provisioner.sites.values())
    return (
        broker_config(settings).is_embedded
        or settings.processdispatcher.database_url is None
        or "local" in drivers
    )


@click.group(invoke_without_command=True, help=HELP)
@click.option("--config", "config_files", multiple=True, metavar="FILE", help=CONFIG_HELP)
@click.option("--log-level", default="info", show_default=True, help=LOG_LEVEL_HELP)
@click.pass_context
def main(ctx: click.Context, config_files: tuple[str, ...], log_level: str) -> None:
    ctx.obj = {"config_files": config_files, "log_level": log_level}
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command(help="Serve RPCs until SIGTERM or SIGINT (the default command).")
@click.pass_context
def serve(ctx: click.Context) -> None:
    from dispatcher.service import DispatcherService
    from eeagent.supervisor import stop_left_supervisord

    settings = _settings(ctx)
    if _uses_state_dir(settings):
        secure_state_dir(settings)
    configure_logging(settings, ctx.obj["log_level"])
    _report_unknown_keys(settings)
    stop = threading.Event()
    with stop_on_signals(stop):
        with reported_errors():
            service = DispatcherService.build(settings, stop_supervisord=stop_left_supervisord)
            service.start()
        try:
            stop.wait()
        finally:
            service.stop()


@main.group(help="Database schema management (Alembic migrations).")
def db() -> None:
    pass


@db.command(help="Migrate the database to the latest schema revision.")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    from dispatcher.store.migrate import upgrade as run_upgrade

    settings = _settings(ctx)
    if settings.processdispatcher.database_url is None:
        secure_state_dir(settings)
    configure_logging(settings, ctx.obj["log_level"])
    with reported_errors():
        run_upgrade(settings.database_url, revision)
    click.echo(f"{mask_uri(settings.database_url)}: at revision {revision}")


@db.command(help="Print the database's current schema revision.")
@click.pass_context
def current(ctx: click.Context) -> None:
    from dispatcher.store.migrate import current as get_current

    settings = _settings(ctx)
    with reported_errors():
        if settings.processdispatcher.database_url is None:
            check_state_dir(settings)
        click.echo(get_current(settings.database_url) or "(empty database)")


SYSTEM_BOOT_HELP = """Whole-system restart, with no dispatcher running (docs/operations.md).

`begin` sets the system-boot flag in the database and marks a boot-mode
initialisation for the next start: the first dispatcher to lead then holds
restartable processes back (150-UNSCHEDULED_PENDING), ends the others
(700-TERMINATED), forgets every node and agent, and stays SYSTEM_BOOTING until
`pd-cli system-boot end`. `begin` and `end` refuse (exit 1) while a dispatcher is
running on the database; `status` works either way.
"""


@main.group("system-boot", help=SYSTEM_BOOT_HELP)
def system_boot() -> None:
    pass


def _offline_boot(ctx: click.Context, action: str) -> None:
    from dispatcher import system_boot as boot

    settings = _settings(ctx)
    if settings.processdispatcher.database_url is None:
        secure_state_dir(settings)
    configure_logging(settings, ctx.obj["log_level"])
    run = {
        "begin": boot.begin_system_boot,
        "end": boot.end_system_boot,
        "status": boot.system_boot_status,
    }[action]
    with reported_errors():
        status = run(settings.database_url)
    click.echo(_boot_status_text(status))


def _boot_status_text(status: dict[str, object]) -> str:
    pending = " (boot initialisation pending: runs at the next start)"
    return (
        f"state: {status['state']}"
        + (pending if status["boot_init_pending"] else "")
        + f"\nsystem boot: {'on' if status['system_boot'] else 'off'}"
        + f"\nheld back: {status['held_back']} process(es) in 150-UNSCHEDULED_PENDING"
    )


@system_boot.command("begin", help="Set the boot flag and mark a boot initialisation.")
@click.pass_context
def system_boot_begin(ctx: click.Context) -> None:
    _offline_boot(ctx, "begin")


@system_boot.command("end", help="Clear the boot flag (the next start releases processes).")
@click.pass_context
def system_boot_end(ctx: click.Context) -> None:
    _offline_boot(ctx, "end")


@system_boot.command("status", help="Show the dispatcher state and held-back processes.")
@click.pass_context
def system_boot_status(ctx: click.Context) -> None:
    _offline_boot(ctx, "status")


AGENT_KEY_HELP = """Print the key of agent NAME (hex), derived from security.hmac_key.

Put it in that agent's configuration as security.agent_key (mode 0600): it lets the
agent sign its own heartbeats and take commands signed for it, and nothing else.
With --next, the key derived from security.next_hmac_key (security.next_agent_key
during a rotation, see docs/security.md). Agents the provisioner starts get theirs
written for them.
"""


@main.command("agent-key", help=AGENT_KEY_HELP)
@click.argument("name")
@click.option("--next", "next_master", is_flag=True, help="Derive from security.next_hmac_key.")
@click.pass_context
def agent_key(ctx: click.Context, name: str, next_master: bool) -> None:
    settings = _settings(ctx)
    try:
        click.echo(agent_key_hex(settings, name, next_master=next_master))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


PRINCIPAL_HASH_HELP = """Print the secret_hash of a principal's secret, read from standard input.

security.principals.NAME.secret_hash may hold it instead of the secret itself.
"""


@main.command("principal-hash", help=PRINCIPAL_HASH_HELP)
def principal_hash() -> None:
    secret = sys.stdin.readline().rstrip("\n")
    if not secret:
        raise click.UsageError("give the secret on standard input")
    click.echo(principal_key(secret).hex())

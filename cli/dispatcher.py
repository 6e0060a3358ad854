"""``pd-dispatcher``: the Process Dispatcher daemon."""

from __future__ import annotations

import threading

import click

from cli.common import (
    CONFIG_HELP,
    LOG_LEVEL_HELP,
    configure_logging,
    secure_state_dir,
    settings_from_options,
    stop_on_signals,
)
from dispatcher.errors import DispatcherError
from dispatcher.rpc.broker import mask_uri

HELP = """Run the Process Dispatcher daemon.

With no options it runs on the embedded defaults: state, SQLite database and a
broker-less transport under the state directory ($PD_STATE_DIR, else
~/.local/state/process-dispatcher), reachable by `pd-cli` and local agents with no
configuration. Point it at RabbitMQ and PostgreSQL with a configuration file
(server.amqp.uri, processdispatcher.database_url) or PD_AMQP_URI/PD_DATABASE_URL.

The database schema is migrated to the latest revision at start; `pd-dispatcher db
upgrade` does it explicitly. SIGTERM or SIGINT stops the daemon cleanly.
"""


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

    settings = settings_from_options(ctx.obj["config_files"])
    secure_state_dir(settings)
    configure_logging(settings, ctx.obj["log_level"])
    stop = threading.Event()
    with stop_on_signals(stop):
        try:
            service = DispatcherService.build(settings)
            service.start()
        except DispatcherError as exc:
            raise click.ClickException(str(exc)) from None
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

    settings = settings_from_options(ctx.obj["config_files"])
    secure_state_dir(settings)
    configure_logging(settings, ctx.obj["log_level"])
    try:
        run_upgrade(settings.database_url, revision)
    except DispatcherError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{mask_uri(settings.database_url)}: at revision {revision}")


@db.command(help="Print the database's current schema revision.")
@click.pass_context
def current(ctx: click.Context) -> None:
    from dispatcher.store.migrate import current as get_current

    settings = settings_from_options(ctx.obj["config_files"])
    try:
        click.echo(get_current(settings.database_url) or "(empty database)")
    except DispatcherError as exc:
        raise click.ClickException(str(exc)) from None

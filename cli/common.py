"""Helpers shared by the three commands: settings from options, logging, signals."""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

import click

from dispatcher.errors import ConfigError
from dispatcher.settings import Settings, load_settings

__all__ = [
    "CONFIG_HELP",
    "LOG_LEVEL_HELP",
    "configure_logging",
    "settings_from_options",
    "stop_on_signals",
]

CONFIG_HELP = (
    "YAML configuration file; may be repeated, later files are deep-merged over earlier "
    "ones. PD_AMQP_URI, PD_DATABASE_URL and PD_STATE_DIR override the files."
)
LOG_LEVEL_HELP = "Logging level when the configuration has no 'logging' section."

#: Seconds between the signal watcher's looks (the delay of a stop signal).
_SIGNAL_POLL = 0.1

#: Exit status for usage and configuration errors (click's convention).
EXIT_USAGE = 2


def settings_from_options(
    config_files: Sequence[str], overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build settings from files, the environment and command-line overrides.

    Exits with status 2 and a one-line message on a configuration error.
    """
    try:
        return load_settings(
            config_files,
            os.environ,
            {key: value for key, value in (overrides or {}).items() if value is not None},
        )
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None


def configure_logging(settings: Settings, level: str) -> None:
    """Apply the configuration's ``logging`` dictConfig, or a plain stderr format."""
    if settings.logging:
        logging.config.dictConfig(settings.logging)
        return
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # kombu and amqp are chatty at INFO about reconnections we already report.
    logging.getLogger("amqp").setLevel(logging.WARNING)
    logging.getLogger("kombu").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Set ``stop`` on SIGTERM or SIGINT while the block runs.

    The handler only records the signal: it runs in the main thread, possibly while
    that thread holds a lock it would need (``stop.wait()`` holds the event's, a
    ``Thread.start()`` the interpreter's thread table), so it takes no lock at all.
    A watcher thread sees the record and sets the event.
    """
    received: list[int] = []
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)  # a list append takes no lock a handler could wait on

    def watch() -> None:
        while not received and not done.wait(_SIGNAL_POLL):
            pass
        if received:
            stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

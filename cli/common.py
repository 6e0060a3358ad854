"""Helpers shared by the three commands: settings from options, logging, signals,
and the one-line reports of start-up failures."""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import select
import signal
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

import click

from pdcommon.errors import ConfigError, DispatcherError
from pdcommon.settings import (
    LEGACY_IGNORED_KEYS,
    Settings,
    check_unknown_keys,
    load_settings,
)

__all__ = [
    "CONFIG_HELP",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "LOG_LEVEL_HELP",
    "check_state_dir",
    "configure_logging",
    "reported_errors",
    "secure_state_dir",
    "settings_from_options",
    "stop_on_signals",
]

CONFIG_HELP = (
    "YAML configuration file; may be repeated, later files are deep-merged over earlier "
    "ones. PD_AMQP_URI, PD_DATABASE_URL and PD_STATE_DIR override the files."
)
LOG_LEVEL_HELP = "Logging level when the configuration has no 'logging' section."

#: Seconds between the signal watcher's looks at whether the block has ended.
_SIGNAL_POLL = 0.1

#: Exit status of a daemon that cannot start (broker or database unreachable or refusing).
EXIT_FAILURE = 1
#: Exit status for usage and configuration errors (click's convention).
EXIT_USAGE = 2


def settings_from_options(
    config_files: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    checked_sections: Sequence[str] = (),
    accepted: Collection[str] = LEGACY_IGNORED_KEYS,
) -> Settings:
    """Build settings from files, the environment and command-line overrides.

    A key of ``checked_sections`` that no setting reads and ``accepted`` does not
    list is a configuration error (:func:`~pdcommon.settings.check_unknown_keys`).
    Exits with status 2 and a one-line message on a configuration error.
    """
    try:
        settings = load_settings(
            config_files,
            os.environ,
            {key: value for key, value in (overrides or {}).items() if value is not None},
        )
        check_unknown_keys(settings, checked_sections, accepted)
        return settings
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None


def check_state_dir(settings: Settings) -> None:
    """Create the state directory if it does not exist, and check that it can be used.

    Commands call it before anything is written there, so that a ``state_dir`` that
    is a file, lies under a file or cannot be written is one line naming the path,
    not a traceback from whichever component touches it first.

    Raises:
        ConfigError: the directory cannot be created or written.
    """
    path = settings.state_dir.expanduser().absolute()

    def problem(text: str) -> ConfigError:
        return ConfigError(f"configuration key state_dir: {path} {text}")

    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise problem("is not a directory") from None
    except NotADirectoryError:
        blocker = next(
            (parent for parent in path.parents if parent.exists() and not parent.is_dir()),
            None,
        )
        raise problem(f"cannot be created: {blocker or path.parent} is not a directory") from None
    except OSError as exc:
        raise problem(f"cannot be created: {exc.strerror}") from None
    if not path.is_dir():
        raise problem("is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise problem("is not writable")


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a :class:`~pdcommon.errors.DispatcherError` into one line and an exit status.

    ``Error: <message>`` goes to stderr (messages never contain credentials); the
    status is 2 for a configuration error (:class:`~pdcommon.errors.ConfigError`),
    1 for anything else (the broker or the database unreachable or refusing access).
    """
    try:
        yield
    except DispatcherError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE) from None


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

    The signal is taken from the interpreter's wakeup file descriptor by a watcher
    thread, not by a Python-level handler: such a handler runs only when the main
    thread executes bytecode, which a main thread blocked in ``stop.wait()`` does
    not when the kernel delivers the signal to another thread; and it may run
    while the main thread holds the event's lock, so it could not set the event.
    The C-level handler writes the signal number to the descriptor at once,
    whichever thread receives it.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    done = threading.Event()

    def ignore(signum: int, frame: FrameType | None) -> None:
        """Keep the default action (exit) from happening; the watcher acts.

        It also tells the watcher itself: a signal that arrives after this handler is
        installed but before the wakeup descriptor is set is written nowhere else,
        and the process would run on, deaf to it. A second write is harmless.
        """
        with contextlib.suppress(OSError):
            os.write(write_fd, bytes([signum]))

    def watch() -> None:
        while not done.is_set():
            ready, _, _ = select.select([read_fd], [], [], _SIGNAL_POLL)
            if not ready:
                continue
            try:
                received = os.read(read_fd, 64)
            except BlockingIOError:
                continue
            if any(sig in received for sig in (signal.SIGTERM, signal.SIGINT)):
                stop.set()

    previous = {sig: signal.signal(sig, ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="signal-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(1.0)
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(read_fd)
        os.close(write_fd)


def secure_state_dir(settings: Settings) -> None:
    """Create the state directory, check it can be used (:func:`check_state_dir`),
    make this process's files private and refuse a state directory others can write.

    Exits with status 2 and a one-line message when the state directory is unusable
    or unsafe.
    """
    from pdcommon.state_dir import PRIVATE_UMASK
    from pdcommon.state_dir import secure_state_dir as secure

    os.umask(PRIVATE_UMASK)  # before the directory is first created
    try:
        check_state_dir(settings)
        secure(settings.state_dir)
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE) from None

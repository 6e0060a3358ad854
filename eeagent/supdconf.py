"""Writing supervisord configuration that passes every byte through unchanged.

supervisord reads its configuration with Python's ``RawConfigParser`` set to strip
inline comments (``;`` or ``#`` after whitespace) and surrounding whitespace, then
``%``-expands most values (``%(here)s`` is even replaced textually before that),
splits ``command`` with ``shlex.split`` and parses ``environment`` with a
non-POSIX ``shlex``. This module quotes values so that all of that gives back
exactly what the agent was asked to run:

* ``command``: each argument is shell-quoted piece by piece, with ``;``, ``#`` and
  newline each quoted on its own (so a ``;`` always follows a quote, and every
  continuation line of a multi-line value starts and ends with one, which the
  parser's stripping cannot touch) and every ``%`` doubled outside quotes, so
  neither the comment stripping nor ``%(here)s`` can match;
* ``environment``: ``KEY="value"`` (or single quotes), ``%`` doubled;
* paths: ``%`` doubled.

Values that cannot be written that way (an environment value starting or ending
with a quote, holding both kinds of quote, or a whitespace-then-``;``; a directory
with surrounding whitespace...) are reported by :func:`config_value` and
:func:`environment_value` returning ``None``; the adapter then passes them on the
command line of ``env`` instead (see :func:`shim_argv`), which is exact.
"""

from __future__ import annotations

import configparser
import io
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eeagent.control import ProgramSpec

__all__ = [
    "ENV_SHIM",
    "LOG_BACKUPS",
    "PROGRAM_DEFAULTS",
    "SupervisordFiles",
    "command_line",
    "config_value",
    "environment_value",
    "program_options",
    "render_config",
    "shim_argv",
]

#: The coreutils ``env`` used to pass what supervisord's configuration cannot hold.
ENV_SHIM = "/usr/bin/env"
#: Seconds supervisord waits after SIGTERM before SIGKILL (legacy: 180; the agent
#: re-signals a lost stop itself, so a shorter wait only bounds slow shutdowns).
STOP_WAIT_SECONDS = 10
#: Size at which a captured stdout/stderr file is rotated, and backups kept: a
#: process's output takes at most 2 streams x (1 + LOG_BACKUPS) x 10 MB = 40 MB,
#: an agent's at most 40 MB x its slots.
LOG_MAX_BYTES = "10MB"
LOG_BACKUPS = 1
#: supervisord's own log (``supd.log``): rotated at 1 MB, one backup.
SUPD_LOG_MAX_BYTES = "1MB"
SUPD_LOG_BACKUPS = 1
#: supervisord's own log level. It must keep the WARN line ``exited: NAME (terminated
#: by SIGKILL; not expected)``: the adapter reads which signal killed a program there.
SUPD_LOG_LEVEL = "info"

#: Options every program gets. ``autostart=false`` + an explicit ``startProcess``
#: avoids the double start of autostart-plus-start; ``startsecs=0`` makes a spawned
#: process RUNNING at once; ``startretries=0`` and ``autorestart=false`` leave
#: restarts to the dispatcher; stopping the whole process group reaches grandchildren.
PROGRAM_DEFAULTS: dict[str, str] = {
    "autostart": "false",
    "autorestart": "false",
    "startsecs": "0",
    "startretries": "0",
    "stopsignal": "TERM",
    "stopwaitsecs": str(STOP_WAIT_SECONDS),
    "stopasgroup": "true",
    "killasgroup": "true",
    "redirect_stderr": "false",
    "stdout_logfile_maxbytes": LOG_MAX_BYTES,
    "stdout_logfile_backups": str(LOG_BACKUPS),
    "stderr_logfile_maxbytes": LOG_MAX_BYTES,
    "stderr_logfile_backups": str(LOG_BACKUPS),
}

_SPECIAL = re.compile(r"([;#%\n])")
_HERE = "%(here)s"


def _survives_parser(text: str) -> bool:
    """Whether ``RawConfigParser`` (as supervisord sets it up) reads ``text`` back whole."""
    if "\n" in text or "\r" in text or "\x00" in text:
        return False
    if text != text.strip():
        return False
    for index, char in enumerate(text):
        if char in ";#" and index > 0 and text[index - 1].isspace():
            return False
    return True


def config_value(text: str) -> str | None:
    """``text`` escaped for a ``%``-expanded supervisord option, or ``None`` if impossible."""
    escaped = text.replace("%", "%%")
    if not _survives_parser(escaped) or _HERE in escaped:
        return None
    return escaped


def _quote_word(arg: str) -> str:
    if not arg:
        return "''"
    pieces = []
    for piece in _SPECIAL.split(arg):
        if not piece:
            continue
        if piece == "%":
            pieces.append("%%")
        elif piece in (";", "#", "\n"):
            pieces.append(f"'{piece}'")
        else:
            pieces.append(shlex.quote(piece))
    return "".join(pieces)


def command_line(argv: Sequence[str]) -> str:
    """The ``command`` option that makes supervisord exec exactly ``argv``.

    Raises:
        ValueError: an argument holds NUL or a carriage return.
    """
    for arg in argv:
        if "\x00" in arg or "\r" in arg:
            raise ValueError("an argument contains a NUL or carriage return")
    return " ".join(_quote_word(arg) for arg in argv)


def environment_value(env: Mapping[str, str]) -> str | None:
    """The ``environment`` option for ``env``, or ``None`` if one value cannot be written.

    Names must already be valid variable names (``[A-Za-z_][A-Za-z0-9_]*``).
    """
    items = []
    for name, value in env.items():
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            return None
        if '"' not in value:
            quote = '"'
        elif "'" not in value:
            quote = "'"
        else:
            return None
        items.append(f"{name}={quote}{value.replace('%', '%%')}{quote}")
    text = ",".join(items)
    if not _survives_parser(text) or _HERE in text:
        return None
    return text


def shim_argv(spec: ProgramSpec, *, with_env: bool, with_directory: bool) -> tuple[str, ...]:
    """``argv`` prefixed with ``env [-C DIR] -- NAME=VALUE...``, for values config cannot hold.

    Raises:
        ValueError: the executable's name contains ``=`` (``env`` would take it for
            a variable).
    """
    if "=" in spec.argv[0]:
        raise ValueError(
            "exec contains '=', which cannot be combined with an env value or directory "
            "that supervisord's configuration cannot hold"
        )
    prefix = [ENV_SHIM]
    if with_directory and spec.working_directory is not None:
        prefix += ["-C", spec.working_directory]
    prefix.append("--")
    if with_env:
        prefix += [f"{name}={value}" for name, value in spec.env.items()]
    return (*prefix, *spec.argv)


def program_options(
    spec: ProgramSpec, stdout_log: str, stderr_log: str, stop_wait: int = STOP_WAIT_SECONDS
) -> dict[str, str]:
    """The ``[program:<name>]`` options that run ``spec`` (``stopwaitsecs=stop_wait``).

    Raises:
        ValueError: the spec cannot be expressed (see :func:`command_line` and
            :func:`shim_argv`), or a log path cannot be written.
    """
    env_text = environment_value(spec.env) if spec.env else ""
    directory = config_value(spec.working_directory) if spec.working_directory is not None else ""
    argv: tuple[str, ...] = spec.argv
    if env_text is None or directory is None:
        argv = shim_argv(spec, with_env=env_text is None, with_directory=directory is None)
    options = dict(PROGRAM_DEFAULTS)
    options["stopwaitsecs"] = str(stop_wait)
    options["command"] = command_line(argv)
    if env_text:
        options["environment"] = env_text
    if directory:
        options["directory"] = directory
    if spec.user is not None:
        options["user"] = spec.user
    for key, path in (("stdout_logfile", stdout_log), ("stderr_logfile", stderr_log)):
        value = config_value(path)
        if value is None:
            raise ValueError(f"log path {path!r} cannot be written in supervisord's configuration")
        options[key] = value
    return options


@dataclass(frozen=True)
class SupervisordFiles:
    """Where one supervisord keeps its files (all absolute paths)."""

    config: str
    socket: str
    pidfile: str
    logfile: str
    childlogdir: str
    identifier: str


def render_config(files: SupervisordFiles, programs: Mapping[str, Mapping[str, str]]) -> str:
    """The whole ``supervisord.conf``: the daemon's sections and one per program.

    Raises:
        ValueError: a path cannot be written in the configuration.
    """
    parser = configparser.RawConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]

    def path(value: str) -> str:
        escaped = config_value(value)
        if escaped is None:
            raise ValueError(f"path {value!r} cannot be written in supervisord's configuration")
        return escaped

    parser["unix_http_server"] = {"file": path(files.socket), "chmod": "0700"}
    parser["supervisord"] = {
        "logfile": path(files.logfile),
        "logfile_maxbytes": SUPD_LOG_MAX_BYTES,
        "logfile_backups": str(SUPD_LOG_BACKUPS),
        "loglevel": SUPD_LOG_LEVEL,
        "pidfile": path(files.pidfile),
        "childlogdir": path(files.childlogdir),
        "identifier": path(files.identifier),
        "nodaemon": "true",
        "silent": "true",
        "minfds": "1024",
    }
    parser["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
    }
    parser["supervisorctl"] = {"serverurl": "unix://" + path(files.socket)}
    for name, options in programs.items():
        parser[f"program:{name}"] = dict(options)
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()

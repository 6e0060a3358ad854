"""The state directory: private to its owner, whatever the umask.

Everything embedded lives under one directory (``state_dir``): the SQLite
database and its ``-wal``/``-shm`` files (stored definitions may hold secrets in
their environment), the broker folder (whoever can write there can inject
requests or rewrite routing), the local nodes with their agents' configuration,
supervisord sockets and process output. :func:`secure_state_dir` is called once
at start by every command that uses it:

* it sets the process umask to ``077``, so everything this process and its
  children (local agents, supervisord and the processes it runs) create is
  private: directories 0700, files 0600;
* it creates the directory (0700) when missing;
* it refuses a directory that is not ours or that the group or others can write
  (a :class:`~pdcommon.errors.ConfigError` naming the fix);
* a directory others can only read (made by an earlier version under umask 022)
  is made private, with everything under it.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from pdcommon.errors import ConfigError

__all__ = ["PRIVATE_UMASK", "secure_state_dir"]

log = logging.getLogger(__name__)

#: The umask of every process using the state directory: nothing for group or others.
PRIVATE_UMASK = 0o077
_PRIVATE_DIR = 0o700


def secure_state_dir(path: Path) -> None:
    """Make this process create private files, and check ``path`` is private.

    Raises:
        ConfigError: ``path`` is not a directory, belongs to another user, or is
            writable by its group or others.
    """
    os.umask(PRIVATE_UMASK)
    try:
        os.makedirs(path, _PRIVATE_DIR, exist_ok=True)
        info = os.stat(path)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"state directory {path} is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"state directory {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"state directory {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise ConfigError(
            f"state directory {path} belongs to uid {info.st_uid}, not to this user "
            f"(uid {os.geteuid()}): use a directory of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise ConfigError(
            f"state directory {path} is writable by its group or others (mode {mode:04o}): "
            f"make it private with `chmod 700 {path}`"
        )
    if mode & 0o055:
        log.warning(
            "state directory %s was readable by others (mode %04o): made private", path, mode
        )
        _make_private(path)


def _make_private(top: Path) -> None:
    """Remove group and other permissions from ``top`` and everything under it."""
    for folder, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            entry = os.path.join(folder, name)
            try:
                info = os.lstat(entry)
                if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o077:
                    os.chmod(entry, stat.S_IMODE(info.st_mode) & ~0o077)
            except OSError:
                continue  # gone meanwhile, or not ours: the private top protects it
    os.chmod(top, _PRIVATE_DIR)

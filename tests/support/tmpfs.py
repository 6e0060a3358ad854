"""A small real filesystem for tests that fill a disk: a tmpfs mounted for the test."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import unavailable

__all__ = ["fill", "free_bytes", "small_tmpfs", "temporaries"]


@contextlib.contextmanager
def small_tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """Mount a ``size_mb`` MB tmpfs on ``path`` (created) for the block; unmount after.

    Skips the test (fails it in CI) where mounting is not permitted.
    """
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazily: a process the test could not stop must not keep the mount.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem is full (nothing is left free)."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(block)
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 512)


def temporaries(broker: Path) -> list[Path]:
    """Files being written (or left half-written) in the embedded broker's ``tmp/``."""
    return [path for path in (broker / "tmp").rglob("*") if path.is_file()]

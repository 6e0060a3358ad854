"""Cost of one sweep scan (:meth:`eeagent.reaper.Reaper.find`) as processes grow.

Usage::

    .venv/bin/python bench/reaper.py                 # 0, 250, 1000 and 2000 extra processes
    .venv/bin/python bench/reaper.py -n 500 -n 5000

For each count, that many ``sleep`` processes are started (each carrying the
marker of another program, like the processes of an agent's other programs), then
the scan that a terminate, a cleanup or a program's exit makes (every
``/proc/<pid>/stat`` and ``/proc/<pid>/environ`` read once) is timed 20 times.
Prints the number of processes on the machine and p50/max per scan. Every stop
costs one scan, a program's exit one more, and a SIGKILL after the stop wait one
per round (usually one or two).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eeagent.reaper import MARKER, Reaper

RUNS = 20


def measure(reaper: Reaper) -> tuple[float, float]:
    samples = []
    for _ in range(RUNS):
        started = time.perf_counter()
        reaper.find(["p1-1"])
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, action="append", help="extra processes (repeatable)")
    counts = parser.parse_args().n or [0, 250, 1000, 2000]
    reaper = Reaper("bench", lambda: (), stop_wait=10)
    env = {**os.environ, MARKER: reaper.token("other-1")}
    extra: list[subprocess.Popen[bytes]] = []
    try:
        for count in sorted(counts):
            while len(extra) < count:
                extra.append(subprocess.Popen(["sleep", "600"], env=env))
            total = sum(1 for entry in os.listdir("/proc") if entry.isdigit())
            p50, worst = measure(reaper)
            print(f"{total:6d} processes: scan p50 {p50:7.2f} ms, max {worst:7.2f} ms")
    finally:
        for proc in extra:
            proc.kill()
        for proc in extra:
            proc.wait()


if __name__ == "__main__":
    main()

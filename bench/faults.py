"""Recovery times of the fault suite (``tests/faults/test_fault_*.py``).

Usage::

    .venv/bin/python bench/faults.py              # run the suite once, print the figures
    .venv/bin/python bench/faults.py --runs 3     # three runs: min, median and max
    .venv/bin/python bench/faults.py -k leader    # only some faults (pytest -k)

Runs the fault tests with ``CI=true`` (private RabbitMQ and PostgreSQL, real
supervisord) and ``PD_FAULT_FIGURES`` pointing at a temporary file, into which each
test appends the recovery times it measured (``tests.faults.faultkit.figure``). The
figures are reported, never asserted: they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_once(selection: str | None) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as handle:
        path = Path(handle.name)
    env = {**os.environ, "CI": "true", "PD_FAULT_FIGURES": str(path)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests/faults").glob("test_fault_*.py")
    )
    if selection:
        command += ["-k", selection]
    try:
        result = subprocess.run(command, cwd=REPO, env=env, check=False)
        if result.returncode != 0:
            raise SystemExit(f"the fault suite failed (exit {result.returncode})")
        figures = {}
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            figures[entry["name"]] = float(entry["seconds"])
        return figures
    finally:
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="how many times to run the suite")
    parser.add_argument("-k", dest="selection", help="pytest -k expression")
    options = parser.parse_args()
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(options.runs):
        for name, seconds in run_once(options.selection).items():
            samples[name].append(seconds)
    width = max((len(name) for name in samples), default=10)
    print(f"\n{'figure':<{width}}  {'min':>7}  {'median':>7}  {'max':>7}  (seconds)")
    for name in sorted(samples):
        values = samples[name]
        print(
            f"{name:<{width}}  {min(values):7.2f}  {statistics.median(values):7.2f}  "
            f"{max(values):7.2f}"
        )


if __name__ == "__main__":
    main()

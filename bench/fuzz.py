"""A long random run of the property and fuzz tests (every Hypothesis test).

Usage::

    .venv/bin/python bench/fuzz.py                 # 20 times the examples, a random seed
    .venv/bin/python bench/fuzz.py --factor 100    # 100 times the examples
    .venv/bin/python bench/fuzz.py --seed 1234     # replay the run printed by an earlier one
    .venv/bin/python bench/fuzz.py -k heartbeat    # only some tests (pytest -k)

CI runs these tests derandomized with their usual example counts (the ``ci``
profile of ``tests/support/hypothesis_profiles.py``): the same examples on every
run. This runs them with the ``fuzz`` profile instead: random examples from a seed
printed first, ``--factor`` times as many, no example database. It prints the
examples each test ran, their total, and each failure with its falsifying example
and the ``@reproduce_failure`` blob; it exits with pytest's status.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: ``tests/x.py::test_name:`` opens a test's block of ``--hypothesis-show-statistics``.
_TEST = re.compile(r"^(tests/\S+::\S+):$")
#: ``- 100 passing, 0 failing, and 5 invalid test cases`` (one line per phase).
_CASES = re.compile(r"- (\d+) passing, (\d+) failing, and (\d+) invalid test cases")


def count_examples(output: str) -> dict[str, tuple[int, int, int]]:
    """Passing, failing and invalid examples of each test, summed over its phases."""
    counts: dict[str, tuple[int, int, int]] = {}
    current: str | None = None
    for line in output.splitlines():
        test = _TEST.match(line.strip())
        if test:
            current = test.group(1)
            counts.setdefault(current, (0, 0, 0))
            continue
        cases = _CASES.search(line)
        if cases and current is not None:
            passing, failing, invalid = counts[current]
            counts[current] = (
                passing + int(cases.group(1)),
                failing + int(cases.group(2)),
                invalid + int(cases.group(3)),
            )
    return counts


def failure_report(output: str, width: int = 300, limit: int = 400) -> str:
    """pytest's failure report (falsifying examples, errors, ``@reproduce_failure``
    blobs) and its summary, each line cut to ``width`` characters: fuzzed values
    may be megabytes long."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if "= FAILURES =" in line), 0)
    kept = [
        line if len(line) <= width else f"{line[:width]}... ({len(line)} characters)"
        for line in lines[start:]
        if "Hypothesis Statistics" not in line
    ]
    summary = [line for line in kept if line.startswith(("FAILED ", "ERROR "))]
    body = kept[:limit] + (["..."] if len(kept) > limit else [])
    return "\n".join(body + summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=20, help="times the usual examples")
    parser.add_argument("--seed", type=int, help="Hypothesis seed (default: a random one)")
    parser.add_argument("-k", dest="selection", help="pytest -k expression")
    options = parser.parse_args()
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**32)
    env = {**os.environ, "PD_FUZZ_FACTOR": str(max(1, options.factor))}
    env.pop("CI", None)  # the fuzz profile is chosen explicitly below
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-m",
        "hypothesis",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "--hypothesis-profile=fuzz",
        f"--hypothesis-seed={seed}",
        "--hypothesis-show-statistics",
        "-o",
        "timeout=3600",
    ]
    if options.selection:
        command += ["-k", options.selection]
    print(f"seed {seed}, {options.factor} times the examples: {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    counts = count_examples(result.stdout)
    for test, (passing, failing, invalid) in sorted(counts.items()):
        print(f"{passing:8d} passing {failing:4d} failing {invalid:6d} invalid  {test}")
    total = sum(passing for passing, _, _ in counts.values())
    print(f"{total} passing examples in {len(counts)} tests, {elapsed:.0f} s")
    if result.returncode != 0:
        print(failure_report(result.stdout))
        print(result.stderr[-5_000:], end="", file=sys.stderr)
        print(f"FAILED (pytest exit {result.returncode}); replay: bench/fuzz.py --seed {seed}")
    raise SystemExit(result.returncode)


if __name__ == "__main__":
    main()

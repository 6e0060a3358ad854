"""Cost of the request limits: validating a 1 MiB configuration, refusing oversized ones.

Measured in this process (no broker, no database) as CPU time (steady on a shared
machine), median of ``--runs`` runs:

* ``check``: :func:`pdcommon.limits.check_arguments` alone (the depth and size
  walk, then the exact JSON length) on a configuration of about 1 MiB in three
  shapes: one long string, 20,000 small objects, 100,000 numbers;
* ``parse``: the whole ``ScheduleProcessRequest.parse`` (limits, types, and the
  JSON normalisation the store needs anyway);
* ``schedule``: ``schedule_process`` on a :class:`~dispatcher.store.memory.MemoryStore`
  (validation, normalisation, encoding and storing);
* ``refuse``: refusing a 120 MB configuration, and one nested 5,000 levels deep.

Usage::

    .venv/bin/python bench/limits.py
    .venv/bin/python bench/limits.py --runs 50
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dashi.errors import BadRequestError  # noqa: E402
from dispatcher.core import ProcessDispatcherCore  # noqa: E402
from dispatcher.messaging import RecordingMessenger  # noqa: E402
from dispatcher.requests import ScheduleProcessRequest  # noqa: E402
from dispatcher.store.memory import MemoryStore  # noqa: E402
from dispatcher.transitions import ProcessStateMachine  # noqa: E402
from pdcommon.limits import DEFAULT_LIMITS, check_arguments  # noqa: E402

MIB = 1024 * 1024


def shapes() -> dict[str, dict[str, Any]]:
    """Configurations of a little under 1 MiB of JSON each."""
    made: dict[str, dict[str, Any]] = {
        "one string": {"blob": "x" * (MIB - 20)},
        "20k objects": {
            "items": [{"name": f"item{i:05d}", "value": "v" * 19} for i in range(20_000)]
        },
        "100k numbers": {"values": [i * 1.5 for i in range(100_000)]},
    }
    for name, value in made.items():
        size = len(json.dumps(value, separators=(",", ":")))
        assert size <= MIB, (name, size)
    return made


def _core() -> ProcessDispatcherCore:
    """A core over a fresh MemoryStore."""
    store, messenger = MemoryStore(), RecordingMessenger()
    return ProcessDispatcherCore(
        store, messenger, transitions=ProcessStateMachine(store, messenger)
    )


def scheduler(configuration: dict[str, Any]) -> Callable[[], object]:
    """A call scheduling a new process with ``configuration`` on a fresh MemoryStore."""
    core = _core()
    core.create_definition("D", "supd", {"exec": "/bin/true"})
    counter = itertools.count()

    def schedule() -> object:
        return core.schedule_process(f"p{next(counter)}", "D", configuration=configuration)

    return schedule


def median_ms(call: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1000


def refused(call: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            call()
        except BadRequestError:
            return
        raise AssertionError("not refused")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    runs = args.runs

    print(
        f"{'configuration':<16} {'JSON bytes':>11} {'check ms':>9} {'parse ms':>9} {'schedule ms':>12}  (CPU)"
    )
    for name, configuration in shapes().items():
        size = len(json.dumps(configuration, separators=(",", ":")))
        check = median_ms(
            functools.partial(check_arguments, {"configuration": configuration}, DEFAULT_LIMITS),
            runs,
        )
        parse = median_ms(
            functools.partial(
                ScheduleProcessRequest.parse,
                upid="p",
                definition_id="D",
                configuration=configuration,
            ),
            runs,
        )
        schedule = median_ms(scheduler(configuration), runs)
        print(f"{name:<16} {size:>11} {check:>9.2f} {parse:>9.2f} {schedule:>12.2f}")

    core = _core()
    core.create_definition("D", "supd", {"exec": "/bin/true"})
    huge = {"items": ["x" * 100] * 1_200_000}  # ~122 MB of JSON
    deep: Any = {"leaf": 1}
    for _ in range(4999):
        deep = {"a": deep}
    refuse_huge = median_ms(
        refused(lambda: core.schedule_process("h", "D", configuration=huge)), runs
    )
    refuse_deep = median_ms(
        refused(lambda: core.schedule_process("d", "D", configuration=deep)), runs
    )
    print(f"refuse a 120 MB configuration:        {refuse_huge:8.2f} ms")
    print(f"refuse a configuration 5,000 deep:    {refuse_deep:8.2f} ms")


if __name__ == "__main__":
    main()

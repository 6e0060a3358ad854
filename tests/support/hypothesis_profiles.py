"""Hypothesis settings profiles of the test suite, and the example-count scaling.

* ``ci`` (selected when ``CI=true``): ``derandomize=True`` - each test draws the
  same examples on every run, seeded from the test itself (not from the run or
  the order of the tests), so a CI failure reproduces with the same command and a
  run of a subset sees the same examples as the full suite; no example database is
  read or written (nothing is carried from one CI run to the next).
* ``dev`` (the default elsewhere): random examples, failures remembered in the
  local example database (``.hypothesis/``) and replayed first on the next run.
* ``quick`` (``scripts/test.sh --quick``): as ``dev`` with a fifth of the
  examples, for the day-to-day lane.
* ``fuzz`` (``bench/fuzz.py``): random, no database, and :data:`FUZZ_FACTOR`
  times the examples of each test (``PD_FUZZ_FACTOR``, default 20).

Tests that set their own ``max_examples`` write ``max_examples=examples(150)``, so
that the ``fuzz`` profile scales them too.
"""

from __future__ import annotations

import os

from hypothesis import settings

__all__ = ["BASE_EXAMPLES", "FUZZ_FACTOR", "examples", "load_profile"]

#: Hypothesis's own default ``max_examples``; a profile's count relative to it
#: scales the tests' explicit counts (:func:`examples`).
BASE_EXAMPLES = 100
#: How many times more examples each test runs under the ``fuzz`` profile.
FUZZ_FACTOR = max(1, int(os.environ.get("PD_FUZZ_FACTOR", "20")))

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile("quick", max_examples=BASE_EXAMPLES // 5, print_blob=True)
settings.register_profile(
    "fuzz",
    max_examples=BASE_EXAMPLES * FUZZ_FACTOR,
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
)


def load_profile(ci: bool) -> None:
    """Load ``ci`` or ``dev`` (``pytest --hypothesis-profile=NAME`` still overrides)."""
    settings.load_profile("ci" if ci else "dev")


def examples(count: int) -> int:
    """``count`` examples scaled by the loaded profile (``count`` under ``ci``/``dev``,
    a fifth under ``quick``, :data:`FUZZ_FACTOR` times under ``fuzz``)."""
    return max(1, count * settings.default.max_examples // BASE_EXAMPLES)

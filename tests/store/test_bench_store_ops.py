"""``bench/store_ops.py`` runs against the current schema, and its filtered listings
select what they say (a smoke run on SQLite: figures are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "store_ops.py"


def test_the_store_bench_runs_and_its_filters_select_their_share() -> None:
    # 20 single adds and 8 x 5 schedule-like adds, then 140 bulk-filled processes
    # in ten groups with four shard labels
    result = subprocess.run(
        [sys.executable, str(BENCH), "-n", "20", "--list-size", "200", "--skip-memory"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split("(")[0].strip(): line for line in result.stdout.splitlines()}
    assert "(200)" in lines["process dicts, no filter"]
    assert "(14)" in lines["process dicts, group=g3"]
    assert "(35)" in lines["process dicts, shard=1"]

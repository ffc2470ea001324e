"""The benchmark scripts at toy sizes: they keep running, and what they print adds up.

The figures themselves are measured by running the scripts (docs/performance.md), never here.
"""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_scale_benchmark_runs_and_prints_its_table(tmp_path):
    """benchmarks/scale.py at a toy size: the script keeps working and its split of a step's
    time adds up (user model + recommender + sandbox = the steps' wall time)."""
    out = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--users", "300", "--steps", "2",
         "--users-per-task", "100", "--db-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    (row,) = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert row["decisions"] == 300 * 2 * 10  # exits are off in population_scale
    assert 0 < row["policy_s"] + row["recommender_s"] < row["steps_s"] < row["total_s"]
    assert row["peak_rss_gib"] > 0 and row["db_gib"] > 0
    table = out.stdout.splitlines()
    assert table[0].startswith("| users | steps | users/task | decisions |")
    assert table[2].startswith("| 300 | 2 | 100 | 6,000 |")


def test_endpoints_benchmark_spreads_requests_over_every_endpoint():
    out = subprocess.run(
        [sys.executable, "benchmarks/endpoints.py", "--endpoints", "1", "2", "--slots", "2",
         "--service-ms", "20", "--seconds", "0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines()
            if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert [int(r[0]) for r in rows] == [1, 2]
    for r in rows:
        rate, ideal = float(r[3].replace(",", "")), float(r[4].replace(",", ""))
        assert 0 < rate <= ideal * 1.05  # no faster than the endpoints can serve
        assert float(r[6]) > 0  # the client's CPU per request

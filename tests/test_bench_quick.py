"""The benchmark harness's smoke run works end to end on forkq (correctness only, never speed).

``python bench/run.py --quick --only forkq`` runs every workload (a..l) through the
real CLI and exits non-zero if any run lost a job; this test checks that it exits
0 and that its JSON shows every run's jobs all counted.  ~14 s: marked slow, so the
default ``-m "not slow"`` run skips it and CI (which runs everything) keeps it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_bench_processes_every_job_on_forkq(tmp_path: Path) -> None:
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "forkq", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    data = json.loads((out / "results.json").read_text())
    assert data["failures"] == []
    runs = data["runs"]
    workloads = {r["workload"] for r in runs}
    assert {"a", "b16", "b200", "c", "d", "e", "h:names100", "h:backlog", "h:scheduled",
            "h:p1", "i", "j8", "j50", "k", "l"} <= workloads
    for r in runs:
        assert r["system"] == "forkq"
        if "done" in r:  # throughput runs: every enqueued job was processed
            assert r["ok"] and r["done"] >= r["n"], r
        if r["workload"] in ("i", "j8", "j50", "k"):  # the body's INCR ran once per job
            assert r["cmdstat_per_job"].get("incr", 0) >= 0.99, r
            assert r["worker_cpu_ms_per_job"] > 0, r
        if r["workload"] == "c":  # enqueue runs: every job is in Redis
            assert r["queued"] >= r["n"], r
        if r["workload"] == "d":  # every latency probe ran
            assert r["timeouts"] == 0 and r["p50_ms"] >= 0, r
    assert "| forkq |" in res.stdout
    assert (out / "results.md").read_text().startswith("# forkq benchmark")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_floor_bench_runs_the_bodies_alone_and_through_forkq() -> None:
    """bench/floor.py's smoke run: both the queue-less floor and forkq finish every job
    (its waits raise on a missing one) and the table has a row for each system."""
    res = subprocess.run(
        [sys.executable, "bench/floor.py", "--workloads", "i,j8", "--reps", "1", "--scale", "0.02"],
        cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-3000:]}"
    assert res.stdout.count("floor: the bodies alone") == 2 and res.stdout.count("| | forkq |") == 2
    bad = subprocess.run([sys.executable, "bench/floor.py", "--workloads", "nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown workload" in bad.stderr

"""Scheduled-job lateness of forkq beside huey, Dramatiq and RQ (issue 9), each with
its own schedule API (see bench/peers/scheduled.py), on one private redis-server.

    python bench/lateness_peers.py                      # forkq, huey, dramatiq, rq; 3 reps
    python bench/lateness_peers.py --only huey --reps 1

Reuses bench/run.py's harness: each peer's own virtualenv (bench/.peers-venv/<peer>,
installed on first use) and its workers as run.py starts them, 2 processes x 8
threads (RQ: a worker-pool of 16, which runs RQ's scheduler).  Two measurements
per system, medians of the repetitions:

* sample: 40 probes one at a time, each due 0.1-0.5 s after it is scheduled, into
  an idle pool: lateness (start - due) p50 / p99;
* burst: N probes all due at one instant (forkq, huey, Dramatiq 20,000; RQ 300, at
  its ~100 jobs/s): when the last one started, and p50 / p99.

These are local-clock figures (time.time() at start minus the due time, one host);
forkq's Redis-clock figures for the same cases are in bench/lateness.py.
Prints a markdown table; ``--json FILE`` also writes every repetition.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import Bench, ensure_peer_venv  # noqa: E402

SYSTEMS = ("forkq", "huey", "dramatiq", "rq")
BURST_N = {"forkq": 20_000, "huey": 20_000, "dramatiq": 20_000, "rq": 300}


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def summary(lat: list[float]) -> dict[str, float]:
    return {"n": len(lat), "p50_ms": round(pct(lat, 50) * 1000, 1), "p99_ms": round(pct(lat, 99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1)}


def drive(bench: Bench, system: str, mode: str, n: int) -> dict[str, Any]:
    cmd = [bench.python(system), "-m", "bench.peers.scheduled", system, mode, str(n)]
    res = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=bench.env(system), timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"{system} {mode}: {res.stderr.decode(errors='replace')[-3000:]}")
    out: dict[str, Any] = json.loads(res.stdout.decode().strip().splitlines()[-1])
    return out


def ready(bench: Bench, system: str) -> None:
    """Warm the workers up: one probe due at once must come back."""
    drive(bench, system, "sample", 1)


def one_rep(bench: Bench, system: str, samples: int) -> dict[str, Any]:
    bench.reset()
    w = bench.start_workers(system, 2, 8)
    try:
        time.sleep(2.0)  # interpreter start-up, outside what is measured
        ready(bench, system)
        s = drive(bench, system, "sample", samples)
        b = drive(bench, system, "burst", BURST_N[system])
    finally:
        bench.stop_workers(w)
    rep: dict[str, Any] = {"sample": summary(s["lateness"]), "sample_missing": s.get("missing", 0)}
    lat = b["lateness"]
    rep["burst"] = {**summary(lat), "all_started_within_s": round(max(lat), 3),
                    "missing": b.get("missing", 0), "enqueued_before_due_s": b["enqueued_before_due_s"]}
    return rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SYSTEMS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lateness-peers"))
    ap.add_argument("--json")
    opts = ap.parse_args()
    systems = [s for s in opts.only.split(",") if s]
    bench = Bench(argparse.Namespace(out=opts.out), None, None)  # type: ignore[arg-type]
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for system in systems:
            if system != "forkq":
                bench.vpy[system] = ensure_peer_venv(system, lambda m: print(m, file=sys.stderr))
            results[system] = []
            for rep in range(opts.reps):
                print(f"{system} rep {rep + 1}/{opts.reps}", file=sys.stderr)
                results[system].append(one_rep(bench, system, opts.samples))
    finally:
        bench.server.cleanup()

    def med(system: str, *path: str) -> float:
        vals = []
        for rep in results[system]:
            v: Any = rep
            for p in path:
                v = v[p]
            vals.append(float(v))
        return statistics.median(vals)

    print(f"Scheduled-job lateness (start - due), 2 x 8, medians of {opts.reps}:\n")
    print("| system | API | idle p50 / p99 ms | burst N | burst: all started within s | burst p50 / p99 ms | missing |")
    print("|---|---|---:|---:|---:|---:|---:|")
    api = {"forkq": "`enqueue_at`", "huey": "`task.schedule(delay=)`",
           "dramatiq": "`send_with_options(delay=)`", "rq": "`enqueue_in`"}
    for system in systems:
        missing = sum(r["sample_missing"] + r["burst"]["missing"] for r in results[system])
        print(f"| {system} | {api[system]} | {med(system, 'sample', 'p50_ms'):,.1f} / "
              f"{med(system, 'sample', 'p99_ms'):,.1f} | {BURST_N[system]:,} | "
              f"{med(system, 'burst', 'all_started_within_s'):,.2f} | {med(system, 'burst', 'p50_ms'):,.0f} / "
              f"{med(system, 'burst', 'p99_ms'):,.0f} | {missing} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

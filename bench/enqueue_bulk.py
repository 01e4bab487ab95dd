"""Scheduled-enqueue rate: forkq's ``enqueue_in_many`` beside every system's own API.

    python bench/enqueue_bulk.py                      # every system, 3 repetitions
    python bench/enqueue_bulk.py --only forkq,rq --reps 5

Each system schedules no-op jobs due in an hour (nothing runs) through its
ordinary API, one call per job (forkq ``enqueue_in``, RQ ``enqueue_in``,
Dramatiq ``send_with_options(delay=)``, Celery ``apply_async(countdown=)``,
huey ``schedule(delay=)``, arq ``enqueue_job(_defer_by=)``), and where it has one
through its bulk form (forkq ``enqueue_in_many``, chunks of 1,000; no peer has a
bulk scheduled enqueue).  The producer runs in the system's own interpreter
(bench/peers/driver.py), against a redis-server started here on a free port.
Medians of the repetitions; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer  # noqa: E402

from bench import run as harness  # noqa: E402
from bench.peers._counter import URL_ENV  # noqa: E402

SINGLE_N = 5_000
BULK_N = 200_000


def driver(python: str, url: str, *argv: str) -> dict[str, Any]:
    """One producer step in the system's own interpreter (as bench/run.py runs them)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    env[URL_ENV] = url
    env["FORKQ_REDIS_URL"] = url
    env.pop("VIRTUAL_ENV", None)
    res = subprocess.run([python, "-m", "bench.peers.driver", *argv], capture_output=True, cwd=ROOT,
                         env=env, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"driver {' '.join(argv)} failed:\n{res.stderr.decode(errors='replace')[-3000:]}")
    return dict(json.loads(res.stdout.decode().strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(harness.SYSTEMS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--single-n", type=int, default=SINGLE_N)
    ap.add_argument("--bulk-n", type=int, default=BULK_N)
    opts = ap.parse_args()
    systems = [s for s in opts.only.split(",") if s]
    unknown = sorted(set(systems) - set(harness.SYSTEMS))
    if unknown:
        print(f"enqueue_bulk: error: unknown system(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    server = RedisServer().start()
    rows: list[tuple[str, str, float | None]] = []
    try:
        pythons = {p: (sys.executable if p == "forkq" else
                       str(harness.ensure_peer_venv(p, lambda m: print(m, file=sys.stderr))))
                   for p in systems}
        conn = server.client()
        for system in systems:
            for mode, n in (("single", opts.single_n), ("bulk", opts.bulk_n)):
                rates = []
                for _ in range(opts.reps):
                    conn.flushall()
                    got = driver(pythons[system], server.url, "schedule-rate", system, mode, str(n))
                    if got.get("rate") is None:
                        break
                    rates.append(float(got["rate"]))
                rows.append((system, mode, statistics.median(rates) if rates else None))
                print(f"{system} {mode}: {rates}", file=sys.stderr)
    finally:
        server.cleanup()
    print(f"| system | one call per job (N={opts.single_n:,}) | bulk (N={opts.bulk_n:,}) |")
    print("|---|---:|---:|")
    by: dict[str, dict[str, float | None]] = {}
    for system, mode, rate in rows:
        by.setdefault(system, {})[mode] = rate
    for system, r in by.items():
        def fmt(v: float | None) -> str:
            return f"{v:,.0f} jobs/s" if v is not None else "– (no bulk API)"
        print(f"| {system} | {fmt(r.get('single'))} | {fmt(r.get('bulk'))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

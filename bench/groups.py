"""Fair groups (issue 16): fairness behind a big backlog, and overhead on no-op throughput.

    python bench/groups.py                          # backlog 1,000,000, N=100,000, 3 reps
    python bench/groups.py --backlog 50000 --n 20000 --reps 1   # a smoke run

Runs the real CLI (``python -m forkq -p 2 -c 8 bench.groups_jobs``: 2 children x 8
threads) on a redis-server started here.

(a) Fairness: ``--backlog`` no-op jobs are enqueued in group A (the name paused
    meanwhile), then released; once the workers are draining A at full speed, 10
    jobs of group B are enqueued in one call.  Each B job records start minus
    ``enqueued_at`` (bench/groups_jobs.py); p50/p99/max over the 10 x ``--reps``
    B jobs, and how many A jobs were still waiting when the last B started.
(b) Overhead: N no-op jobs parked (paused), then released and timed from the first
    to the last completion, as bench/flow.py does: ``plain`` (no group) against
    ``grouped`` (the same N spread over 10 groups, enqueued in chunks of 1,000
    round-robin).  Also Redis commands per job (INFO commandstats, Lua-internal
    included).

Prints markdown tables (medians for throughput).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

import forkq  # noqa: E402
from bench.groups_jobs import NAMESPACE  # noqa: E402
from bench.peers._counter import DONE_KEY, LAT_KEY, URL_ENV  # noqa: E402
from forkq.keys import Keys  # noqa: E402
from forkq.web import queries  # noqa: E402

K = Keys(NAMESPACE)
NAME = "fair"
CHUNK = 1000
GROUPS = 10


def commands(r: redis.Redis) -> int:
    return sum(int(v.get("calls", 0)) for v in r.info("commandstats").values())


def start_workers(url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FORKQ_LOG_LEVEL="WARNING")
    env[URL_ENV] = url
    return subprocess.Popen([sys.executable, "-m", "forkq", "-p", "2", "-c", "8", "--redis", url,
                             "bench.groups_jobs"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def wait_done(r: redis.Redis, expected: int, what: str, timeout: float = 900) -> tuple[float, int, float]:
    """Poll bench:done until ``expected``; (first completion time, count then, last time)."""
    t_first, c_first = None, 0
    end = time.monotonic() + timeout
    while True:
        done = int(r.get(DONE_KEY) or 0)
        now = time.monotonic()
        if done and t_first is None:
            t_first, c_first = now, done
        if done >= expected:
            assert t_first is not None
            return t_first, c_first, now
        if now > end:
            raise RuntimeError(f"{what}: {done}/{expected} done after {timeout:.0f} s")
        time.sleep(0.002)


def release(r: redis.Redis) -> None:
    r.delete(K.paused(NAME))
    r.publish(K.wake_channel, NAME)


def fairness(r: redis.Redis, url: str, backlog: int) -> dict[str, Any]:
    r.delete(DONE_KEY, LAT_KEY)
    r.set(K.paused(NAME), b"1")
    enq = forkq.Enqueuer(url, NAMESPACE)
    try:
        for start in range(0, backlog, CHUNK):
            enq.enqueue_many(NAME, [None] * min(CHUNK, backlog - start), group="A")
        release(r)
        # Draining A at full speed first (every thread busy, prefetch buffers full).
        wait_done(r, min(backlog // 10, 20_000), "warm-up")
        enq.enqueue_many(NAME, [None] * 10, group="B")
        end = time.monotonic() + 120
        while r.llen(LAT_KEY) < 10:
            if time.monotonic() > end:
                raise RuntimeError("group B did not start within 120 s")
            time.sleep(0.001)
        left = r.llen(K.group_queue(NAME, "A"))
    finally:
        enq.close()
    lat = sorted(float(x) for x in r.lrange(LAT_KEY, 0, -1))
    # What is left of A goes (the workers finish what they hold).
    r.set(K.paused(NAME), b"1")
    queries.clear_queue(r, K, NAME)
    time.sleep(0.5)
    return {"lat": lat, "a_left": left}


def overhead(r: redis.Redis, url: str, mode: str, n: int) -> dict[str, Any]:
    r.delete(DONE_KEY)
    r.set(K.paused(NAME), b"1")
    enq = forkq.Enqueuer(url, NAMESPACE)
    try:
        for k, start in enumerate(range(0, n, CHUNK)):
            args = [None] * min(CHUNK, n - start)
            enq.enqueue_many(NAME, args, group=f"g{k % GROUPS}" if mode == "grouped" else None)
    finally:
        enq.close()
    c0 = commands(r)
    release(r)
    t_first, c_first, t_last = wait_done(r, n, mode)
    return {"rate": (n - c_first) / max(t_last - t_first, 1e-6), "commands_per_job": (commands(r) - c0) / n}


def pct(xs: list[float], p: float) -> float:
    return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backlog", type=int, default=1_000_000, help="jobs of group A (1,000,000)")
    ap.add_argument("--n", type=int, default=100_000, help="jobs per overhead run (100,000)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=("fairness", "overhead"), default=None, help="run one part")
    opts = ap.parse_args()
    server = RedisServer().start()
    fair: list[dict[str, Any]] = []
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "grouped": []}
    try:
        r = server.client()
        w = start_workers(server.url)
        try:
            deadline = time.monotonic() + 60
            while r.scard(K.processes) < 2:
                if w.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("forkq workers did not start")
                time.sleep(0.05)
            for _ in range(opts.reps if opts.only != "overhead" else 0):
                got = fairness(r, server.url, opts.backlog)
                fair.append(got)
                print(f"fairness: B max {1000 * got['lat'][-1]:.1f} ms, A left {got['a_left']:,}",
                      file=sys.stderr)
            for _ in range(opts.reps if opts.only != "fairness" else 0):
                for mode in ("plain", "grouped"):
                    got = overhead(r, server.url, mode, opts.n)
                    runs[mode].append(got)
                    print(f"{mode}: {got['rate']:,.0f} jobs/s, {got['commands_per_job']:.2f} cmds/job",
                          file=sys.stderr)
        finally:
            w.terminate()
            w.wait(30)
    finally:
        server.cleanup()
    if fair:
        print_fairness(fair, opts)
    if runs["plain"]:
        print_overhead(runs, opts)
    return 0


def print_fairness(fair: list[dict[str, Any]], opts: argparse.Namespace) -> None:
    lat = sorted(x for f in fair for x in f["lat"])
    print(f"| fairness (backlog {opts.backlog:,} in group A, 10 jobs of group B, -p 2 -c 8, "
          f"{opts.reps} reps) | p50 | p99 | max | A jobs still waiting at B's last start (min) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| enqueue of B -> start of each B job | {1000 * pct(lat, 50):.1f} ms | "
          f"{1000 * pct(lat, 99):.1f} ms | {1000 * lat[-1]:.1f} ms | {min(f['a_left'] for f in fair):,} |")


def print_overhead(runs: dict[str, list[dict[str, Any]]], opts: argparse.Namespace) -> None:
    med = {m: statistics.median(x["rate"] for x in v) for m, v in runs.items()}
    cmd = {m: statistics.median(x["commands_per_job"] for x in v) for m, v in runs.items()}
    print(f"\n| no-op drain (N={opts.n:,}, -p 2 -c 8, medians of {opts.reps}) | jobs/s | Redis commands/job |")
    print("|---|---:|---:|")
    print(f"| plain (no group) | {med['plain']:,.0f} | {cmd['plain']:.2f} |")
    print(f"| grouped ({GROUPS} groups) | {med['grouped']:,.0f} | {cmd['grouped']:.2f} |")
    print(f"\nfair-group overhead: {100 * (1 - med['grouped'] / med['plain']):.1f}% of no-op throughput")


if __name__ == "__main__":
    sys.exit(main())

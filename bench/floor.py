#!/usr/bin/env python
"""The queue-less floor of each realistic workload, beside forkq, in one run.

    python bench/floor.py                     # every workload, 3 repetitions
    python bench/floor.py --workloads i --reps 1 --scale 0.2

Issue 12 asks for ≤ 15 µs of Redis CPU per job and 3× the best peer on the
one-``INCR`` body.  Part of every figure is the job body itself: its own Redis
round trip (the ``INCR`` on the body's own connection) and redis-py's Python
work to make it.  No queue can go below what the bodies alone cost, so this
measures that floor: the same job bodies (``bench.peers._counter.work``/``done``,
the same as every system in ``bench/run.py``) run by P forked processes × T
threads that simply loop, with no queue at all.  Then forkq runs the same N jobs
of the same body through the real CLI (``forkq -p P -c T bench.jobs``, the N jobs
parked first, so enqueueing is not in the figure), and the table shows both and
what forkq adds on top of the floor.

Per row: jobs/s (from the moment the work is let go to the last completion), % of the
floor's rate,
worker CPU per job (psutil user+sys of every worker process), Redis commands per
job (INFO commandstats, Lua-internal included, minus the harness's own INCRBY
counter, INFO and GET) and Redis CPU per job (``used_cpu_user+sys``).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402
import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

import forkq  # noqa: E402
from bench.jobs import NAMESPACE  # noqa: E402
from bench.peers import _counter  # noqa: E402
from forkq.keys import Keys  # noqa: E402

K = Keys(NAMESPACE)
HARNESS = ("info", "incrby", "get")


def _noop() -> None:
    _counter.done()


def _incr() -> None:
    _counter.work()
    _counter.done()


def _sleep10incr() -> None:
    time.sleep(0.01)
    _counter.work()
    _counter.done()


def _sleep100incr() -> None:
    time.sleep(0.1)
    _counter.work()
    _counter.done()


# workload -> (label, forkq job name, body, processes, threads, N at scale 1)
WORKLOADS: dict[str, tuple[str, str, Callable[[], None], int, int, int]] = {
    "a": ("no-op, 2 × 10", "noop", _noop, 2, 10, 200_000),
    "i": ("one INCR, 2 × 8", "incr", _incr, 2, 8, 100_000),
    "j8": ("10 ms + INCR, 2 × 8", "sleep10incr", _sleep10incr, 2, 8, 8_000),
    "j50": ("10 ms + INCR, 2 × 50", "sleep10incr", _sleep10incr, 2, 50, 40_000),
    "k": ("100 ms + INCR, 2 × 100", "sleep100incr", _sleep100incr, 2, 100, 8_000),
}


def commands(r: redis.Redis) -> int:
    return sum(int(v.get("calls", 0)) for k, v in r.info("commandstats").items()
               if k.removeprefix("cmdstat_") not in HARNESS)


def redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds so far of these processes and all their children (a shared
    machine's load changes jobs/s much more than the CPU a job costs)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def _floor_process(body: Callable[[], None], threads: int, jobs: int, go: Any) -> None:
    """One worker process of the floor: ``threads`` threads loop over the body."""
    left = itertools.count()

    def loop() -> None:
        while next(left) < jobs:
            body()

    go.wait()
    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    time.sleep(3 * _counter.FLUSH_EVERY + 0.05)  # let the counter's flusher send the last counts


def wait_done(r: redis.Redis, expected: int, what: str) -> float:
    """When the counter reached ``expected`` (polled every 2 ms)."""
    deadline = time.monotonic() + 900
    while True:
        done = int(r.get(_counter.DONE_KEY) or 0)
        now = time.monotonic()
        if done >= expected:
            return now
        if now > deadline:
            raise RuntimeError(f"{what}: {done}/{expected} done after 900 s")
        time.sleep(0.002)


def measure(r: redis.Redis, pids: list[int], start: Callable[[], None], n: int,
            what: str) -> dict[str, float]:
    """From the moment the work is let go (``start``) to the last completion: the
    same clock for the floor and forkq (forkq's includes its pickup latency)."""
    c0, rc0, w0 = commands(r), redis_cpu(r), tree_cpu(pids)
    t0 = time.monotonic()
    start()
    t_last = wait_done(r, n, what)
    cmds, rcpu, wcpu = commands(r) - c0, redis_cpu(r) - rc0, tree_cpu(pids) - w0
    return {"rate": n / max(t_last - t0, 1e-6), "cmds": cmds / n,
            "redis_us": 1e6 * rcpu / n, "worker_us": 1e6 * wcpu / n}


def run_floor(r: redis.Redis, url: str, wl: str, n: int) -> dict[str, float]:
    _label, _name, body, procs, threads, _ = WORKLOADS[wl]
    r.delete(_counter.DONE_KEY)
    os.environ[_counter.URL_ENV] = url
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    per = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    workers = [ctx.Process(target=_floor_process, args=(body, threads, k, go)) for k in per]
    for w in workers:
        w.start()
    try:
        time.sleep(0.2)  # forked and waiting on ``go``
        got = measure(r, [w.pid for w in workers if w.pid], go.set, n, f"floor {wl}")
    finally:
        for w in workers:
            w.join(60)
            if w.is_alive():
                w.kill()
    return got


def start_forkq(url: str, procs: int, threads: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FORKQ_LOG_LEVEL="WARNING")
    env[_counter.URL_ENV] = url
    return subprocess.Popen([sys.executable, "-m", "forkq", "-p", str(procs), "-c", str(threads),
                             "--redis", url, "bench.jobs"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def run_forkq(r: redis.Redis, url: str, wl: str, n: int) -> dict[str, float]:
    _label, name, _body, procs, threads, _ = WORKLOADS[wl]
    w = start_forkq(url, procs, threads)
    try:
        deadline = time.monotonic() + 60
        while r.scard(K.processes) < procs:
            if w.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("forkq workers did not start")
            time.sleep(0.05)
        r.delete(_counter.DONE_KEY)
        r.set(K.paused(name), b"1")
        enq = forkq.Enqueuer(url, NAMESPACE)
        try:
            for at in range(0, n, 1000):
                enq.enqueue_many(name, [None] * min(1000, n - at))
        finally:
            enq.close()

        def release() -> None:
            r.delete(K.paused(name))
            r.publish(K.wake_channel, name)

        return measure(r, [w.pid], release, n, f"forkq {wl}")
    finally:
        w.terminate()
        w.wait(60)
        r.delete(*[k for k in r.scan_iter(match=K.prefix + "*")] or ["-"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ",".join(WORKLOADS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every N (a smoke run: 0.1)")
    opts = ap.parse_args()
    chosen = [w.strip() for w in opts.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown:
        print(f"floor.py: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}",
              file=sys.stderr)
        return 2
    server = RedisServer().start()
    rows: list[tuple[str, str, dict[str, float], dict[str, float]]] = []
    try:
        r = server.client()
        for wl in chosen:
            n = max(100, int(WORKLOADS[wl][5] * opts.scale))
            got: dict[str, list[dict[str, float]]] = {"floor": [], "forkq": []}
            for _ in range(opts.reps):
                for system, run in (("floor", run_floor), ("forkq", run_forkq)):
                    one = run(r, server.url, wl, n)
                    got[system].append(one)
                    print(f"{wl} {system}: {one['rate']:,.0f} jobs/s, worker {one['worker_us']:.1f} µs/job, "
                          f"{one['cmds']:.2f} cmds/job, Redis {one['redis_us']:.1f} µs/job", file=sys.stderr)
            med = {s: {k: statistics.median(x[k] for x in v) for k in v[0]} for s, v in got.items()}
            rows.append((wl, f"N={n:,}", med["floor"], med["forkq"]))
    finally:
        server.cleanup()
    print(f"| workload | system | jobs/s | % of floor | worker CPU µs/job | Redis cmds/job | Redis µs/job |"
          f"  (medians of {opts.reps})")
    print("|---|---|---:|---:|---:|---:|---:|")
    for wl, n_label, fl, fq in rows:
        label = WORKLOADS[wl][0]
        print(f"| {label} ({n_label}) | floor: the bodies alone, no queue | {fl['rate']:,.0f} | 100% "
              f"| {fl['worker_us']:.1f} | {fl['cmds']:.2f} | {fl['redis_us']:.1f} |")
        print(f"| | forkq | {fq['rate']:,.0f} | {100 * fq['rate'] / fl['rate']:.0f}% | {fq['worker_us']:.1f} "
              f"| {fq['cmds']:.2f} | {fq['redis_us']:.1f} |")
        print(f"| | forkq's own share (forkq − floor) | | | {fq['worker_us'] - fl['worker_us']:.1f} "
              f"| {fq['cmds'] - fl['cmds']:.2f} | {fq['redis_us'] - fl['redis_us']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flow-control overhead (issue 16): no-op throughput with and without batches.

    python bench/flow.py                 # N=100,000, 3 repetitions of each mode
    python bench/flow.py --n 20000 --reps 1

Runs the real CLI (``python -m forkq -p 2 -c 10 bench.jobs``) on a redis-server
started here.  Each repetition parks N no-op jobs first (the workers paused by a
``paused:noop`` flag), then lets them go and times the drain from the first to
the last completion (``bench:done``, as bench/run.py counts), so enqueueing is
not in the figure.  Modes:

- ``plain``: ``enqueue_many`` (the baseline);
- ``batched``: the same jobs in batches of 1,000 (``Enqueuer.batch`` with an
  ``on_complete`` callback each), so every ack also counts the job in its batch.

Prints a markdown table with medians and the overhead (1 - batched / plain).
Also reports Redis commands per job (INFO commandstats, Lua-internal included).
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
from bench.floor import redis_cpu, tree_cpu  # noqa: E402
from bench.jobs import NAMESPACE  # noqa: E402
from bench.peers._counter import DONE_KEY, URL_ENV  # noqa: E402
from forkq.keys import Keys  # noqa: E402

K = Keys(NAMESPACE)
BATCH = 1000


def commands(r: redis.Redis) -> int:
    return sum(int(v.get("calls", 0)) for v in r.info("commandstats").values())


def start_workers(url: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FORKQ_LOG_LEVEL="WARNING")
    env[URL_ENV] = url
    return subprocess.Popen([sys.executable, "-m", "forkq", "-p", "2", "-c", "10", "--redis", url,
                             "bench.jobs"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def one(r: redis.Redis, url: str, mode: str, n: int, master_pid: int) -> dict[str, Any]:
    r.delete(DONE_KEY)
    r.set(K.paused("noop"), b"1")
    enq = forkq.Enqueuer(url, NAMESPACE)
    try:
        for start in range(0, n, BATCH):
            args = [None] * min(BATCH, n - start)
            if mode == "plain":
                enq.enqueue_many("noop", args)
            else:
                with enq.batch(on_complete="noop") as b:
                    b.enqueue_many("noop", args)
    finally:
        enq.close()
    expected = n + (0 if mode == "plain" else -(-n // BATCH))  # + one callback per batch
    c0, rc0, w0 = commands(r), redis_cpu(r), tree_cpu([master_pid])
    r.delete(K.paused("noop"))
    r.publish(K.wake_channel, "noop")
    t_first = None
    end = time.monotonic() + 600
    while True:
        done = int(r.get(DONE_KEY) or 0)
        now = time.monotonic()
        if done and t_first is None:
            t_first, c_first = now, done
        if done >= expected:
            break
        if now > end:
            raise RuntimeError(f"{mode}: {done}/{expected} done after 600 s")
        time.sleep(0.002)
    assert t_first is not None
    cmds = commands(r) - c0
    rcpu, wcpu = redis_cpu(r) - rc0, tree_cpu([master_pid]) - w0
    rate = (expected - c_first) / max(now - t_first, 1e-6)
    return {"mode": mode, "rate": rate, "commands_per_job": cmds / expected,
            "redis_us": 1e6 * rcpu / expected, "worker_us": 1e6 * wcpu / expected}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    opts = ap.parse_args()
    server = RedisServer().start()
    results: dict[str, list[dict[str, Any]]] = {"plain": [], "batched": []}
    try:
        r = server.client()
        w = start_workers(server.url)
        try:
            deadline = time.monotonic() + 60
            while r.scard(K.processes) < 2:
                if w.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("forkq workers did not start")
                time.sleep(0.05)
            for _ in range(opts.reps):
                for mode in ("plain", "batched"):
                    got = one(r, server.url, mode, opts.n, w.pid)
                    results[mode].append(got)
                    print(f"{mode}: {got['rate']:,.0f} jobs/s, {got['commands_per_job']:.2f} cmds/job, "
                          f"worker {got['worker_us']:.1f} µs/job, Redis {got['redis_us']:.1f} µs/job",
                          file=sys.stderr)
        finally:
            w.terminate()
            w.wait(30)
    finally:
        server.cleanup()
    med = {m: statistics.median(x["rate"] for x in v) for m, v in results.items()}
    def mid(m: str, key: str) -> float:
        return statistics.median(x[key] for x in results[m])

    print(f"| mode (N={opts.n:,}, -p 2 -c 10, medians of {opts.reps}) | jobs/s | Redis commands/job "
          "| worker CPU µs/job | Redis CPU µs/job |")
    print("|---|---:|---:|---:|---:|")
    for m in ("plain", "batched"):
        print(f"| {m} | {med[m]:,.0f} | {mid(m, 'commands_per_job'):.2f} | {mid(m, 'worker_us'):.1f} "
              f"| {mid(m, 'redis_us'):.1f} |")
    print(f"\nbatch overhead: {100 * (1 - med['batched'] / med['plain']):.1f}% of no-op throughput")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rate-limit accuracy and cost (issue 16): 2 hosts x 2 children sharing one limit.

    python bench/rate_limit.py                     # 200/s for 60 s
    python bench/rate_limit.py --rate 100 --seconds 30

Starts a redis-server and two real masters (``FORKQ_HOSTNAME`` host-a / host-b,
``-p 2 -c 8`` each) running ``bench/rate_jobs.py``: one name limited to
``--rate``/s with a backlog far larger than the run can drain, and nothing else.
Each start is stamped by Redis's clock.  Reports the starts per second over the
run (after the first second, which may carry the bucket's burst), its error
against the limit, the worst 1 s window, and the Redis script calls per started
job (a pool that spins on a limited queue would make this large).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
from redis_server import RedisServer  # noqa: E402

import forkq  # noqa: E402
from forkq.keys import Keys  # noqa: E402

NS = "ratebench"
K = Keys(NS)


def script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0)
    opts = ap.parse_args()
    server = RedisServer().start()
    masters: list[subprocess.Popen[bytes]] = []
    try:
        r = server.client()
        backlog = int(opts.rate * opts.seconds * 1.5) + 1000
        enq = forkq.Enqueuer(server.url, NS)
        r.set(K.paused("limited"), b"1")
        for i in range(0, backlog, 5000):
            enq.enqueue_many("limited", [None] * min(5000, backlog - i))
        enq.close()
        env = dict(os.environ, PYTHONPATH=str(ROOT), FORKQ_LOG_LEVEL="WARNING",
                   BENCH_RATE=f"{opts.rate}/s", BENCH_REDIS_URL=server.url)
        for host in ("host-a", "host-b"):
            masters.append(subprocess.Popen(
                [sys.executable, "-m", "forkq", "-p", "2", "-c", "8", "--redis", server.url,
                 "bench.rate_jobs"], cwd=ROOT, env=dict(env, FORKQ_HOSTNAME=host),
                stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while r.scard(K.processes) < 4:
            if time.monotonic() > deadline or any(m.poll() is not None for m in masters):
                raise RuntimeError("the masters did not start 4 pools")
            time.sleep(0.05)
        c0 = script_calls(r)
        r.delete(K.paused("limited"))
        r.publish(K.wake_channel, "limited")
        time.sleep(opts.seconds)
        calls = script_calls(r) - c0
        starts = sorted(float(x) for x in r.lrange("bench:rate_starts", 0, -1))
    finally:
        for m in masters:
            m.terminate()
        for m in masters:
            m.wait(30)
        server.cleanup()
    t0 = starts[0]
    steady = [t for t in starts if t >= t0 + 1.0]
    span = steady[-1] - steady[0]
    rate = (len(steady) - 1) / span if span > 0 else 0.0
    worst, j = 0, 0
    for i in range(len(starts)):
        while starts[i] - starts[j] > 1.0:
            j += 1
        worst = max(worst, i - j + 1)
    print("| limit | run | starts | steady rate (after 1 s) | error | worst 1 s window | script calls / start |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {opts.rate}/s, 2 hosts x 2 children | {opts.seconds:g} s | {len(starts):,} | {rate:,.1f}/s | "
          f"{100 * (rate / opts.rate - 1):+.2f}% | {worst} | {calls / max(1, len(starts)):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time benchmark (issue 9): how late scheduled, retried and periodic jobs start,
how fast a burst of due jobs drains, and how soon a dead host's jobs come back.

    python bench/lateness.py                 # everything, 3 repetitions (~8 minutes on 2 cores)
    python bench/lateness.py --skip-kills --reps 1   # one repetition, no host deaths (~2 minutes)

Starts its own redis-server and the real CLI (``python -m forkq -p 2 -c 8``).
Every time is Redis's (``TIME`` inside the jobs and here), lateness = start - due.
Prints a markdown report; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from redis_server import RedisServer  # noqa: E402

import forkq  # noqa: E402
from forkq import clock, scripts  # noqa: E402
from forkq import job as jobcodec  # noqa: E402
from forkq.keys import Keys  # noqa: E402

NS = "lat"
K = Keys(NS)


def now(r: redis.Redis) -> float:
    return clock.parse_time(r.time())


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def ms(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(pct(values, 50) * 1000, 1),
            "p99_ms": round(pct(values, 99) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


class Workers:
    def __init__(self, url: str, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ("-p", "2", "-c", "8"),
                 tag: str = "") -> None:
        full = dict(os.environ, BENCH_REDIS_URL=url, PYTHONPATH=str(ROOT), FORKQ_LOG_LEVEL="WARNING")
        full.update(env or {})
        self.log = open(f"/tmp/forkq-lateness{tag}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "forkq", *args, "--redis", url, "bench.lateness_jobs"],
                                     env=full, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, r: redis.Redis, n: int) -> set[str]:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            kids = {p.pid for p in psutil.Process(self.proc.pid).children()}
            idents = {m.decode() for m in r.zrange(K.pools, 0, -1) if int(m.decode().split(":")[1]) in kids}
            if len(kids) == n and len(idents) == n:
                return idents
            time.sleep(0.05)
        raise RuntimeError("workers did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()

    def kill_host(self) -> None:
        for p in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(10)
        self.log.close()


def wait_hash(r: redis.Redis, key: str, n: int, timeout: float = 120) -> dict[str, float]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if r.hlen(key) >= n:
            return {k.decode(): float(v) for k, v in r.hgetall(key).items()}
        time.sleep(0.01)
    raise RuntimeError(f"{key}: only {r.hlen(key)} of {n}")


def sample_scheduled(r: redis.Redis, enq: forkq.Enqueuer, *, n: int, busy: bool = False) -> list[float]:
    """One job at a time: enqueue_in 0.1-0.5 s into an idle (or busy-with-free-threads) pool."""
    r.delete("lat:start")
    if busy:
        # 8 of the 16 threads busy all along (long jobs), 8 free.
        enq.enqueue_many("busy", [{"s": 0.7 * n + 5}] * 8)
        time.sleep(0.5)
    out = []
    for i in range(n):
        sj = enq.enqueue_in("stamp", random.uniform(0.1, 0.5))
        started = wait_hash(r, "lat:start", i + 1, 10)[sj.job.id]
        out.append(started - sj.run_at)
    if busy:
        while any(r.hlen(k) for k in r.scan_iter(match=K.inprogress("") + "*")):
            time.sleep(0.1)  # let the long jobs end
    return out


def sample_while_sleeping(r: redis.Redis, enq: forkq.Enqueuer, *, n: int) -> list[float]:
    """n jobs enqueued at decreasing due times while every fetcher sleeps: each re-arms them."""
    r.delete("lat:start")
    time.sleep(1.0)
    jobs = [enq.enqueue_in("stamp", 0.5 + 0.05 * (n - i)) for i in range(n)]
    got = wait_hash(r, "lat:start", n, 30)
    return [got[s.job.id] - s.run_at for s in jobs]


def burst(r: redis.Redis, n: int) -> dict[str, Any]:
    r.delete("lat:start")
    due = now(r) + 3.0
    for i in range(0, n, 5000):
        payloads = [jobcodec.encode(jobcodec.build_payload("stamp", {"i": j})) for j in range(i, min(n, i + 5000))]
        scripts.run_one(r, scripts.schedule(K, payloads=payloads, run_at=due))
    promoted_at = None
    while promoted_at is None:
        if now(r) >= due and r.zcard(K.schedule) == 0:
            promoted_at = now(r)
        time.sleep(0.002)
    got = wait_hash(r, "lat:start", n, 120)
    starts = sorted(got.values())
    return {"n": n, "promoted_within_s": round(promoted_at - due, 3),
            "promotion_rate_per_s": round(n / max(promoted_at - due, 1e-3)),
            "all_started_within_s": round(starts[-1] - due, 3), "early": sum(1 for s in starts if s < due)}


def retry_storm(r: redis.Redis, enq: forkq.Enqueuer, n: int) -> dict[str, Any]:
    """n jobs that fail once (at once, no round trip of their own) with a 1 s backoff;
    lateness of each retry = its start - its due time (its score in retry)."""
    r.delete("lat:start", "lat:due")
    for i in range(0, n, 1000):
        enq.enqueue_many("flaky", [{}] * min(1000, n - i))
    started = wait_hash(r, "lat:start", n, 180)
    due = wait_hash(r, "lat:due", n, 10)
    late = [started[j] - due[j] for j in started]
    # Both times are readings of Redis's clock in the children (forkq.clock: within
    # half a round trip plus drift), while promotion itself decides with TIME: a
    # reading a fraction of a millisecond "early" is the readings' error, not an
    # early start.  Counted beyond 2 ms, and the earliest is shown.
    return {"n": n, **ms(late), "min_ms": round(min(late) * 1000, 2),
            "last_retry_after_last_due_s": round(max(started.values()) - max(due.values()), 3),
            "early_beyond_2ms": sum(1 for x in late if x < -0.002)}


def periodic(url: str, r: redis.Redis, n: int) -> dict[str, Any]:
    """Every-second occurrences while half the threads are busy.  An occurrence due in
    the second before the pool started is run at startup (catch-up, see
    scheduler.schedule_periodic); it was due before any thread existed, so it is
    reported on its own, not as lateness of a running pool."""
    r.delete("lat:tick")
    w = Workers(url, env={"BENCH_PERIODIC": "1"}, tag="-periodic")
    try:
        w.wait_ready(r, 2)
        ready = now(r)
        enq = forkq.Enqueuer(url, NS)
        enq.enqueue_many("busy", [{"s": n + 10.0}] * 8)  # half the threads busy, half free
        got = wait_hash(r, "lat:tick", n + 2, n + 30)
        enq.close()
    finally:
        w.stop()
    due = {jid: int(jid.rsplit(":", 1)[1]) for jid in got}
    late = [t - due[jid] for jid, t in got.items() if due[jid] >= ready]
    caught_up = [round((t - due[jid]) * 1000, 1) for jid, t in got.items() if due[jid] < ready]
    return {**ms(late), "startup_catch_up_ms": caught_up}


def host_deaths(url: str, r: redis.Redis, kills: int) -> dict[str, Any]:
    """Default settings (beat 5 s, stale_after 15 s): kill -9 a whole host (master and
    child) at a random moment; time until another host requeued its jobs."""
    survivor = Workers(url, args=("-p", "1", "-c", "4"), tag="-survivor",
                       env={"FORKQ_HEARTBEAT_INTERVAL": "5", "FORKQ_STALE_AFTER": "15"})
    survivor.wait_ready(r, 1)
    took = []
    try:
        for k in range(kills):
            r.delete(K.queue("victim_only"))
            victim = Workers(url, args=("-p", "1", "-c", "2"), tag=f"-victim{k}",
                             env={"BENCH_ROLE": "victim", "FORKQ_HEARTBEAT_INTERVAL": "5", "FORKQ_STALE_AFTER": "15"})
            (ident,) = victim.wait_ready(r, 1)
            enq = forkq.Enqueuer(url, NS)
            enq.enqueue_many("victim_only", [{"s": 120}] * 2)
            enq.close()
            while r.hlen(K.inprogress(ident)) < 2:
                time.sleep(0.01)
            time.sleep(random.uniform(0, 5))  # anywhere in the beat cycle
            victim.kill_host()
            killed = time.monotonic()
            while r.hlen(K.inprogress(ident)) > 0:
                time.sleep(0.02)
            took.append(time.monotonic() - killed)
    finally:
        survivor.stop()
    return {"kills": kills, "requeued_after_s": [round(t, 2) for t in took],
            "median_s": round(statistics.median(took), 2), "max_s": round(max(took), 2)}


def one_rep(url: str, r: redis.Redis, opts: argparse.Namespace) -> dict[str, Any]:
    # A clean Redis: the periodic pool of the last repetition left five minutes of
    # occurrences in schedule, which the burst's "schedule is empty" would wait for.
    r.flushall()
    out: dict[str, Any] = {}
    w = Workers(url)
    try:
        w.wait_ready(r, 2)
        enq = forkq.Enqueuer(url, NS)
        out["idle"] = ms(sample_scheduled(r, enq, n=opts.samples))
        out["busy_free_threads"] = ms(sample_scheduled(r, enq, n=opts.samples, busy=True))
        out["enqueued_while_sleeping"] = ms(sample_while_sleeping(r, enq, n=opts.samples))
        out["burst"] = burst(r, opts.burst)
        out["retry_storm"] = retry_storm(r, enq, opts.burst)
        enq.close()
    finally:
        w.stop()
    out["periodic"] = periodic(url, r, opts.periodic)
    return out


def medians(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per measurement, the median of each number over the repetitions (lists are joined)."""
    out: dict[str, Any] = {}
    for name in reps[0]:
        merged: dict[str, Any] = {}
        for key, first in reps[0][name].items():
            vals = [rep[name][key] for rep in reps]
            if isinstance(first, list):
                merged[key] = [x for v in vals for x in v]
            else:
                med = statistics.median(vals)
                merged[key] = int(med) if isinstance(first, int) else round(med, 3)
        out[name] = merged
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--burst", type=int, default=20000)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--periodic", type=int, default=30, help="periodic occurrences to time")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (medians shown); host deaths run once")
    ap.add_argument("--skip-kills", action="store_true")
    ap.add_argument("--json")
    opts = ap.parse_args()
    server = RedisServer().start()
    reps: list[dict[str, Any]] = []
    try:
        url = server.url
        r = server.client()
        for i in range(opts.reps):
            print(f"repetition {i + 1}/{opts.reps}", file=sys.stderr)
            reps.append(one_rep(url, r, opts))
            print(json.dumps(reps[-1]), file=sys.stderr)
        out = medians(reps)
        if not opts.skip_kills:
            out["host_death"] = host_deaths(url, r, opts.kills)
    finally:
        server.cleanup()
    print(f"Medians of {opts.reps} repetitions (host deaths: {opts.kills} kills, each listed).\n")
    print("| measurement | result |\n|---|---|")
    for k, v in out.items():
        print(f"| {k} | {json.dumps(v)} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps({"medians": out, "repetitions": reps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

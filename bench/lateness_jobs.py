"""Jobs for bench/lateness.py.  Each records its start by Redis's clock."""

from __future__ import annotations

import os
import threading
import time

import redis

import forkq
from forkq import clock

pool = forkq.WorkerPool(namespace="lat")
_conns: dict[int, redis.Redis] = {}


def R() -> redis.Redis:
    c = _conns.get(os.getpid())
    if c is None:
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return c


# The stamp is the measurement, not the workload: a job reads Redis's clock as this
# process knows it (forkq.clock: Redis's TIME from the pool's last round trip that
# returned it, carried forward on the monotonic clock; error <= half a loopback
# round trip) and a per-process thread writes the stamps in batches.  Two round
# trips per stamp (TIME, then HSET) made the 20,000-job burst measure the stamp's
# cost (the jobs' own Redis traffic) rather than when forkq started them.
_buf: list[tuple[str, str, str]] = []
_buf_lock = threading.Lock()
_flusher_pid = 0


def _flush_forever() -> None:
    r = R()
    while True:
        time.sleep(0.01)
        with _buf_lock:
            batch = _buf[:]
            del _buf[:]
        if batch:
            pipe = r.pipeline(transaction=False)
            for key, jid, value in batch:
                pipe.hset(key, jid, value)
            pipe.execute()


def _stamp(key: str, jid: str, *, due_key: str = "", due: float = 0.0) -> None:
    global _flusher_pid
    t = clock.now()
    with _buf_lock:
        if _flusher_pid != os.getpid():  # first stamp in this (forked) process
            _flusher_pid = os.getpid()
            threading.Thread(target=_flush_forever, daemon=True).start()
        if due_key:
            _buf.append((due_key, jid, repr(due)))
        _buf.append((key, jid, repr(t)))


@pool.job("stamp")
def stamp(job: forkq.Job) -> None:
    _stamp("lat:start", job.id)


@pool.job("busy")
def busy(job: forkq.Job) -> None:
    time.sleep(job.arg_float("s"))


@pool.job("flaky", backoff=lambda job: 1, max_fails=3)
def flaky(job: forkq.Job) -> None:
    if job.fails == 0:
        # No round trip: the failures come as fast as the pool can run them.
        raise RuntimeError("first try fails")
    # A promoted retry's enqueued_at is its due time (the score it had in retry).
    _stamp("lat:start", job.id, due_key="lat:due", due=job.enqueued_at)


@pool.job("tick")
def tick(job: forkq.Job) -> None:
    _stamp("lat:tick", job.id)


if os.environ.get("BENCH_PERIODIC"):
    pool.periodically_enqueue("* * * * * *", "tick")

if os.environ.get("BENCH_ROLE") == "victim":
    @pool.job("victim_only")
    def victim_only(job: forkq.Job) -> None:
        time.sleep(job.arg_float("s"))

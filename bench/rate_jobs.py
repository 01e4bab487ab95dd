"""The job module of bench/rate_limit.py: one name limited to ``$BENCH_RATE``."""

from __future__ import annotations

import os

import redis

from forkq import Job, WorkerPool

pool = WorkerPool("ratebench")
_conns: dict[int, redis.Redis] = {}


def _r() -> redis.Redis:
    c = _conns.get(os.getpid())
    if c is None:
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return c


@pool.job("limited", rate_limit=os.environ.get("BENCH_RATE", "200/s"))
def limited(job: Job) -> None:
    r = _r()
    # The start, by Redis's clock, in one round trip.
    r.eval("local t = redis.call('TIME') "
           "return redis.call('RPUSH', KEYS[1], t[1] + t[2] / 1000000)", 1, "bench:rate_starts")

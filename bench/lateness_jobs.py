"""Jobs for bench/lateness.py.  Each records its start by Redis's clock."""

from __future__ import annotations

import os
import time

import redis

import forkq

pool = forkq.WorkerPool(namespace="lat")
_conns: dict[int, redis.Redis] = {}


def R() -> redis.Redis:
    c = _conns.get(os.getpid())
    if c is None:
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return c


def _now(r: redis.Redis) -> float:
    s, us = r.time()
    return s + us / 1e6


@pool.job("stamp")
def stamp(job: forkq.Job) -> None:
    r = R()
    r.hset("lat:start", job.id, repr(_now(r)))


@pool.job("busy")
def busy(job: forkq.Job) -> None:
    time.sleep(job.arg_float("s"))


@pool.job("flaky", backoff=lambda job: 1, max_fails=3)
def flaky(job: forkq.Job) -> None:
    r = R()
    if job.fails == 0:
        r.hset("lat:failed", job.id, repr(_now(r)))
        raise RuntimeError("first try fails")
    r.hset("lat:start", job.id, repr(_now(r)))


@pool.job("tick")
def tick(job: forkq.Job) -> None:
    r = R()
    r.hset("lat:tick", job.id, repr(_now(r)))


if os.environ.get("BENCH_PERIODIC"):
    pool.periodically_enqueue("* * * * * *", "tick")

if os.environ.get("BENCH_ROLE") == "victim":
    @pool.job("victim_only")
    def victim_only(job: forkq.Job) -> None:
        time.sleep(job.arg_float("s"))

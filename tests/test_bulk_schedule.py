"""``enqueue_in_many`` / ``enqueue_at_many``: thousands of scheduled jobs in one round trip.

Real Redis; the due time is Redis's (``TIME`` in schedule.lua for ``in``), and a
pool runs every job of the batch once, none before it is due.  Throughput is
measured by bench/enqueue_bulk.py, not here.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import redis
from helpers import start
from redis_server import wait_for

import forkq
from forkq import clock
from forkq.keys import Keys

NS = "bulk"
K = Keys(NS)


def _calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_enqueue_in_many_schedules_every_job_in_one_script_call_due_by_redis_clock(
        r: redis.Redis, redis_url: str) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    try:
        before_eval = _calls(r, "evalsha") + _calls(r, "eval")
        before = clock.parse_time(r.time())
        got = e.enqueue_in_many("later", 30, [{"i": i} for i in range(5000)])
        after = clock.parse_time(r.time())
        calls = _calls(r, "evalsha") + _calls(r, "eval") - before_eval
    finally:
        e.close()
    assert len(got) == 5000 and len({s.job.id for s in got}) == 5000
    assert [s.job.arg_int("i") for s in got] == list(range(5000))
    due = {s.run_at for s in got}
    assert len(due) == 1
    (run_at,) = due
    assert before + 30 <= run_at <= after + 30
    assert r.zcard(K.schedule) == 5000
    assert {float(score) for _, score in r.zrange(K.schedule, 0, -1, withscores=True)} == {run_at}
    # One script call (a script that was not loaded yet costs one NOSCRIPT retry).
    assert calls <= 2, calls


def test_enqueue_at_many_runs_every_job_once_and_none_early(r: redis.Redis, redis_url: str,
                                                            pools: list) -> None:
    ran: Counter[str] = Counter()
    started: dict[str, float] = {}
    lock = threading.Lock()
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=30.0))
    conn = redis.Redis.from_url(redis_url)

    @pool.job
    def soon(job: forkq.Job) -> None:
        t = clock.parse_time(conn.time())
        with lock:
            ran[job.id] += 1
            started.setdefault(job.id, t)

    start(pools, pool, redis_url, concurrency=8)
    e = pool.enqueuer(redis_url)
    when = clock.parse_time(r.time()) + 1.5
    got = e.enqueue_at_many("soon", when, [{"i": i} for i in range(2000)])
    assert {s.run_at for s in got} == {when}
    wait_for(lambda: len(ran) == 2000, 30, message="2000 scheduled jobs ran")
    assert set(ran) == {s.job.id for s in got}
    assert max(ran.values()) == 1
    assert min(started.values()) >= when
    assert r.zcard(K.schedule) == 0


def test_a_past_time_runs_at_once_and_an_empty_batch_costs_nothing(r: redis.Redis, redis_url: str) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    try:
        before = _calls(r, "evalsha") + _calls(r, "eval")
        assert e.enqueue_in_many("later", 10, []) == []
        assert _calls(r, "evalsha") + _calls(r, "eval") == before
        past = e.enqueue_at_many("x", 1.0, [None, {"a": 1}])
        assert [s.run_at for s in past] == [1.0, 1.0]
    finally:
        e.close()


def test_a_bad_argument_anywhere_in_the_batch_enqueues_nothing(r: redis.Redis, redis_url: str) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    try:
        with pytest.raises(TypeError, match="mapping"):
            e.enqueue_in_many("later", 5, [{"i": 1}, ["not", "a", "mapping"]])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            e.enqueue_at_many("later", 5.0, [{"i": 1}, {"bad": float("nan")}])
        with pytest.raises(forkq.ConfigError):
            e.enqueue_in_many("bad name{}", 5, [{"i": 1}])
    finally:
        e.close()
    assert r.zcard(K.schedule) == 0

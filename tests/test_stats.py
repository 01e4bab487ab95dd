"""Sidekiq-compatible stats and liveness records written by running pools, read back raw
from Redis and through forkq.Client: counters (total and per day, with TTL), the
``processes`` set and ``<identity>`` hash, ``<identity>:work``/``:workers`` while a job
runs, gocraft heartbeats and worker observations with check-ins."""

from __future__ import annotations

import os
import socket
import threading
import time

import orjson
import pytest
from helpers import Recorder, start
from redis_server import wait_for

import forkq
from forkq.client import Client
from forkq.keys import Keys
from forkq.stats import DAY_TTL

NS = "s"
K = Keys(NS)


@pytest.fixture
def client(redis_url: str):
    c = Client(redis_url, NS)
    yield c
    c.close()


def int_of(r, key: str) -> int:  # type: ignore[no-untyped-def]
    v = r.get(key)
    return int(v) if v is not None else 0


def test_counters_count_every_execution_and_every_failure_per_day_too(redis_url, fast_config, pools, r, client) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job
    def ok(job: forkq.Job) -> None: ...

    @pool.job(max_fails=2, backoff=lambda job: 0)
    def bad(job: forkq.Job) -> None:
        raise ValueError("always")

    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("ok", [{}] * 5)
    enq.enqueue_many("bad", [{}] * 3)
    start(pools, pool, redis_url, concurrency=3)
    # Each bad job runs twice (one retry, then dead): 5 + 6 executions, 6 failures.
    wait_for(lambda: r.zcard(K.dead) == 3, message="bad jobs to die")
    pool.drain(10)
    day = K.today()
    wait_for(lambda: int_of(r, K.stat_processed) == 11 and int_of(r, K.stat_failed) == 6,
             message="counters flushed by a heartbeat")
    assert int_of(r, K.stat_processed_day(day)) == 11
    assert int_of(r, K.stat_failed_day(day)) == 6
    for key in (K.stat_processed_day(day), K.stat_failed_day(day)):
        assert DAY_TTL - 3600 < r.ttl(key) <= DAY_TTL
    assert r.ttl(K.stat_processed) == -1  # the totals never expire
    s = client.stats()
    assert (s.processed, s.failed, s.processed_today, s.failed_today) == (11, 6, 11, 6)
    assert (s.dead, s.retry, s.enqueued, s.busy, s.processes) == (3, 0, 0, 0, 1)


def test_a_live_pool_is_a_sidekiq_process_with_info_busy_beat_quiet_rss(redis_url, fast_config, pools, r) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job
    def noop(job: forkq.Job) -> None: ...

    start(pools, pool, redis_url, concurrency=4)
    rt = pool.runtime
    assert rt is not None
    ident = rt.identity
    assert r.smembers(K.processes) == {ident.encode()}
    h = {k.decode(): v.decode() for k, v in r.hgetall(K.process(ident)).items()}
    assert {"info", "busy", "beat", "quiet", "rss"} <= set(h)
    info = orjson.loads(h["info"])
    assert info["hostname"] == socket.gethostname() and info["pid"] == os.getpid()
    assert info["concurrency"] == 4 and info["queues"] == ["noop"] and info["identity"] == ident
    assert info["started_at"] <= time.time()
    assert h["busy"] == "0" and h["quiet"] == "false" and int(h["rss"]) > 0
    assert abs(float(h["beat"]) - time.time()) < 60
    assert 0 < r.ttl(K.process(ident)) <= 60
    first_beat = float(h["beat"])
    wait_for(lambda: float(r.hget(K.process(ident), "beat")) > first_beat, message="a later beat")
    rt.quiet()
    assert r.hget(K.process(ident), "quiet") == b"true"


def test_a_stopped_pool_leaves_no_process_records(redis_url, fast_config, r, client) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job
    def noop(job: forkq.Job) -> None: ...

    pool.start(redis_url, concurrency=2)
    rt = pool.runtime
    assert rt is not None
    ident = rt.identity
    assert client.stats().processes == 1
    pool.stop(timeout=5)
    assert not r.sismember(K.processes, ident)
    assert not r.exists(K.process(ident), K.process_work(ident), K.process_workers(ident), K.pool(ident))
    assert client.stats().processes == 0
    assert client.worker_pool_heartbeats() == []


def test_a_running_job_shows_in_work_workers_observations_and_stats(redis_url, fast_config, pools, r, client) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    started = threading.Event()
    release = threading.Event()
    checked_in = threading.Event()
    finished = Recorder()

    @pool.job
    def crunch(job: forkq.Job) -> None:
        started.set()
        checked_in.wait(30)
        job.checkin("halfway there")
        release.wait(30)
        finished.add(job.id)

    start(pools, pool, redis_url, concurrency=3)
    rt = pool.runtime
    assert rt is not None
    ident = rt.identity
    try:
        queued = pool.enqueuer(redis_url).enqueue("crunch", {"rows": 1000})
        assert started.wait(10)
        # Sidekiq's busy view: <identity>:work and its 6.x twin <identity>:workers.
        work = wait_for(lambda: r.hgetall(K.process_work(ident)), message=":work entry")
        assert r.hgetall(K.process_workers(ident)) == work
        (entry,) = [orjson.loads(v) for v in work.values()]
        assert entry["queue"] == "crunch" and 0 < entry["run_at"] <= time.time()
        assert orjson.loads(entry["payload"])["jid"] == queued.id
        assert 0 < r.ttl(K.process_work(ident)) <= 60
        wait_for(lambda: r.hget(K.process(ident), "busy") == b"1", message="busy=1")
        assert client.stats().busy == 1

        (hb,) = client.worker_pool_heartbeats()
        assert hb.worker_pool_id == ident and len(hb.worker_ids) == 3
        busy = wait_for(lambda: [o for o in client.worker_observations() if o.is_busy],
                        message="busy observation")
        (ob,) = busy
        assert (ob.job_name, ob.job_id, ob.args, ob.checkin) == ("crunch", queued.id, {"rows": 1000}, "")
        assert ob.worker_pool_id == ident and ob.worker_id in hb.worker_ids
        assert ob.started_at <= time.time()

        checked_in.set()
        ob = wait_for(lambda: next((o for o in client.worker_observations()
                                    if o.is_busy and o.checkin), None), message="check-in after a beat")
        assert ob.checkin == "halfway there" and abs(ob.checkin_at - time.time()) < 60
        assert sum(not o.is_busy for o in client.worker_observations()) == 2
    finally:
        checked_in.set()
        release.set()
    wait_for(lambda: len(finished) == 1, message="job to finish")
    wait_for(lambda: not r.exists(K.process_work(ident)) and r.hget(K.process(ident), "busy") == b"0",
             message="idle beat")
    assert not r.exists(K.process_workers(ident))
    assert not any(o.is_busy for o in client.worker_observations())
    assert client.stats().busy == 0


def test_busy_and_processes_add_up_over_several_pools(redis_url, fast_config, pools, client) -> None:
    release = threading.Event()
    running = Recorder()

    def blocker(job: forkq.Job) -> None:
        running.add(job.name)
        release.wait(30)

    a = forkq.WorkerPool(NS, config=fast_config)
    a.register("slow_a", blocker)
    b = forkq.WorkerPool(NS, config=fast_config)
    b.register("slow_b", blocker)
    start(pools, a, redis_url, concurrency=3)
    start(pools, b, redis_url, concurrency=2)
    try:
        enq = a.enqueuer(redis_url)
        enq.enqueue_many("slow_a", [{}] * 2)
        enq.enqueue("slow_b")
        wait_for(lambda: len(running) == 3, message="three jobs running")
        wait_for(lambda: client.stats().busy == 3, message="busy over both pools")
        s = client.stats()
        assert s.processes == 2 and s.enqueued == 0
        assert sorted(h.concurrency for h in client.worker_pool_heartbeats()) == [2, 3]
        # Observations are written by the beats (busy is live): wait for the next ones.
        obs = wait_for(lambda: (lambda o: o if sum(x.is_busy for x in o) == 3 else None)(
            client.worker_observations()), message="observations of the three jobs")
        assert len(obs) == 5 and sorted(o.job_name for o in obs if o.is_busy) == ["slow_a", "slow_a", "slow_b"]
    finally:
        release.set()


def calls(r, command: str) -> int:  # type: ignore[no-untyped-def]
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_counters_are_buffered_in_the_pool_and_flushed_at_stop(redis_url, r) -> None:
    config = forkq.Config(heartbeat_interval=3600, idle_poll_interval=0.2, shutdown_timeout=5,
                          lease_ttl=7200, stale_after=7200)
    pool = forkq.WorkerPool(NS, config=config)

    @pool.job
    def ok(job: forkq.Job) -> None: ...

    r.config_resetstat()
    pool.start(redis_url, concurrency=4)
    try:
        # Each beat ZADDs the pools zset once: after the beat at start and the
        # housekeeper's first one, the next is an hour away.
        wait_for(lambda: calls(r, "zadd") >= 2, message="the two start-up beats")
        pool.enqueuer(redis_url).enqueue_many("ok", [{}] * 300)
        pool.drain(30)
        assert r.get(K.stat_processed) is None  # still in the pool's buffer
    finally:
        pool.stop(timeout=5)
    assert int_of(r, K.stat_processed) == 300 and int_of(r, K.stat_processed_day(K.today())) == 300
    assert calls(r, "incrby") == 2  # the total and today's key, once, for 300 jobs

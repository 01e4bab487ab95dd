"""Reporters (Kiq's behaviour): event order per outcome, exactly one outcome per job,
raising and slow reporters never touch job execution."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
import pytest
import redis
from helpers import Recorder
from redis_server import wait_for

import forkq
from forkq.keys import Keys

NS = "rep"
K = Keys(NS)
OUTCOMES = ("success", "failure", "aborted")


class Recording(forkq.Reporter):
    """Records ``(event, jid, extra)`` in arrival order."""

    def __init__(self) -> None:
        self.events = Recorder()

    def started(self, job: forkq.Job) -> None:
        self.events.add(("started", job.id, None))

    def success(self, job: forkq.Job, duration: float) -> None:
        self.events.add(("success", job.id, duration))

    def failure(self, job: forkq.Job, error: BaseException, traceback: str) -> None:
        self.events.add(("failure", job.id, (error, traceback)))

    def aborted(self, job: forkq.Job, reason: str) -> None:
        self.events.add(("aborted", job.id, reason))

    def stopped(self, job: forkq.Job) -> None:
        self.events.add(("stopped", job.id, None))

    def of(self, jid: str) -> list[tuple[str, Any]]:
        return [(ev, extra) for ev, j, extra in self.events.snapshot() if j == jid]

    def names_of(self, jid: str) -> list[str]:
        return [ev for ev, _ in self.of(jid)]


def run_pool(pool: forkq.WorkerPool, pools: list[forkq.WorkerPool], url: str,
             concurrency: int = 2) -> forkq.WorkerPool:
    pool.start(url, concurrency=concurrency)
    pools.append(pool)
    return pool


def counters(r: redis.Redis) -> tuple[int, int]:
    return int(r.get(K.stat_processed) or 0), int(r.get(K.stat_failed) or 0)


def test_success_emits_started_success_stopped_with_a_duration(
        redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    rec = pool.reporter(Recording())

    @pool.job
    def ok(job: forkq.Job) -> None:
        time.sleep(0.02)

    job = pool.enqueuer(redis_url).enqueue("ok", {"x": 1})
    run_pool(pool, pools, redis_url)
    pool.drain(10)
    pool.stop(timeout=2)  # delivers every queued event before returning
    assert rec.names_of(job.id) == ["started", "success", "stopped"]
    duration = rec.of(job.id)[1][1]
    assert isinstance(duration, float) and duration >= 0.02


def test_failure_emits_the_exception_and_its_traceback(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    rec = pool.reporter(Recording())

    @pool.job
    def broken(job: forkq.Job) -> None:
        raise ValueError("card declined")

    job = pool.enqueuer(redis_url).enqueue("broken")
    run_pool(pool, pools, redis_url)
    pool.drain(10)
    pool.stop(timeout=2)
    assert rec.names_of(job.id) == ["started", "failure", "stopped"]
    error, tb = rec.of(job.id)[1][1]
    assert isinstance(error, ValueError) and str(error) == "card declined"
    assert tb.startswith("Traceback (most recent call last)")
    assert "in broken" in tb and "ValueError: card declined" in tb
    assert r.zcard(K.retry) == 1


def test_timeout_emits_aborted_timeout_and_the_job_goes_to_retry(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    rec = pool.reporter(Recording())

    @pool.job(timeout=0.2)
    def slow(job: forkq.Job) -> None:
        end = time.monotonic() + 10
        while time.monotonic() < end:  # small steps: the soft timeout lands between them
            time.sleep(0.01)

    job = pool.enqueuer(redis_url).enqueue("slow")
    run_pool(pool, pools, redis_url)
    wait_for(lambda: r.zcard(K.retry) == 1, timeout=10, message="timed-out job in retry")
    pool.stop(timeout=2)
    assert rec.names_of(job.id) == ["started", "aborted", "stopped"]
    assert rec.of(job.id)[1][1] == "timeout"
    entry = orjson.loads(r.zrange(K.retry, 0, 0)[0])
    assert entry["jid"] == job.id and entry["error_class"] == "JobTimeout"


def test_shutdown_while_a_job_runs_emits_aborted_shutdown_and_requeues_it(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    rec = pool.reporter(Recording())
    running = threading.Event()
    release = threading.Event()

    @pool.job
    def blocker(job: forkq.Job) -> None:
        running.set()
        while not release.wait(0.01):
            pass

    job = pool.enqueuer(redis_url).enqueue("blocker")
    run_pool(pool, pools, redis_url)
    assert running.wait(10)
    try:
        pool.stop(timeout=0.2)
    finally:
        release.set()
    assert rec.names_of(job.id) == ["started", "aborted", "stopped"]
    assert rec.of(job.id)[1][1] == "shutdown"
    # Not failed: back on its queue for the next pool, not in retry.
    assert [orjson.loads(p)["jid"] for p in r.lrange(K.queue("blocker"), 0, -1)] == [job.id]
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0


def test_every_job_gets_started_then_exactly_one_outcome_then_stopped(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    rec = pool.reporter(Recording())

    @pool.job
    def mixed(job: forkq.Job) -> None:
        i = job.arg_int("i")
        if i % 3 == 1:
            raise RuntimeError(f"fail {i}")
        if i % 3 == 2:
            while True:  # aborted by its timeout
                time.sleep(0.01)

    pool.register("mixed_t", mixed, forkq.JobOptions(timeout=0.2))
    enq = pool.enqueuer(redis_url)
    jobs = [enq.enqueue("mixed" if i % 3 != 2 else "mixed_t", {"i": i}) for i in range(12)]
    run_pool(pool, pools, redis_url, concurrency=4)
    wait_for(lambda: r.zcard(K.retry) == 8, timeout=20, message="4 failures and 4 timeouts in retry")
    pool.drain(10)
    pool.stop(timeout=2)
    expected = {0: "success", 1: "failure", 2: "aborted"}
    for i, job in enumerate(jobs):
        names = rec.names_of(job.id)
        assert names == ["started", expected[i % 3], "stopped"], (i, names)
        assert sum(names.count(o) for o in OUTCOMES) == 1


class Exploding:
    """A duck-typed reporter (no base class) that raises on every event."""

    def __init__(self) -> None:
        self.calls = Recorder()

    def _boom(self, event: str) -> None:
        self.calls.add(event)
        raise RuntimeError(f"reporter exploded on {event}")

    def started(self, job: forkq.Job) -> None:
        self._boom("started")

    def success(self, job: forkq.Job, duration: float) -> None:
        self._boom("success")

    def stopped(self, job: forkq.Job) -> None:
        self._boom("stopped")


def test_a_raising_reporter_is_logged_and_never_fails_the_job(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool],
        caplog: pytest.LogCaptureFixture) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    boom = pool.reporter(Exploding())
    rec = pool.reporter(Recording())  # registered after the raising one: still served
    done = Recorder()

    @pool.job
    def fine(job: forkq.Job) -> None:
        done.add(job.id)

    enq = pool.enqueuer(redis_url)
    jobs = [enq.enqueue("fine", {"i": i}) for i in range(5)]
    with caplog.at_level(logging.ERROR, logger="forkq.reporters"):
        run_pool(pool, pools, redis_url)
        pool.drain(10)
        pool.stop(timeout=2)
    assert sorted(done.snapshot()) == sorted(j.id for j in jobs)
    assert counters(r) == (5, 0)
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0
    assert len(boom.calls) == 15
    for job in jobs:
        assert rec.names_of(job.id) == ["started", "success", "stopped"]
    logged = [rec_.getMessage() for rec_ in caplog.records if rec_.name == "forkq.reporters"]
    assert len(logged) == 15 and all("raised on" in m and "ignored" in m for m in logged)
    assert any(rec_.exc_info and "reporter exploded" in str(rec_.exc_info[1]) for rec_ in caplog.records)


def test_a_blocked_reporter_does_not_hold_up_jobs_or_their_acks(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    """The reporter is stuck on its very first event while every job runs and is acked."""
    pool = forkq.WorkerPool(NS, config=fast_config)
    gate = threading.Event()
    delivered = Recorder()

    class Stuck(forkq.Reporter):
        def started(self, job: forkq.Job) -> None:
            gate.wait(30)
            delivered.add("started")

        def stopped(self, job: forkq.Job) -> None:
            delivered.add("stopped")

    pool.reporter(Stuck())
    ran = Recorder()

    @pool.job
    def quick(job: forkq.Job) -> None:
        ran.add(job.id)

    n = 30
    pool.enqueuer(redis_url).enqueue_many("quick", [{"i": i} for i in range(n)])
    run_pool(pool, pools, redis_url, concurrency=4)
    try:
        pool.drain(20)  # returns once every job ran and was acked
        assert len(ran) == n
        assert r.llen(K.queue("quick")) == 0
        inprogress = [k for k in r.keys(K.prefix + "inprogress:*") if r.hlen(k)]
        assert inprogress == []
        assert len(delivered) == 0  # the reporter has not even finished its first event
    finally:
        gate.set()
    wait_for(lambda: len(delivered) == 2 * n, timeout=10, message="every event delivered late")


def test_a_slow_reporter_does_not_slow_execution(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    """50 ms per event: all jobs are acked long before the reporter catches up."""
    pool = forkq.WorkerPool(NS, config=fast_config)
    delivered = Recorder()

    class Slow(forkq.Reporter):
        def started(self, job: forkq.Job) -> None:
            time.sleep(0.05)
            delivered.add(("started", job.id))

        def success(self, job: forkq.Job, duration: float) -> None:
            time.sleep(0.05)
            delivered.add(("success", job.id))

        def stopped(self, job: forkq.Job) -> None:
            time.sleep(0.05)
            delivered.add(("stopped", job.id))

    pool.reporter(Slow())

    @pool.job
    def quick(job: forkq.Job) -> None:
        pass

    n = 24
    jobs = pool.enqueuer(redis_url).enqueue_many("quick", [{"i": i} for i in range(n)])
    run_pool(pool, pools, redis_url, concurrency=4)
    pool.drain(20)
    behind = 3 * n - len(delivered)
    # Every job is finished and acked while most of its events are still queued.
    assert [k for k in r.keys(K.prefix + "inprogress:*") if r.hlen(k)] == []
    assert behind > n, f"only {behind} of {3 * n} events were still undelivered"
    wait_for(lambda: len(delivered) == 3 * n, timeout=30, message="slow reporter to catch up")
    for job in jobs:
        assert [ev for ev, jid in delivered.snapshot() if jid == job.id] == ["started", "success", "stopped"]


def test_reporters_may_implement_any_subset_of_events(
        redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    stops = Recorder()

    class OnlyStopped:
        def stopped(self, job: forkq.Job) -> None:
            stops.add(job.id)

    pool.reporter(OnlyStopped())

    @pool.job
    def work(job: forkq.Job) -> None:
        if job.arg_int("i") == 1:
            raise KeyError("x")

    enq = pool.enqueuer(redis_url)
    jobs = [enq.enqueue("work", {"i": i}) for i in range(2)]
    run_pool(pool, pools, redis_url)
    pool.drain(10)
    pool.stop(timeout=2)
    assert sorted(stops.snapshot()) == sorted(j.id for j in jobs)


def test_a_reporter_raising_system_exit_does_not_end_event_delivery(
        redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    class Quitter:
        def started(self, job: forkq.Job) -> None:
            raise SystemExit(3)

    pool.reporter(Quitter())
    rec = pool.reporter(Recording())

    @pool.job
    def fine(job: forkq.Job) -> None:
        pass

    enq = pool.enqueuer(redis_url)
    jobs = [enq.enqueue("fine", {"i": i}) for i in range(3)]
    run_pool(pool, pools, redis_url, concurrency=1)
    pool.drain(10)
    pool.stop(timeout=2)
    for job in jobs:
        assert rec.names_of(job.id) == ["started", "success", "stopped"]


def test_a_job_stuck_in_a_c_call_at_shutdown_still_gets_aborted_and_stopped(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    """The shutdown interrupt cannot land inside one long C call (time.sleep); the pool
    requeues the job and its reporters still see aborted("shutdown") then stopped."""
    pool = forkq.WorkerPool(NS, config=fast_config)
    rec = pool.reporter(Recording())
    running = threading.Event()
    threads: list[threading.Thread] = []

    @pool.job
    def stuck(job: forkq.Job) -> None:
        threads.append(threading.current_thread())
        running.set()
        time.sleep(1.5)

    job = pool.enqueuer(redis_url).enqueue("stuck")
    run_pool(pool, pools, redis_url, concurrency=1)
    assert running.wait(10)
    pool.stop(timeout=0.2)
    assert rec.names_of(job.id) == ["started", "aborted", "stopped"]
    assert rec.of(job.id)[1][1] == "shutdown"
    assert [orjson.loads(p)["jid"] for p in r.lrange(K.queue("stuck"), 0, -1)] == [job.id]
    # The job's thread wakes up after the pool is gone and runs to its end (joined,
    # not a fixed wait): still no second outcome.
    threads[0].join(10)
    assert not threads[0].is_alive()
    assert rec.names_of(job.id) == ["started", "aborted", "stopped"]

"""``Client.cancel`` / ``forkq cancel JID`` (cancel.lua): every state a job can be in,
with real Redis, real pools and, for a kill during cancellation, a real CLI child."""

from __future__ import annotations

import asyncio
import io
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from helpers import Recorder, start
from procs import (
    KEYS,
    ForkqProc,
    identity_of,
    runs,
    start_forkq,
    wait_all_done,
    wait_children_ready,
    write_jobs,
)
from procs import (
    NS as PROC_NS,
)
from redis_server import wait_for

import forkq
from forkq import admin_cli
from forkq.keys import Keys

NS = "cx"
K = Keys(NS)


class Heard:
    def __init__(self) -> None:
        self.rec = Recorder()

    def aborted(self, job: forkq.Job, reason: str) -> None:
        self.rec.add(("aborted", job.id, reason))

    def success(self, job: forkq.Job, seconds: float) -> None:
        self.rec.add(("success", job.id))

    def failure(self, job: forkq.Job, exc: BaseException, tb: str) -> None:
        self.rec.add(("failure", job.id))


def test_cancelled_queued_job_is_removed_and_never_runs(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    ran = Recorder()

    @pool.job
    def work(job: forkq.Job) -> None:
        ran.add(job.id)

    enq = pool.enqueuer(redis_url)
    jobs = enq.enqueue_many("work", [{"i": i} for i in range(50)])
    victim = jobs[25].id
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(victim) is True
        assert c.cancel(victim) is False  # gone: nothing to cancel twice
        assert c.cancel("no-such-jid") is False
    assert r.llen(K.queue("work")) == 49
    start(pools, pool, redis_url)
    wait_for(lambda: len(ran) == 49, 10, message="the 49 others ran")
    assert victim not in ran.snapshot()
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(jobs[0].id) is False  # finished


def test_cancelled_scheduled_unique_job_is_removed_and_its_guard_released(
        redis_url: str, r: redis.Redis) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    job = enq.enqueue_unique_in("report", 3600, {"day": 1})
    assert job is not None
    assert enq.enqueue_unique_in("report", 3600, {"day": 1}) is None  # guarded
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(job.job.id) is True
    assert r.zcard(K.schedule) == 0
    assert enq.enqueue_unique_in("report", 3600, {"day": 1}) is not None  # guard released
    enq.close()


def test_cancelled_retrying_job_leaves_the_retry_set(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(max_fails=5, backoff=lambda job: 3600)
    def flaky(job: forkq.Job) -> None:
        raise RuntimeError("down")

    job = pool.enqueuer(redis_url).enqueue("flaky", {})
    start(pools, pool, redis_url)
    wait_for(lambda: r.zcard(K.retry) == 1, 10, message="job in retry")
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(job.id) is True
        assert c.cancel(job.id) is False
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0


def test_running_sync_job_sees_cancelled_within_a_second_and_is_not_retried(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    heard = pool.reporter(Heard())
    started = threading.Event()
    seen_at: list[float] = []

    @pool.job(max_fails=5)
    def long_export(job: forkq.Job) -> None:
        started.set()
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if job.cancelled:
                seen_at.append(time.monotonic())
            job.raise_if_cancelled()
            time.sleep(0.01)

    job = pool.enqueuer(redis_url).enqueue("long_export", {})
    start(pools, pool, redis_url)
    assert started.wait(10)
    t0 = time.monotonic()
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(job.id) is True
    wait_for(lambda: ("aborted", job.id, "cancelled") in heard.rec.snapshot(), 10, message="aborted heard")
    assert seen_at and seen_at[0] - t0 < 5.0  # told at once (generous bound: shared CPUs)
    ident = pools[0].runtime.identity
    wait_for(lambda: r.hlen(K.inprogress(ident)) == 0, 5, message="settled")
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0 and r.llen(K.queue("long_export")) == 0
    assert ("failure", job.id) not in heard.rec.snapshot()


def test_running_async_job_has_its_task_cancelled(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    heard = pool.reporter(Heard())
    started = threading.Event()
    got_cancel = Recorder()

    @pool.job
    async def crawl(job: forkq.Job) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            got_cancel.add(job.cancelled)
            raise

    job = pool.enqueuer(redis_url).enqueue("crawl", {})
    start(pools, pool, redis_url)
    assert started.wait(10)
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(job.id) is True
    wait_for(lambda: ("aborted", job.id, "cancelled") in heard.rec.snapshot(), 10, message="aborted heard")
    assert got_cancel.snapshot() == [True]
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0


def test_cancel_for_a_job_taken_but_not_started_ends_it_at_its_start(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    heard = pool.reporter(Heard())
    gate = threading.Event()
    ran = Recorder()

    @pool.job
    def step(job: forkq.Job) -> None:
        ran.add(job.id)
        gate.wait(20)

    @pool.job
    async def other(job: forkq.Job) -> None:  # pragma: no cover - never enqueued
        pass

    # One thread, and async slots in the budget: the second job is taken and waits in
    # the pool for the thread (in progress, not started).
    first, second = pool.enqueuer(redis_url).enqueue_many("step", [{}, {}])
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: len(ran) == 1, 10, message="first running")
    wait_for(lambda: r.hlen(K.inprogress(pools[0].runtime.identity)) >= 1 and r.llen(K.queue("step")) == 0,
             10, message="both taken")
    waiting = second.id if ran.snapshot() == [first.id] else first.id
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(waiting) is True
    # The pool heard the cancel (wake channel) before the job could start.
    wait_for(lambda: pools[0].runtime.executor.cancel_heard(waiting), 10, message="cancel heard")
    gate.set()
    wait_for(lambda: ("aborted", waiting, "cancelled") in heard.rec.snapshot(), 10,
             message=f"aborted heard ({heard.rec.snapshot()}, ran {ran.snapshot()}, waiting {waiting})")
    assert waiting not in ran.snapshot()


def test_cancel_verb_exits_zero_when_cancelled_and_one_with_one_line_when_not_found(
        redis_url: str, r: redis.Redis) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    job = enq.enqueue("work", {})
    enq.close()
    out, err = io.StringIO(), io.StringIO()
    assert admin_cli.run(["cancel", "--redis", redis_url, "-n", NS, job.id], out, err) == 0
    assert out.getvalue() == f"cancelled {job.id}\n"
    out, err = io.StringIO(), io.StringIO()
    assert admin_cli.run(["cancel", "--redis", redis_url, "-n", NS, job.id], out, err) == 1
    assert err.getvalue().count("\n") == 1 and "no queued, scheduled, retrying or running job" in err.getvalue()
    assert "Traceback" not in err.getvalue()


STUBBORN = '''
@pool.job
def stubborn(job):
    R().hincrby("test:starts", job.id, 1)
    _pause(120)  # never looks at job.cancelled
'''


def test_job_cancelled_while_its_child_is_killed_stays_cancelled(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, STUBBORN)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "1"])
    (pid,) = wait_children_ready(f, r, 1)
    ident = identity_of(r, pid)
    e = forkq.Enqueuer(redis_url, PROC_NS)
    victim = e.enqueue("stubborn", {}).id
    wait_for(lambda: runs(r, "test:starts").get(victim) == 1, 20, message="stubborn running")
    with forkq.Client(redis_url, PROC_NS) as c:
        assert c.cancel(victim) is True
    import os

    os.kill(pid, signal.SIGKILL)
    # The master requeues what its dead child held: the cancelled job is dropped instead.
    wait_for(lambda: r.hlen(KEYS.inprogress(ident)) == 0, 30, message="dead child's jobs recovered")
    assert r.llen(KEYS.queue("stubborn")) == 0
    # A job queued after it runs on the one thread of the new child: the victim would
    # have been taken first had it been requeued.
    marker = e.enqueue("record", {}).id
    e.close()
    wait_all_done(r, [marker], f, timeout=30)
    assert runs(r, "test:starts")[victim] == 1
    assert r.zcard(KEYS.retry) == 0 and r.zcard(KEYS.dead) == 0
    assert f.stop() == 0


@pytest.mark.parametrize("n", [100_000])
def test_cancel_scan_cost_on_a_long_queue_is_bounded(redis_url: str, r: redis.Redis, n: int) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    jobs = []
    for i in range(0, n, 5000):
        jobs += enq.enqueue_many("bulk", [{"i": j} for j in range(i, i + 5000)])
    enq.close()
    with forkq.Client(redis_url, NS) as c:
        t0 = time.monotonic()
        assert c.cancel(jobs[0].id) is True  # the oldest: at the far end of the scan
        took = time.monotonic() - t0
    assert r.llen(K.queue("bulk")) == n - 1
    assert took < 5.0, took
    print(f"\nCANCEL SCAN: {n} queued, worst case {took * 1000:.0f} ms")

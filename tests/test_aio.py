"""``async def`` jobs (forkq/aio.py): one event loop per pool beside the threads, real
Redis and, for kills and hard timeouts, real ``python -m forkq`` processes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
from helpers import Recorder, start
from procs import (
    KEYS,
    ForkqProc,
    dead_jids,
    enqueue,
    inprogress_total,
    runs,
    start_forkq,
    wait_all_done,
    wait_children_ready,
    write_jobs,
)
from redis_server import wait_for

import forkq
from forkq import job as jobcodec
from forkq.keys import Keys

NS = "aio"
K = Keys(NS)


def _pool(fast_config: forkq.Config, **changes: object) -> forkq.WorkerPool:
    from dataclasses import replace

    return forkq.WorkerPool(NS, config=replace(fast_config, **changes))  # type: ignore[arg-type]


def test_async_jobs_run_concurrently_on_one_loop_up_to_async_concurrency(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = _pool(fast_config, async_concurrency=8)
    running = [0]
    peak = [0]
    threads: set[int] = set()
    done = Recorder()

    @pool.job
    async def nap(job: forkq.Job) -> None:
        threads.add(threading.get_ident())
        running[0] += 1  # one loop thread: no lock needed
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.2)
        running[0] -= 1
        done.add(job.id)

    pool.enqueuer(redis_url).enqueue_many("nap", [{"i": i} for i in range(40)])
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: len(done) == 40, 20, message="40 async jobs done")
    assert 4 <= peak[0] <= 8, peak[0]
    assert len(threads) == 1
    wait_for(lambda: r.get(K.stat_processed) == b"40", 5, message="40 counted")


def test_async_failure_retries_with_its_backtrace_and_reporters_hear_it(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = _pool(fast_config)
    heard = Recorder()

    class Rep:
        def started(self, job: forkq.Job) -> None:
            heard.add(("started", job.id))

        def failure(self, job: forkq.Job, exc: BaseException, tb: str) -> None:
            heard.add(("failure", job.id, type(exc).__name__, "deep_async_helper" in tb))

        def stopped(self, job: forkq.Job) -> None:
            heard.add(("stopped", job.id))

    pool.reporter(Rep())

    async def deep_async_helper() -> None:
        await asyncio.sleep(0)
        raise ValueError("card declined")

    @pool.job
    async def charge(job: forkq.Job) -> None:
        await deep_async_helper()

    job = pool.enqueuer(redis_url).enqueue("charge", {})
    start(pools, pool, redis_url)
    (member,) = wait_for(lambda: r.zrange(K.retry, 0, -1), 10, message="the retry entry")
    data = jobcodec.decode(member)
    assert data["jid"] == job.id and data["error_class"] == "ValueError"
    assert data["error_message"] == "card declined" and data["retry_count"] == 0
    assert any("deep_async_helper" in line for line in jobcodec.backtrace_of(data))
    wait_for(lambda: ("stopped", job.id) in heard.snapshot(), 5, message="reporters")
    assert ("failure", job.id, "ValueError", True) in heard.snapshot()


def test_async_timeout_cancels_the_task_and_fails_the_job_as_a_timeout(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = _pool(fast_config)
    saw_cancel = Recorder()
    aborted = Recorder()

    class Rep:
        def aborted(self, job: forkq.Job, reason: str) -> None:
            aborted.add((job.id, reason))

    pool.reporter(Rep())

    @pool.job(timeout=0.3, max_fails=1)
    async def forever(job: forkq.Job) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            saw_cancel.add(job.id)
            raise

    @pool.job
    async def quick(job: forkq.Job) -> None:
        await asyncio.sleep(0)

    enq = pool.enqueuer(redis_url)
    job = enq.enqueue("forever", {})
    start(pools, pool, redis_url)
    (member,) = wait_for(lambda: r.zrange(K.dead, 0, -1), 10, message="the timed-out job in dead")
    data = jobcodec.decode(member)
    assert data["jid"] == job.id and data["error_class"] == "JobTimeout"
    assert saw_cancel.snapshot() == [job.id]
    wait_for(lambda: aborted.snapshot() == [(job.id, "timeout")], 5, message="aborted reported")
    # The loop is not stuck: other async jobs still run.
    q = enq.enqueue("quick", {})
    wait_for(lambda: r.hlen(K.inprogress(pools[0].runtime.identity)) == 0 and r.llen(K.queue("quick")) == 0,
             10, message=f"quick job {q.id} ran")


def test_sync_and_async_jobs_run_side_by_side_with_their_own_middleware(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    pool = _pool(fast_config, async_concurrency=20)
    seen = Recorder()
    release = threading.Event()

    @pool.middleware
    def plain(job: forkq.Job, nxt):  # type: ignore[no-untyped-def]
        seen.add(("plain", job.name))
        return nxt()

    @pool.middleware
    async def around(job: forkq.Job, nxt):  # type: ignore[no-untyped-def]
        seen.add(("async-before", job.name))
        out = await nxt()
        seen.add(("async-after", job.name))
        return out

    @pool.job
    def blocking(job: forkq.Job) -> None:
        # Holds both threads until the async jobs have all finished: they do not need them.
        release.wait(20)
        seen.add(("ran", "blocking"))

    @pool.job
    async def light(job: forkq.Job) -> None:
        await asyncio.sleep(0.01)
        seen.add(("ran", "light"))

    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("blocking", [{} for _ in range(2)])
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: sum(1 for s in pools[0].runtime.executor.slots[:2] if s.job is not None) == 2,
             10, message="both threads busy")
    enq.enqueue_many("light", [{} for _ in range(30)])
    wait_for(lambda: seen.snapshot().count(("ran", "light")) == 30, 10,
             message="30 async jobs ran while every thread was busy")
    release.set()
    wait_for(lambda: seen.snapshot().count(("ran", "blocking")) == 2, 10, message="sync jobs done")
    got = seen.snapshot()
    assert got.count(("plain", "blocking")) == 2 and ("plain", "light") not in got
    assert got.count(("async-before", "light")) == 30 and got.count(("async-after", "light")) == 30
    assert ("async-before", "blocking") not in got


def test_async_concurrency_is_a_flag_an_env_knob_and_a_config_field() -> None:
    got = forkq.Config.resolve(environ={"FORKQ_ASYNC_CONCURRENCY": "250"})
    assert got.async_concurrency == 250
    assert forkq.Config.resolve(environ={}, flags={"async_concurrency": 7}).async_concurrency == 7
    try:
        forkq.Config(async_concurrency=0)
    except forkq.ConfigError as exc:
        assert "async_concurrency" in str(exc)
    else:
        raise AssertionError("async_concurrency=0 accepted")


ASYNC_JOBS = '''
import asyncio


@pool.job
async def arecord(job):
    await asyncio.sleep(job.arg_float("s"))
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:pids", job.id, os.getpid())
    p.execute()


@pool.job
async def acheckin(job):
    # Checks in, then stays running (awaiting, the loop free) until the test releases it.
    job.checkin("step 2 of " + str(job.arg_int("steps")))
    R().hincrby("test:starts", job.id, 1)
    end = time.monotonic() + 60
    while not R().exists("test:release") and time.monotonic() < end:
        await asyncio.sleep(0.02)
    R().hincrby("test:runs", job.id, 1)


@pool.job(timeout=0.5, result_ttl=60)
async def blocks_loop(job):
    R().hincrby("test:starts", job.id, 1)
    time.sleep(120)  # blocks the loop: the task's cancellation cannot land
'''


@pytest.mark.slow
def test_async_jobs_survive_sigkilled_children_nothing_lost_duplicates_bounded(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc], chaos) -> None:  # type: ignore[no-untyped-def]
    mod = write_jobs(tmp_path, ASYNC_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2", "--async-concurrency", "200"])
    wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "arecord", [{"s": 0.3} for _ in range(6000)])
    killer = chaos(f, every=0.5, seed=3, max_kills=6)
    killer.join(60)
    kills = killer.stop()
    done = wait_all_done(r, jids, f, timeout=120)
    lost = [j for j in jids if j not in done and j not in dead_jids(r)]
    duplicates = sum(done[j] - 1 for j in jids if j in done)
    assert lost == []
    assert kills >= 3
    requeued = sum(int(m) for m in re.findall(r": (\d+) jobs requeued, \d+ to dead", f.log()))
    assert requeued > 0, "no kill hit a running async job"
    # Only jobs running in a killed child may run twice: at most its async slots per kill.
    assert duplicates <= kills * 200, duplicates
    assert f.stop() == 0
    assert inprogress_total(r) == 0
    print(f"\nASYNC CHAOS: jobs={len(jids)} kills={kills} requeued={requeued} lost=0 "
          f"duplicates={duplicates}")


def test_async_job_blocking_its_loop_is_failed_by_the_hard_timeout_and_the_child_replaced(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, ASYNC_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2", "--shutdown-timeout", "0.5"],
                    env={"FORKQ_HARD_TIMEOUT_GRACE": "1"})
    (pid,) = wait_children_ready(f, r, 1)
    (stuck,) = enqueue(redis_url, "blocks_loop", [{}])
    wait_for(lambda: r.zcard(KEYS.retry) == 1, timeout=30, message="stuck async job in retry")
    data = orjson.loads(r.zrange(KEYS.retry, 0, -1)[0])
    assert data["jid"] == stuck
    assert data["error_class"] == "JobTimeout" and "hard timeout" in data["error_message"]
    with forkq.Client(redis_url, KEYS.namespace) as c:
        kept = c.result(stuck)
        assert kept is not None and kept.state == "retrying" and "hard timeout" in (kept.error or "")
    wait_for(lambda: f.child_pids() and pid not in f.child_pids(), timeout=30, message="child replaced")
    # The replacement runs async jobs again.
    jids = enqueue(redis_url, "arecord", [{"s": 0.01} for _ in range(20)])
    t0 = time.monotonic()
    wait_all_done(r, jids, f, timeout=30)
    assert time.monotonic() - t0 < 30
    assert runs(r, "test:starts")[stuck] == 1


def test_async_job_checkin_is_visible_in_the_workers_view_while_it_runs(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, ASYNC_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "1", "--async-concurrency", "4"])
    (pid,) = wait_children_ready(f, r, 1)
    (jid,) = enqueue(redis_url, "acheckin", [{"steps": 5}])
    wait_for(lambda: runs(r, "test:starts").get(jid) == 1, timeout=30, message="async job started")
    with forkq.Client(redis_url, KEYS.namespace) as c:
        def busy() -> list[forkq.WorkerObservation]:
            return [o for o in c.worker_observations() if o.is_busy]

        (ob,) = wait_for(lambda: [o for o in busy() if o.checkin] or None, timeout=30,
                         message="busy observation with the async job's checkin")
        assert (ob.job_name, ob.job_id, ob.args, ob.checkin) == ("acheckin", jid, {"steps": 5}, "step 2 of 5")
        assert abs(ob.checkin_at - time.time()) < 60 and 0 < ob.started_at <= time.time() + 1
        (hb,) = c.worker_pool_heartbeats()
        assert ob.worker_id in hb.worker_ids and hb.worker_pool_id.split(":")[1] == str(pid)
        # Sidekiq's busy view (<identity>:work) lists it too, with its payload.
        work = r.hgetall(KEYS.process_work(hb.worker_pool_id))
        assert [orjson.loads(orjson.loads(v)["payload"])["jid"] for v in work.values()] == [jid]
        # And the CLI's busy list, from another process.
        out = subprocess.run([sys.executable, "-m", "forkq", "workers", "--busy", "--json",
                              "--redis", redis_url, "-n", KEYS.namespace], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        (w,) = orjson.loads(out.stdout)
        assert (w["job_id"], w["checkin"]) == (jid, "step 2 of 5")
        r.set("test:release", 1)
        wait_all_done(r, [jid], f, timeout=30)
        wait_for(lambda: not busy(), timeout=30, message="observation cleared after the job")
    assert f.stop() == 0


def test_a_mixed_pool_takes_sync_jobs_only_for_its_threads_so_other_pools_share_the_backlog(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    """A pool with both kinds must not fill its async slots with sync jobs: they would
    wait in it for a thread while another pool's threads sat idle."""
    gate = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def make(tag: int) -> forkq.WorkerPool:
        pool = _pool(fast_config, async_concurrency=50)

        @pool.job
        def blocking(job: forkq.Job) -> None:
            with lock:
                started.append(tag)
            gate.wait(30)

        @pool.job
        async def nap(job: forkq.Job) -> None:
            await asyncio.sleep(0.01)

        return pool

    first = make(1)
    first.enqueuer(redis_url).enqueue_many("blocking", [{"i": i} for i in range(20)])
    try:
        start(pools, first, redis_url, concurrency=2)
        wait_for(lambda: len(started) == 2, 10, message="the first pool's two threads busy")
        second = start(pools, make(2), redis_url, concurrency=2)
        wait_for(lambda: started.count(2) == 2, 10,
                 message="the second pool's threads running jobs of the backlog the first left")
        # Each pool holds what its threads run: the rest waits in Redis for any pool.
        assert r.hlen(K.inprogress(_ident(first))) == 2
        assert r.hlen(K.inprogress(_ident(second))) == 2
        assert r.llen(K.queue("blocking")) == 16
        # Async jobs still get the async slots meanwhile (every thread is blocked).
        first.enqueuer(redis_url).enqueue_many("nap", [{}] * 30)
        wait_for(lambda: r.llen(K.queue("nap")) == 0 and r.hlen(K.inprogress(_ident(first))) <= 2
                 and r.hlen(K.inprogress(_ident(second))) <= 2, 10, message="the async jobs ran")
    finally:
        gate.set()


def _ident(pool: forkq.WorkerPool) -> str:
    assert pool.runtime is not None
    return pool.runtime.identity


def test_a_mixed_pool_with_busy_threads_passes_on_a_sync_wake_it_cannot_take(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    """An enqueue wakes one registered idle pool.  A mixed pool stays registered while
    its async slots are free; woken for a sync job while its threads are busy, it must
    pass the wake on (to every pool), not swallow it until a poll 30 s later."""
    r.set(K.waker_lock, "someone-else", px=120_000)  # no waker: only wake messages count
    gate = threading.Event()
    ran_in: dict[str, str] = {}

    def make(tag: str, mixed: bool) -> forkq.WorkerPool:
        pool = _pool(fast_config, idle_poll_interval=30.0, async_concurrency=10)

        @pool.job
        def blocking(job: forkq.Job) -> None:
            ran_in[job.id] = tag
            gate.wait(30)

        if mixed:
            @pool.job
            async def nap(job: forkq.Job) -> None:
                await asyncio.sleep(0.01)

        return pool

    # Identities sort "a" first: the enqueue's pick of a registered pool is by identity.
    for tag, mixed in (("a", True), ("b", False)):
        pools.append(make(tag, mixed).start(redis_url, concurrency=1, identity=f"{tag}-host:1:{tag}"))
    try:
        wait_for(lambda: r.zcard(K.idle("blocking")) == 2, 10, message="both pools registered idle")
        enq = forkq.Enqueuer(redis_url, NS)
        first = enq.enqueue("blocking", {})
        wait_for(lambda: ran_in.get(first.id) == "a", 10, message="the first job in the mixed pool")
        # The mixed pool still has free async slots: it stays registered, and is woken first.
        assert r.zscore(K.idle("blocking"), "a-host:1:a") is not None
        second = enq.enqueue("blocking", {})
        wait_for(lambda: ran_in.get(second.id) == "b", 5, message="the second job, in the free pool")
    finally:
        gate.set()

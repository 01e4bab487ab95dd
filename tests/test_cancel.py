"""``Client.cancel`` / ``forkq cancel JID`` (cancel.lua): every state a job can be in,
with real Redis, real pools and, for a kill during cancellation, a real CLI child."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import subprocess
import sys
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
from forkq import job as jobcodec
from forkq.exits import EXIT_FAILED, EXIT_REDIS
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
    def quick(job: forkq.Job) -> None:
        ran.add(job.id)

    # One thread, and short jobs first: the pool then prefetches, so of the two step
    # jobs the second is taken with the first and waits in the pool for the thread (in
    # progress, not started).
    enq = pool.enqueuer(redis_url)
    enq.enqueue_many("quick", [{}] * 50)
    start(pools, pool, redis_url, concurrency=1)
    wait_for(lambda: len(ran) == 50, 10, message="the short jobs")
    first, second = enq.enqueue_many("step", [{}, {}])
    wait_for(lambda: len(ran) == 51, 10, message="first running")
    wait_for(lambda: r.hlen(K.inprogress(pools[0].runtime.identity)) >= 1 and r.llen(K.queue("step")) == 0,
             10, message="both taken")
    waiting = second.id if ran.snapshot()[-1] == first.id else first.id
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


def _hold_pool(fast_config: forkq.Config, started: Recorder, release_first: threading.Event) -> forkq.WorkerPool:
    """A pool whose ``hold`` job: the first run waits for ``release_first`` and ends;
    every later run waits until it is cancelled (30 s at most), then stops."""
    pool = forkq.WorkerPool(NS, config=fast_config)
    lock = threading.Lock()

    @pool.job(max_fails=5)
    def hold(job: forkq.Job) -> None:
        with lock:
            n = len(started)
            started.add(job.id)
        if n == 0:
            release_first.wait(30)
            return
        end = time.monotonic() + 30
        while time.monotonic() < end:
            job.raise_if_cancelled()
            time.sleep(0.01)

    return pool


def _push(r: redis.Redis, name: str, jid: str, copy: int) -> bytes:
    """Push a job with a given jid straight onto its queue (as another Sidekiq client may)."""
    payload = jobcodec.encode(jobcodec.build_payload(name, {"copy": copy}, jid=jid))
    r.sadd(K.queues, name)
    r.lpush(K.queue(name), payload)
    return payload


class ListedEarly(forkq.Client):
    """A Client whose next listing of keys for cancel.lua is one made earlier (``early``):
    what a cancel sees when pools or queues appear between its listing and its script."""

    early: tuple[list[str], list[str]] | None = None

    def _cancel_listing(self) -> tuple[list[str], list[str]]:
        if self.early is not None:
            listing, self.early = self.early, None
            return listing
        return super()._cancel_listing()


def test_cancel_tells_a_job_running_in_a_pool_that_started_after_the_keys_were_listed(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    started = Recorder()
    go = threading.Event()
    go.set()  # no first run to hold back: every run waits for its cancel
    pool = _hold_pool(fast_config, started, go)
    heard = pool.reporter(Heard())
    started.add("-")  # so the job's run is a "later" one
    job = pool.enqueuer(redis_url).enqueue("hold", {})

    with ListedEarly(redis_url, NS) as c:
        early = c._cancel_listing()
        assert early == ([K.queue("hold")], [])  # no pool yet
        start(pools, pool, redis_url)
        ident = pools[0].runtime.identity
        wait_for(lambda: job.id in started.snapshot() and r.hexists(K.inprogress(ident), job.id), 10,
                 message="job running in the new pool")
        # With the early list the script would look at no in-progress hash and miss the
        # job: it refuses instead, changing nothing ...
        assert c._where_listed(job.id, early, locate=False) == [b"stale"]
        assert r.zscore(K.cancelled, job.id) is None
        # ... and cancel lists again.
        c.early = early
        assert c.cancel(job.id) is True
        assert c.early is None  # the early listing was used (and refused)
    wait_for(lambda: ("aborted", job.id, "cancelled") in heard.rec.snapshot(), 10, message="aborted heard")
    wait_for(lambda: r.hlen(K.inprogress(ident)) == 0, 5, message="settled")
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0


def test_cancel_of_a_shared_jid_tells_every_running_copy_and_removes_every_waiting_one(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config, pools: list) -> None:
    started = Recorder()
    release_first = threading.Event()
    pool = _hold_pool(fast_config, started, release_first)
    heard = pool.reporter(Heard())
    jid = jobcodec.new_jid()
    start(pools, pool, redis_url, concurrency=3)
    ident = pools[0].runtime.identity
    fields = lambda: sorted(f.decode() for f in r.hkeys(K.inprogress(ident)))  # noqa: E731
    try:
        _push(r, "hold", jid, 1)
        wait_for(lambda: len(started) == 1 and fields() == [jid], 10, message="first copy running")
        _push(r, "hold", jid, 2)
        _push(r, "hold", jid, 3)
        wait_for(lambda: len(started) == 3, 10, message="three copies running")
        assert fields() == [jid, jid + "#2", jid + "#3"]
        release_first.set()
        # Only the suffixed copies run now: no field is the bare jid.
        wait_for(lambda: fields() == [jid + "#2", jid + "#3"], 10, message="first copy done")
        # Two more copies wait: one scheduled, one retrying.
        sched = jobcodec.encode(jobcodec.build_payload("hold", {"copy": 4}, jid=jid))
        retry = jobcodec.encode(jobcodec.build_payload("hold", {"copy": 5}, jid=jid))
        r.zadd(K.schedule, {sched: time.time() + 3600})
        r.zadd(K.retry, {retry: time.time() + 3600})
        with forkq.Client(redis_url, NS) as c:
            assert c.result(jid).state == "running"  # type: ignore[union-attr]
            assert c.cancel(jid) is True
        wait_for(lambda: heard.rec.snapshot().count(("aborted", jid, "cancelled")) == 2, 10,
                 message="both running copies told")
        assert r.zcard(K.schedule) == 0 and r.zcard(K.retry) == 0
        wait_for(lambda: fields() == [], 10, message="settled")
        assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0 and r.llen(K.queue("hold")) == 0
        with forkq.Client(redis_url, NS) as c:
            assert c.cancel(jid) is False
    finally:
        release_first.set()


def test_cancel_removes_every_waiting_copy_of_a_jid_and_releases_the_guard(r: redis.Redis, redis_url: str) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    job = enq.enqueue_unique("report", {"day": 2})
    assert job is not None
    enq.close()
    # A second copy of the same job (same payload, same jid) queued again, and one of
    # its jid scheduled: all three go.
    (payload,) = r.lrange(K.queue("report"), 0, -1)
    r.rpush(K.queue("report"), payload)
    r.zadd(K.schedule, {jobcodec.encode(jobcodec.build_payload("report", {"copy": 3}, jid=job.id)): 1e10})
    other = forkq.Enqueuer(redis_url, NS).enqueue("report", {"day": 3})
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(job.id) is True
        assert c.cancel(job.id) is False
        assert c.result(job.id).state == "cancelled"  # type: ignore[union-attr]
    assert [jobcodec.jid_of(p) for p in r.lrange(K.queue("report"), 0, -1)] == [other.id]
    assert r.zcard(K.schedule) == 0
    again = forkq.Enqueuer(redis_url, NS).enqueue_unique("report", {"day": 2})
    assert again is not None  # the guard was released


def test_cancel_of_a_dead_job_returns_false_and_leaves_it_dead(
        redis_url: str, r: redis.Redis, fast_config: forkq.Config,
        pools: list) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(max_fails=1, result_ttl=60)
    def doomed(job: forkq.Job) -> None:
        raise RuntimeError("no")

    job = pool.enqueuer(redis_url).enqueue("doomed", {})
    start(pools, pool, redis_url)
    wait_for(lambda: r.zcard(K.dead) == 1, 10, message="job dead")
    dead_before = r.zrange(K.dead, 0, -1, withscores=True)
    with forkq.Client(redis_url, NS) as c:
        assert c.cancel(job.id) is False  # finished: it already failed for good
        kept = c.result(job.id)  # its kept record still says dead, not cancelled
        assert kept is not None and kept.state == "dead" and "no" in (kept.error or "")
    assert r.zrange(K.dead, 0, -1, withscores=True) == dead_before
    assert r.zscore(K.cancelled, job.id) is None
    out, err = io.StringIO(), io.StringIO()
    assert admin_cli.run(["cancel", "--redis", redis_url, "-n", NS, job.id], out, err) == 1
    assert err.getvalue().count("\n") == 1 and "already finished" in err.getvalue()


def test_cancel_command_exits_one_for_an_unknown_jid_and_five_without_redis(redis_url: str) -> None:
    """The real ``python -m forkq cancel``: one readable line, exit codes of forkq.exits."""
    def cancel(url: str, jid: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forkq", "cancel", "--redis", url, "-n", NS, jid],
                              capture_output=True, text=True, timeout=60)

    res = cancel(redis_url, "no-such-jid")
    assert (res.returncode, res.stdout) == (EXIT_FAILED, "")
    assert res.stderr.count("\n") == 1 and "no-such-jid" in res.stderr and "Traceback" not in res.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    res = cancel(f"redis://127.0.0.1:{closed}/0", "no-such-jid")
    assert res.returncode == EXIT_REDIS and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    jid = forkq.Enqueuer(redis_url, NS).enqueue("work", {}).id
    res = cancel(redis_url, jid)
    assert (res.returncode, res.stdout) == (0, f"cancelled {jid}\n")


def test_cancel_lists_again_when_a_queue_appeared_after_the_listing(redis_url: str, r: redis.Redis) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    with ListedEarly(redis_url, NS) as c:
        early = c._cancel_listing()
        assert early == ([], [])
        # Promoted (or pushed) into a queue that did not exist when the keys were listed:
        # the early list does not find it ...
        job = enq.enqueue("late", {})
        assert c._where_listed(job.id, early, locate=True) == []
        assert c._where_listed(job.id, early, locate=False) == []
        assert r.llen(K.queue("late")) == 1
        # ... so a cancel that finds nothing lists again and looks in the new queue.
        c.early = early
        assert c.result(job.id).state == "queued"  # type: ignore[union-attr]
        assert c.early is None
        c.early = early
        assert c.cancel(job.id) is True
        assert c.early is None
        assert c.cancel(job.id) is False
    assert r.llen(K.queue("late")) == 0
    enq.close()

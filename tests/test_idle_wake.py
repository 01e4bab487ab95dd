"""The idle registry: an enqueue wakes as many idle pools as it has jobs, not all of them.

Real masters (``python -m forkq -p N``) on a real Redis, with a 30 s idle poll, so a
job that starts within a second or two was woken by a wake message, never by a poll.
Idle pools register in ``idle:<name>`` (fetch.lua); enqueue.lua pops them.  Fetches
are counted from ``INFO commandstats``: every fetch looks once at each job name's
queue (an ``LLEN``, or for a name with no limit the ``RPOP`` that takes), and the
jobs module below has one job name.  Most tests hold the waker's lock, so the waker
(which announces jobs still queued 20 ms after their push, for clients that publish
nothing) does not add wakes of its own; the promotion tests let a pool take it, as
its holder is the namespace's promoter of due jobs.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import redis
from procs import NS, ForkqProc, enqueue, identity_of, runs, start_forkq, wait_children_ready
from redis_server import wait_for

import forkq
from forkq import job as jobcodec
from forkq.keys import Keys

K = Keys(NS)
NAME = "tick"
IDLE = K.idle(NAME)

JOBS = '''
import os
import time

import redis

import forkq
from forkq import job as jobcodec

pool = forkq.WorkerPool(namespace="{ns}")
_conns = {{}}


def R():
    c = _conns.get(os.getpid())
    if c is None:
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    return c


@pool.job
def tick(job):
    R().hincrby("test:starts", job.id, 1)
    R().hsetnx("test:started_at", job.id, time.time())
    end = time.time() + job.arg_float("s")
    while time.time() < end:
        time.sleep(0.02)
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:pids", job.id, os.getpid())
    p.execute()
'''

# No poll within the test, few beats: what runs a job quickly is a wake.
QUIET_ENV = {"FORKQ_IDLE_POLL_INTERVAL": "30", "FORKQ_HEARTBEAT_INTERVAL": "5",
             "FORKQ_STALE_AFTER": "600"}


def _start(tmp_path: Path, redis_url: str, forkqs: list[ForkqProc], r: redis.Redis,
           children: int, threads: int) -> tuple[ForkqProc, set[int]]:
    (tmp_path / "idlejobs.py").write_text(JOBS.format(ns=NS))
    # The waker (forkq/waker.py) would announce a job still queued 20 ms after its push
    # to every pool; holding its lock keeps it out, so only the path under test wakes.
    r.set(K.waker_lock, b"test-holds-it", px=600_000)
    f = start_forkq(forkqs, tmp_path, redis_url, "idlejobs", ["-p", str(children), "-c", str(threads)],
                    env=QUIET_ENV)
    pids = wait_children_ready(f, r, children)
    # Every child's first fetch found the queue empty and registered it.
    wait_for(lambda: r.zcard(IDLE) == children, timeout=20, message=f"{children} pools registered idle")
    return f, pids


def _fetches(r: redis.Redis) -> int:
    """Fetches so far: each looks at this one-name pool's queue once, by LLEN (a name
    with limits) or by the RPOP that takes (a plain name: nil when empty)."""
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("llen", "rpop"))


def test_one_enqueued_job_wakes_one_of_several_idle_pools(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                         forkqs: list[ForkqProc]) -> None:
    children, jobs = 6, 20
    f, _ = _start(tmp_path, redis_url, forkqs, r, children, 2)
    before = _fetches(r)
    for i in range(jobs):
        [jid] = enqueue(redis_url, NAME, [{"s": 0, "i": i}])
        wait_for(lambda jid=jid: jid in runs(r), timeout=5, message=f"job {i} done")
    fetches = _fetches(r) - before
    # Broadcasting every empty->non-empty enqueue made each job cost `children` fetches
    # (120 here); waking one registered pool costs about one.  Generous bound: 2 per job.
    assert fetches <= 2 * jobs, f"{fetches} fetches for {jobs} trickled jobs over {children} idle pools"
    assert fetches >= jobs  # each job was fetched by someone (the count is real)
    assert f.proc.poll() is None
    assert f.stop() == 0


def test_a_killed_pool_left_in_the_registry_does_not_swallow_the_wake(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    f, pids = _start(tmp_path, redis_url, forkqs, r, 3, 2)
    victim = sorted(pids)[0]
    ident = identity_of(r, victim)
    os.kill(victim, signal.SIGKILL)
    # Its replacement is up and idle too (its first fetch, which would take any job,
    # is over), and the dead pool is still registered: nothing removes it but an enqueue.
    wait_for(lambda: victim not in f.child_pids(), timeout=10, message="victim gone")
    wait_for(lambda: len(wait_children_ready(f, r, 3) - pids) == 1, timeout=20, message="replacement up")
    wait_for(lambda: r.zcard(IDLE) == 4, timeout=20, message="replacement registered idle")
    assert r.zscore(IDLE, ident) is not None
    # Make the dead pool the one an enqueue tries first: the worst case.
    r.zadd(IDLE, {ident: -1})  # the lowest score: the first an enqueue tries
    t0 = time.monotonic()
    [jid] = enqueue(redis_url, NAME, [{"s": 0}])
    wait_for(lambda: jid in runs(r), timeout=10, message="job run by a live pool")
    elapsed = time.monotonic() - t0
    # Well under the 30 s poll: the enqueue found the dead pool deaf and woke another.
    assert elapsed < 3.0, f"job started {elapsed:.1f}s after its enqueue"
    assert r.zscore(IDLE, ident) is None  # dropped by the enqueue that found it dead
    assert int(r.hget("test:pids", jid) or 0) != victim
    assert f.stop() == 0


def test_a_burst_in_one_call_wakes_enough_pools_for_every_job(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    children, threads = 4, 2
    f, _ = _start(tmp_path, redis_url, forkqs, r, children, threads)
    n = children * threads
    # Jobs far longer than the wait below: a pool not woken could only take them
    # after a job ended (3 s) or at its poll (30 s).
    t0 = time.monotonic()
    jids = enqueue(redis_url, NAME, [{"s": 3.0, "i": i} for i in range(n)])
    wait_for(lambda: len(runs(r, "test:starts")) == n, timeout=10, message=f"{n} jobs started")
    elapsed = time.monotonic() - t0
    assert elapsed < 2.5, f"the last of {n} jobs started {elapsed:.1f}s after the enqueue"
    wait_for(lambda: all(j in runs(r) for j in jids), timeout=20, message="burst done")
    assert len({int(p) for p in r.hvals("test:pids")}) == children  # every pool took part
    assert f.stop() == 0


def test_idle_registered_pools_still_wake_for_a_scheduled_job_at_its_due_time(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    f, _ = _start(tmp_path, redis_url, forkqs, r, 3, 2)
    e = forkq.Enqueuer(redis_url, NS)
    try:
        # The due message re-arms the sleeping fetchers (their fetch reports the due
        # time); a trickle of job-name wakes must not have made them stop asking.
        [jid] = [j.id for j in e.enqueue_many(NAME, [{"s": 0}])]
        wait_for(lambda: jid in runs(r), timeout=5, message="plain job done")
        t0 = time.monotonic()
        later = e.enqueue_in(NAME, 1.0, {"s": 0})
    finally:
        e.close()
    wait_for(lambda: later.job.id in runs(r), timeout=15, message="scheduled job run")
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 4.0, f"scheduled 1 s ahead, ran after {elapsed:.1f}s (the poll is 30 s)"
    assert f.stop() == 0


def test_a_plain_lpush_is_announced_by_the_waker_to_one_idle_pool(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    # As Sidekiq's Ruby client pushes: no wake published.  The waker sees the write and
    # wakes as many registered pools as the queue holds jobs (here one), not all six.
    (tmp_path / "idlejobs.py").write_text(JOBS.format(ns=NS))
    children = 6
    f = start_forkq(forkqs, tmp_path, redis_url, "idlejobs", ["-p", str(children), "-c", "2"],
                    env=QUIET_ENV)
    wait_children_ready(f, r, children)
    wait_for(lambda: r.zcard(IDLE) == children, timeout=20, message="pools registered idle")
    wait_for(lambda: r.exists(K.waker_lock), timeout=20, message="a pool holds the waker lock")
    before = _fetches(r)
    payload = jobcodec.encode(jobcodec.build_payload(NAME, {"s": 0}))
    jid = jobcodec.decode(payload)["jid"]
    t0 = time.monotonic()
    r.lpush(K.queue(NAME), payload)
    wait_for(lambda: jid in runs(r), timeout=10, message="pushed job run")
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0, f"a plain LPUSH ran {elapsed:.1f}s later (the poll is 30 s)"
    fetches = _fetches(r) - before
    assert 1 <= fetches <= 3, f"{fetches} fetches for one pushed job over {children} idle pools"
    assert f.stop() == 0


def _start_led(tmp_path: Path, redis_url: str, forkqs: list[ForkqProc], r: redis.Redis,
               children: int) -> tuple[ForkqProc, str]:
    """Pools with a real waker: one takes its lock and leads the promotion of due jobs."""
    (tmp_path / "idlejobs.py").write_text(JOBS.format(ns=NS))
    f = start_forkq(forkqs, tmp_path, redis_url, "idlejobs", ["-p", str(children), "-c", "2"],
                    env=QUIET_ENV)
    wait_children_ready(f, r, children)
    wait_for(lambda: r.zcard(IDLE) == children, timeout=20, message=f"{children} pools registered idle")
    leader = wait_for(lambda: r.get(K.waker_lock), timeout=20, message="a pool holds the waker lock")
    # Each pool's first try of the lock comes within 1 s of its start (jittered): after
    # that the others know they follow.  There is nothing in Redis to wait on for it.
    time.sleep(1.5)
    return f, leader.decode()


def _script_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_a_trickle_of_due_jobs_is_promoted_by_one_pool_on_time_not_by_every_pool(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """Every idle pool used to wake at each due time and promote, and the promotion's
    broadcast woke them all again (16 pools: 59 script calls per scheduled job).  Now the
    waker lock's holder promotes on time, waking pools only for jobs it does not take."""
    children, jobs = 6, 20
    f, _ = _start_led(tmp_path, redis_url, forkqs, r, children)
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        now = float(r.time()[0]) + r.time()[1] / 1e6
        scheduled = [enq.enqueue_at(NAME, now + 1.0 + 0.05 * i, {"s": 0}) for i in range(jobs)]
        due = {sj.job.id: sj.run_at for sj in scheduled}
    finally:
        enq.close()
    before_fetches, before_calls = _fetches(r), _script_calls(r)
    wait_for(lambda: set(due) <= set(runs(r)), timeout=20, message="every due job ran")
    fetches, calls = _fetches(r) - before_fetches, _script_calls(r) - before_calls
    started = {k.decode(): float(v) for k, v in r.hgetall("test:started_at").items()}
    late = sorted(started[j] - t for j, t in due.items())
    assert late[-1] < 0.3, f"due jobs started up to {late[-1]:.3f}s late (the promoter is on time)"
    # One promoting pool: its round trip (2 promote calls and the fetch) per due job, the
    # acks riding them, plus the followers' look every FOLLOWER_GRACE.  Every pool waking
    # at each due time cost at least `children` fetches per job.
    assert fetches <= 3 * jobs, f"{fetches} fetches for {jobs} due jobs over {children} pools"
    assert calls <= 6 * jobs, f"{calls} script calls for {jobs} due jobs over {children} pools"
    assert f.stop() == 0


def test_a_steady_trickle_of_due_jobs_does_not_make_the_followers_take_over(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """In a steady trickle some job is always due this very moment.  A follower that
    moved those read it as a promoter that was gone and promoted on time itself, and so
    did the next: every pool promoted every job (bench/trickle.py --delay 1 into 16
    pools: 160 Redis commands and 27 script calls a job, against 32 and 4.5 now)."""
    children, jobs, gap = 4, 300, 0.01
    f, _ = _start_led(tmp_path, redis_url, forkqs, r, children)
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        now = float(r.time()[0]) + r.time()[1] / 1e6
        due = {sj.job.id: sj.run_at
               for sj in (enq.enqueue_at(NAME, now + 1.0 + gap * i, {"s": 0}) for i in range(jobs))}
    finally:
        enq.close()
    before_calls = _script_calls(r)
    wait_for(lambda: set(due) <= set(runs(r)), timeout=30, message="every due job ran")
    calls = _script_calls(r) - before_calls
    # The promoter: two promote calls and a fetch per due job (its acks ride them), and
    # each follower's look twice a second.  Every pool promoting costs `children` times that.
    assert calls <= 4.5 * jobs, f"{calls} script calls for {jobs} due jobs over {children} pools"
    assert f.stop() == 0


def test_due_jobs_run_on_another_pool_when_the_promoting_one_is_frozen(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """The followers are the fallback: a frozen leader keeps its lock, and they promote
    what is still due FOLLOWER_GRACE after its time (the beats alone would take 5 s)."""
    f, leader = _start_led(tmp_path, redis_url, forkqs, r, 3)
    pid = int(leader.split(":")[-2])
    assert pid in f.child_pids()
    os.kill(pid, signal.SIGSTOP)
    try:
        enq = forkq.Enqueuer(redis_url, NS)
        try:
            now = float(r.time()[0]) + r.time()[1] / 1e6
            sj = enq.enqueue_at(NAME, now + 0.3, {"s": 0})
            jid = sj.job.id
        finally:
            enq.close()
        wait_for(lambda: jid in runs(r), timeout=10, message="the due job ran elsewhere")
        late = float(r.hget("test:started_at", jid) or 0) - sj.run_at
        assert late < 2.0, f"started {late:.2f}s late with the promoter frozen"
        assert int(r.hget("test:pids", jid) or 0) != pid
    finally:
        os.kill(pid, signal.SIGCONT)
    assert f.stop() == 0


"""Cluster-wide max_concurrency by leases, and recovery of dead pools' jobs:
requeue, poison cap, compare-and-set reaping that never robs a live pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import orjson
from helpers import start
from redis_server import wait_for

import forkq
from forkq import reaper, scripts
from forkq.keys import Keys

NS = "t"
K = Keys(NS)


class Gauge:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.max = 0
        self.runs = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.runs += 1
            self.max = max(self.max, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def test_max_concurrency_holds_across_pools_and_after_failures(redis_url, fast_config, pools, r) -> None:
    gauge = Gauge()
    fail_first = set()

    def limited(job: forkq.Job) -> None:
        gauge.enter()
        try:
            time.sleep(0.02)
            n = job.arg_int("n")
            if n % 3 == 0 and n not in fail_first:
                fail_first.add(n)
                raise RuntimeError("first try fails")
        finally:
            gauge.leave()

    for _ in range(2):  # two pools, 8 threads each, one limit of 2
        pool = forkq.WorkerPool(NS, config=fast_config)
        pool.register("limited", limited, forkq.JobOptions(max_concurrency=2, backoff=lambda j: 0))
        start(pools, pool, redis_url, concurrency=8)
    pools[0].enqueuer(redis_url).enqueue_many("limited", [{"n": i} for i in range(60)])
    wait_for(lambda: gauge.runs >= 80, 60, message="60 jobs + 20 retries")
    for p in pools:
        p.drain(20)
    assert gauge.max == 2, f"max concurrency observed {gauge.max}, limit 2"
    assert r.zcard(K.lease("limited")) == 0, "leases drifted"
    assert r.zcard(K.retry) == 0 and r.zcard(K.dead) == 0


CRASHING_POOL = textwrap.dedent("""
    import sys, time, forkq
    url, identity = sys.argv[1], sys.argv[2]
    pool = forkq.WorkerPool("t", config=forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2))
    @pool.job(max_concurrency=2)
    def limited(job):
        time.sleep(60)
    pool.start(url, concurrency=4, identity=identity)
    time.sleep(120)
""")


def test_leases_of_a_killed_pool_are_dropped_by_identity_when_it_is_reaped(redis_url, fast_config, pools, r, tmp_path) -> None:
    identity = "crashhost:1:abc"
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_POOL)
    forkq.Enqueuer(redis_url, NS).enqueue_many("limited", [{"n": i} for i in range(6)])
    proc = subprocess.Popen([sys.executable, str(script), redis_url, identity])
    try:
        wait_for(lambda: r.zcard(K.lease("limited")) == 2, 20, message="2 leases taken")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert r.hlen(K.inprogress(identity)) == 2
    # What the master does when a child dies: claim and requeue at once.
    assert reaper.release_pool(r, K, identity, fast_config) == (2, 0)
    assert r.zcard(K.lease("limited")) == 0 and r.llen(K.queue("limited")) == 6
    requeued = [orjson.loads(p) for p in r.lrange(K.queue("limited"), -2, -1)]
    assert all(d["recovered"] == 1 for d in requeued)
    # A new pool still honours the limit (no leaked counter).
    gauge = Gauge()

    def limited(job: forkq.Job) -> None:
        gauge.enter()
        time.sleep(0.02)
        gauge.leave()

    pool = forkq.WorkerPool(NS, config=fast_config)
    pool.register("limited", limited, forkq.JobOptions(max_concurrency=2))
    start(pools, pool, redis_url, concurrency=8)
    pool.drain(20)
    assert gauge.runs == 6 and gauge.max == 2


def _fake_dead_pool(r, identity: str, beat: float, jobs: int) -> list[str]:
    enq = forkq.Enqueuer(r, NS)
    jids = []
    for i in range(jobs):
        job = enq.enqueue("work", {"i": i})
        r.rpop(K.queue("work"))
        r.hset(K.inprogress(identity), job.id, orjson.dumps(job.data))
        jids.append(job.id)
    r.zadd(K.pools, {identity: beat})
    r.sadd(K.processes, identity)
    return jids


def test_stale_reaper_requeues_jobs_of_a_pool_that_stopped_beating(r, fast_config) -> None:
    jids = _fake_dead_pool(r, "deadhost:9:x", time.time() - 100, 3)
    reaped = reaper.reap_stale_pools(r, K, fast_config)
    assert reaped == ["deadhost:9:x"]
    assert sorted(orjson.loads(p)["jid"] for p in r.lrange(K.queue("work"), 0, -1)) == sorted(jids)
    assert not r.exists(K.inprogress("deadhost:9:x"))
    assert not r.sismember(K.processes, "deadhost:9:x") and r.zscore(K.pools, "deadhost:9:x") is None


def test_reaper_leaves_alone_a_pool_that_beat_after_being_judged_stale(r, fast_config) -> None:
    old = time.time() - 100
    _fake_dead_pool(r, "slowhost:9:x", old, 2)
    r.zadd(K.pools, {"slowhost:9:x": time.time()})  # it beat in the meantime
    assert reaper.release_pool(r, K, "slowhost:9:x", fast_config, expected_beat=old) is None
    assert r.hlen(K.inprogress("slowhost:9:x")) == 2 and r.llen(K.queue("work")) == 0


def test_reaper_ignores_pools_with_fresh_beats(r, fast_config) -> None:
    _fake_dead_pool(r, "livehost:9:x", time.time(), 2)
    assert reaper.reap_stale_pools(r, K, fast_config) == []
    assert r.hlen(K.inprogress("livehost:9:x")) == 2


def test_reaper_recovers_orphaned_in_progress_hashes(r, fast_config) -> None:
    _fake_dead_pool(r, "ghost:1:x", time.time(), 2)
    r.zrem(K.pools, "ghost:1:x")  # no beat record at all
    assert reaper.reap_stale_pools(r, K, fast_config) == ["ghost:1:x"]
    assert r.llen(K.queue("work")) == 2


def test_job_recovered_more_than_three_times_goes_to_dead_as_poison(r, fast_config) -> None:
    identity = "p:1:x"
    (jid,) = _fake_dead_pool(r, identity, time.time(), 1)
    for expected in (1, 2, 3):
        assert reaper.recover_inprogress(r, K, identity, fast_config) == (1, 0)
        payload = r.rpop(K.queue("work"))
        assert orjson.loads(payload)["recovered"] == expected
        r.hset(K.inprogress(identity), jid, payload)
    assert reaper.recover_inprogress(r, K, identity, fast_config) == (0, 1)
    dead = orjson.loads(r.zrange(K.dead, 0, -1)[0])
    assert dead["jid"] == jid and dead["error_class"] == "Poison" and "poison" in dead["error_message"]
    assert r.llen(K.queue("work")) == 0


def test_a_poison_job_the_stale_reaper_buries_is_reported_aborted_poison_then_stopped(
        redis_url, fast_config, pools, r) -> None:
    """The pool that ran it died with it: the live pool whose reaper buries it tells its
    own reporters, so the failure is not silent."""
    identity = "deadhost:9:poison"
    (jid,) = _fake_dead_pool(r, identity, time.time() - 100, 1)
    data = orjson.loads(r.hget(K.inprogress(identity), jid))
    data["recovered"] = fast_config.max_recoveries  # this death is one too many
    r.hset(K.inprogress(identity), jid, orjson.dumps(data))
    events: list[tuple[str, ...]] = []

    class Recorder:
        def aborted(self, job: forkq.Job, reason: str) -> None:
            events.append(("aborted", job.id, reason))

        def stopped(self, job: forkq.Job) -> None:
            events.append(("stopped", job.id))

    pool = forkq.WorkerPool(NS, config=fast_config)
    pool.register("other", lambda job: None)
    pool.reporter(Recorder())
    start(pools, pool, redis_url)
    wait_for(lambda: len(events) >= 2, timeout=30, message="two events from the reaper")
    assert events == [("aborted", jid, "poison"), ("stopped", jid)]
    dead = orjson.loads(r.zrange(K.dead, 0, -1)[0])
    assert dead["jid"] == jid and dead["error_class"] == "Poison"
    assert not r.exists(K.inprogress(identity))


def test_a_prefork_childs_ready_report_is_sent_before_its_first_fetch(redis_url, fast_config, r) -> None:
    """PoolRuntime.on_running (a child's ready report) runs once everything that can fail
    at boot is done and before the fetcher starts: a job taken at once may kill the
    process, and its master must already know the child booted."""
    from forkq.connection import ConnectionSpec
    from forkq.runtime import PoolRuntime

    forkq.Enqueuer(r, NS).enqueue("work", {})
    pool = forkq.WorkerPool(NS, config=fast_config)
    pool.register("work", lambda job: None)
    rt = PoolRuntime(pool, ConnectionSpec.of(redis_url).for_namespace(NS), concurrency=2)
    seen: list[tuple[bool, int]] = []
    rt.on_running = lambda: seen.append((rt.fetcher.is_alive(), r.llen(K.queue("work"))))
    rt.start()
    try:
        assert seen == [(False, 1)]  # not yet fetching; the job still waits
        wait_for(lambda: r.llen(K.queue("work")) == 0, 10, message="the job taken after")
    finally:
        rt.stop(2)


def test_late_ack_of_a_job_already_requeued_does_not_write_a_retry(r, fast_config) -> None:
    identity = "late:1:x"
    (jid,) = _fake_dead_pool(r, identity, time.time(), 1)
    reaper.recover_inprogress(r, K, identity, fast_config)
    settle = scripts.Settle(op="r", field=jid, payload=b"{}", score=time.time())
    assert scripts.run_one(r, scripts.ack(K, identity=identity, plain_done=(), settles=[settle],
                                          dead_cutoff=0, dead_max=10)) == [0, 0, 0]
    assert r.zcard(K.retry) == 0 and r.llen(K.queue("work")) == 1


def test_lost_fetch_reply_is_reconciled(redis_url, fast_config, pools, r) -> None:
    """Jobs in our in-progress hash that we never received are given back."""
    pool = forkq.WorkerPool(NS, config=fast_config)
    seen = []
    pool.register("work", lambda job: seen.append(job.id))
    start(pools, pool, redis_url)
    identity = pool.runtime.identity
    job = forkq.Enqueuer(r, NS).enqueue("work", {"i": 1})
    wait_for(lambda: seen == [job.id], 5, message="first run")
    # Its ack may wait for the next fetch (ACK_WINDOW): settled before the simulation.
    wait_for(lambda: r.hlen(K.inprogress(identity)) == 0, 5, message="first run acked")
    # Simulate a fetch whose reply was lost: the job sits in our hash, unknown to us.
    r.hset(K.inprogress(identity), job.id, orjson.dumps(job.data))
    pool.runtime.fetcher.request_reconcile()
    wait_for(lambda: seen == [job.id, job.id], 5, message="job given back and run again")
    wait_for(lambda: r.hlen(K.inprogress(identity)) == 0, 5, message="in-progress empty")


def test_an_ack_between_a_claim_and_the_recovery_settles_and_the_next_fetch_fences(r, fast_config) -> None:
    """ack.lua looks at the fence only when a job it was told of is gone: a pool claimed a
    moment ago whose jobs were not yet recovered settles them (once: the recovery then
    finds nothing), and its next fetch, which always looks, stops it."""
    identity = "justclaimed:1:x"
    (jid,) = _fake_dead_pool(r, identity, time.time(), 1)
    r.set(K.fence(identity), b"1", ex=60)  # claim_pool.lua's write, before recover_inprogress
    ack = scripts.ack(K, identity=identity, plain_done=[jid], settles=(), dead_cutoff=0, dead_max=10)
    assert scripts.run_one(r, ack) == [1, 0, 0]
    assert not r.exists(K.inprogress(identity))
    plan = scripts.FetchPlan(K, identity=identity, targets=[scripts.FetchTarget.of(K, "work", 0)],
                             lease_ttl=60)
    assert scripts.Runner(r).run([plan.call(start=0, want=5)]) == [[b"fenced"]]


def test_a_single_taken_job_whose_jid_is_held_gets_a_field_of_its_own(r, fast_config) -> None:
    """A copy of a jid the pool already holds (a producer that pushed it twice), taken by
    a fetch of its own, gets ``#2``: the first copy is not overwritten."""
    identity = "dup:1:x"
    payload = orjson.dumps({"jid": "d" * 24, "class": "work", "queue": "work", "args": [1]})
    r.lpush(K.queue("work"), payload)
    plan = scripts.FetchPlan(K, identity=identity, targets=[scripts.FetchTarget.of(K, "work", 0)],
                             lease_ttl=60)
    runner = scripts.Runner(r)
    first = runner.run([plan.call(start=0, want=1)])[0]
    assert first[7] == b"d" * 24
    second_payload = payload.replace(b"[1]", b"[2]")
    r.lpush(K.queue("work"), second_payload)
    second = runner.run([plan.call(start=0, want=1)])[0]
    assert second[7] == b"d" * 24 + b"#2"
    assert r.hgetall(K.inprogress(identity)) == {b"d" * 24: payload, b"d" * 24 + b"#2": second_payload}


def test_an_ack_batch_sent_twice_is_counted_once(r, fast_config) -> None:
    """The ack script reports what it settled; a re-sent batch (lost reply) counts nothing."""
    identity = "twice:1:x"
    jids = _fake_dead_pool(r, identity, time.time(), 3)
    settles = [scripts.Settle(op="r", field=jids[2], payload=b"{}", score=time.time())]
    call = scripts.ack(K, identity=identity, plain_done=jids[:2], settles=settles,
                       dead_cutoff=0, dead_max=10)
    assert scripts.run_one(r, call) == [3, 1, 0]
    assert scripts.run_one(r, call) == [0, 0, 0]
    assert r.zcard(K.retry) == 1


def test_an_ack_from_a_pool_a_reaper_claimed_reports_it_fenced(r, fast_config) -> None:
    """A pool that was only frozen learns at its next round trip that its jobs went elsewhere."""
    identity = "frozen:1:x"
    (jid,) = _fake_dead_pool(r, identity, time.time() - 100, 1)
    assert reaper.release_pool(r, K, identity, fast_config) == (1, 0)
    ack = scripts.ack(K, identity=identity, plain_done=[jid], settles=(), dead_cutoff=0, dead_max=10)
    assert scripts.run_one(r, ack) == [0, 0, 1]
    plan = scripts.FetchPlan(K, identity=identity, targets=[scripts.FetchTarget.of(K, "work", 0)],
                             lease_ttl=60)
    fetch = plan.call(start=0, want=5)
    assert scripts.Runner(r).run([fetch]) == [[b"fenced"]]
    assert r.llen(K.queue("work")) == 1          # the requeued job was not taken back

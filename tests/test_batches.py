"""Batches: callbacks enqueued exactly once when every job of the batch has ended.

Real Redis; in-process pools for the outcomes (success, retry, dead, nested,
empty) and the real CLI with children SIGKILLed for "exactly once under kills".
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import orjson
import pytest
import redis
from helpers import start
from procs import KEYS as MK
from procs import NS as MNS
from procs import runs, start_forkq, wait_children_ready, write_jobs
from redis_server import wait_for

import forkq
from forkq.job import MalformedPayload, decode

NS = "batch"


class Seen:
    """What ran, by job name and jid, in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: Counter[str] = Counter()
        self.by_name: dict[str, list[forkq.Job]] = {}

    def add(self, job: forkq.Job) -> None:
        with self.lock:
            self.runs[job.id] += 1
            self.by_name.setdefault(job.name, []).append(job)

    def of(self, name: str) -> list[forkq.Job]:
        with self.lock:
            return list(self.by_name.get(name, []))


def _pool(seen: Seen, url: str) -> forkq.WorkerPool:
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=0.2))
    done_at_callback: dict[str, int] = {}
    enq: list[forkq.Enqueuer] = []

    @pool.job
    def work(job: forkq.Job) -> None:
        seen.add(job)

    @pool.job(max_fails=3, backoff=lambda job: 0.05)
    def flaky(job: forkq.Job) -> None:
        if job.fails == 0:
            raise RuntimeError("first try fails")
        seen.add(job)

    @pool.job(max_fails=1)
    def doomed(job: forkq.Job) -> None:
        raise RuntimeError("always fails")

    @pool.job
    def parent(job: forkq.Job) -> None:
        if not enq:
            enq.append(pool.enqueuer(url))
        with enq[0].batch(bid=job.batch_id) as b:
            b.enqueue_many("work", [{"child": i} for i in range(5)])
        seen.add(job)

    @pool.job
    def on_ok(job: forkq.Job) -> None:
        done_at_callback[job.id] = len(seen.of("work"))
        seen.add(job)

    @pool.job
    def on_end(job: forkq.Job) -> None:
        seen.add(job)

    pool.done_at_callback = done_at_callback  # type: ignore[attr-defined]
    return pool


def test_callbacks_run_once_after_every_job_of_the_batch_succeeded(
        redis_url: str, pools: list, r: redis.Redis) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    e = pool.enqueuer(redis_url)
    with e.batch(on_success="on_ok", on_complete="on_end", args={"report": "daily"},
                 description="nightly") as b:
        b.enqueue_many("work", [{"i": i} for i in range(300)])
    assert len(b.jobs) == 300 and all(j.batch_id == b.bid for j in b.jobs)
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None and status.total == 300 and status.pending == 300
    start(pools, pool, redis_url, concurrency=8)
    wait_for(lambda: seen.of("on_ok") and seen.of("on_end"), 30, message="both callbacks")
    (ok,) = seen.of("on_ok")
    assert ok.args == {"report": "daily", "batch_id": b.bid}
    assert pool.done_at_callback[ok.id] == 300  # type: ignore[attr-defined]  # not before the last job
    assert len(seen.of("work")) == 300 and max(seen.runs.values()) == 1
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None
    assert (status.pending, status.succeeded, status.failures, status.dead) == (0, 300, 0, 0)
    assert status.success_at and status.complete_at and status.done
    assert status.description == "nightly" and status.on_success == "on_ok"
    assert [s.bid for s in forkq.Client(redis_url, NS).batches()][:1] == [b.bid]
    # Fired once: the callbacks' queues hold nothing more, and nothing else can fire them.
    assert r.llen(pool.keys.queue("on_ok")) == 0 and r.llen(pool.keys.queue("on_end")) == 0


def test_a_member_that_retries_then_succeeds_still_lets_on_success_run(
        redis_url: str, pools: list) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    with pool.enqueuer(redis_url).batch(on_success="on_ok") as b:
        b.enqueue_many("flaky", [{"i": i} for i in range(20)])
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: seen.of("on_ok"), 30, message="on_success after the retries")
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None
    assert (status.succeeded, status.failures, status.dead, status.pending) == (20, 20, 0, 0)


def test_a_dead_member_runs_on_complete_but_never_on_success(
        redis_url: str, pools: list, r: redis.Redis) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    with pool.enqueuer(redis_url).batch(on_success="on_ok", on_complete="on_end") as b:
        b.enqueue_many("work", [{"i": i} for i in range(10)])
        b.enqueue("doomed")
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: seen.of("on_end"), 30, message="on_complete")
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None
    assert (status.succeeded, status.dead, status.pending) == (10, 1, 0)
    # Both callbacks are decided in the one atomic ack that finished the batch: on_success
    # was not pushed then, and no later settle of this batch can push it.
    assert status.success_at is None and r.llen(pool.keys.queue("on_ok")) == 0
    assert seen.of("on_ok") == []


def test_a_job_adds_to_its_own_batch_and_the_callback_waits_for_the_added_jobs(
        redis_url: str, pools: list) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    with pool.enqueuer(redis_url).batch(on_success="on_ok") as b:
        b.enqueue_many("parent", [{"p": i} for i in range(3)])
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: seen.of("on_ok"), 30, message="on_success after the nested jobs")
    (ok,) = seen.of("on_ok")
    assert pool.done_at_callback[ok.id] == 15  # type: ignore[attr-defined]
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None and (status.total, status.succeeded, status.pending) == (18, 18, 0)


def test_an_empty_batch_runs_its_callbacks_at_once(redis_url: str, pools: list) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    with pool.enqueuer(redis_url).batch(on_success="on_ok", on_complete="on_end") as b:
        pass
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: seen.of("on_ok") and seen.of("on_end"), 30, message="callbacks of an empty batch")
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None and status.total == 0 and status.done


def test_bad_batches_get_one_clear_error_and_push_nothing(redis_url: str, r: redis.Redis) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    e = pool.enqueuer(redis_url)
    with pytest.raises(forkq.ConfigError, match="unknown job 'nope'"):
        e.batch(on_success="nope")
    with pytest.raises(forkq.ConfigError, match="bad batch id"):
        e.batch(bid="a{b}")
    with pytest.raises(forkq.ConfigError, match="set when a batch is created"):
        e.batch(bid="abc", on_success="on_ok")
    with pytest.raises(forkq.EnqueueError, match="unknown or finished"):
        with e.batch(bid="no-such-batch") as b:
            b.enqueue("work")
    with pytest.raises(RuntimeError, match="boom"):
        with e.batch(on_success="on_ok") as b2:
            b2.enqueue("work")
            raise RuntimeError("boom")
    assert forkq.Client(redis_url, NS).batch(b2.bid) is None
    assert r.llen(pool.keys.queue("work")) == 0
    # A malformed bid in a payload from another producer: a clear dead entry, nothing run.
    with pytest.raises(MalformedPayload, match="field 'bid'"):
        decode(b'{"jid":"x","class":"work","args":[{}],"bid":{"a":1}}')


# -- exactly once under kills, through the real CLI ------------------------------------

BATCH_JOBS = '''
@pool.job
def cb_ok(job):
    R().hincrby("test:callbacks", "ok", 1)
    R().set("test:ok_saw", R().hlen("test:runs"))


@pool.job
def cb_end(job):
    R().hincrby("test:callbacks", "end", 1)
'''


@pytest.mark.slow
def test_callbacks_run_exactly_once_while_children_are_killed(
        tmp_path, redis_url: str, r: redis.Redis, forkqs: list, chaos) -> None:
    mod = write_jobs(tmp_path, BATCH_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"])
    wait_children_ready(f, r, 2)
    e = forkq.Enqueuer(redis_url, MNS)
    try:
        with e.batch(on_success="cb_ok", on_complete="cb_end") as b:
            b.enqueue_many("slow", [{"s": 0.05} for _ in range(400)])
    finally:
        e.close()
    killer = chaos(f, every=0.25, seed=11, max_kills=8)
    jids = [j.id for j in b.jobs]

    def finished() -> bool:
        assert f.proc.poll() is None, f.log()[-3000:]
        return r.hget("test:callbacks", "end") is not None and r.hget("test:callbacks", "ok") is not None

    wait_for(finished, 120, interval=0.1, message="both callbacks under kills")
    kills = killer.stop()
    got = runs(r)
    assert all(j in got for j in jids), "a batch job was lost"
    client = forkq.Client(redis_url, MNS)
    status = client.batch(b.bid)
    assert status is not None and status.pending == 0 and status.succeeded == 400 and status.dead == 0
    assert int(r.get("test:ok_saw") or 0) >= 400  # on_success ran after every job had run
    # Nothing of the batch is left anywhere that could count it again.
    wait_for(lambda: all(r.llen(MK.queue(n)) == 0 for n in ("slow", "cb_ok", "cb_end"))
             and sum(r.hlen(k) for k in r.scan_iter(match=MK.inprogress("") + "*")) == 0,
             30, message="queues and in-progress empty")
    assert r.hgetall("test:callbacks") == {b"ok": b"1", b"end": b"1"}, (kills, r.hgetall("test:callbacks"))
    assert kills >= 3
    dups = sum(n - 1 for j, n in got.items() if j in set(jids))
    print(f"\nbatch under kills: 400 jobs, {kills} child SIGKILLs, {dups} duplicate runs, "
          f"callbacks {r.hgetall('test:callbacks')}")
    assert f.stop() == 0


def test_forkq_batches_cli_shows_counts_and_says_when_a_batch_is_unknown(
        capsys, redis_url: str, pools: list) -> None:
    import io

    from forkq.admin_cli import run as cli

    seen = Seen()
    pool = _pool(seen, redis_url)
    with pool.enqueuer(redis_url).batch(on_success="on_ok", description="cli check") as b:
        b.enqueue_many("work", [{"i": i} for i in range(7)])
    out, err = io.StringIO(), io.StringIO()
    assert cli(["batches", "--redis", redis_url, "-n", NS, b.bid], out, err) == 0, err.getvalue()
    text = out.getvalue()
    assert b.bid in text and "cli check" in text and "on_ok (waiting)" in text
    out = io.StringIO()
    assert cli(["batches", "--redis", redis_url, "-n", NS, "--json"], out, err) == 0
    rows = orjson.loads(out.getvalue())
    mine = next(x for x in rows if x["bid"] == b.bid)
    assert (mine["total"], mine["pending"]) == (7, 7)
    out, err = io.StringIO(), io.StringIO()
    assert cli(["batches", "--redis", redis_url, "-n", NS, "nosuchbatch"], out, err) == 1
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "no batch 'nosuchbatch'" in lines[0] and "Traceback" not in err.getvalue()


@pytest.mark.slow
def test_callbacks_run_exactly_once_across_two_masters_on_one_redis(
        tmp_path, redis_url: str, r: redis.Redis, forkqs: list, chaos) -> None:
    mod = write_jobs(tmp_path, BATCH_JOBS)
    masters = [start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"],
                           env={"FORKQ_HOSTNAME": host}, tag=host) for host in ("host-a", "host-b")]
    for f in masters:
        wait_children_ready(f, r, 2)
    e = forkq.Enqueuer(redis_url, MNS)
    try:
        bids = []
        for _ in range(5):
            with e.batch(on_success="cb_ok", on_complete="cb_end") as b:
                b.enqueue_many("slow", [{"s": 0.01} for _ in range(100)])
            bids.append(b.bid)
    finally:
        e.close()
    killer = chaos(masters[0], every=0.3, seed=5, max_kills=4)
    wait_for(lambda: r.hget("test:callbacks", "end") == b"5" and r.hget("test:callbacks", "ok") == b"5",
             90, interval=0.1, message="5 batches' callbacks over two masters")
    killer.stop()
    client = forkq.Client(redis_url, MNS)
    for bid in bids:
        status = client.batch(bid)
        assert status is not None and (status.pending, status.succeeded, status.dead) == (0, 100, 0)
    # host-b (never killed) ran some of the jobs: two masters really shared the batches.
    pids = {int(p) for p in r.hvals("test:pids")}
    assert pids & masters[1].child_pids(), (pids, masters[1].child_pids())
    wait_for(lambda: sum(r.hlen(k) for k in r.scan_iter(match=MK.inprogress("") + "*")) == 0, 30,
             message="nothing in progress")
    assert r.hgetall("test:callbacks") == {b"ok": b"5", b"end": b"5"}
    for f in masters:
        assert f.stop() == 0


def test_cancelling_a_waiting_member_ends_it_in_its_batch(redis_url: str, pools: list, r: redis.Redis) -> None:
    seen = Seen()
    pool = _pool(seen, redis_url)
    with pool.enqueuer(redis_url).batch(on_success="on_ok", on_complete="on_end") as b:
        b.enqueue_many("work", [{"i": i} for i in range(3)])
    client = forkq.Client(redis_url, NS)
    # Cancelled before any pool runs: removed from its queue, counted dead in the batch.
    assert client.cancel(b.jobs[0].id)
    status = client.batch(b.bid)
    assert status is not None and (status.pending, status.dead) == (2, 1)
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: seen.of("on_end"), 20, message="on_complete after the cancel")
    status = client.batch(b.bid)
    assert status is not None and (status.pending, status.succeeded, status.dead) == (0, 2, 1)
    assert status.success_at is None and r.llen(pool.keys.queue("on_ok")) == 0
    assert {j.id for j in seen.of("work")} == {b.jobs[1].id, b.jobs[2].id}
    client.close()


def test_a_callback_pushed_inside_a_fetch_wakes_the_idle_pool_that_runs_it(
        redis_url: str, pools: list, r: redis.Redis) -> None:
    """Batch members' successes ride in the fetch call, which does not publish: the
    fetcher relays the callback's wake, so a pool that runs only the callback (idle,
    polling every 60 s) starts it at once instead of at its next poll."""
    seen = Seen()
    fillers_done_at_callback: list[int] = []
    members = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=60))

    @members.job
    def work(job: forkq.Job) -> None:
        seen.add(job)

    @members.job
    def filler(job: forkq.Job) -> None:
        time.sleep(0.005)
        seen.add(job)

    callbacks = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=60))

    @callbacks.job
    def on_end(job: forkq.Job) -> None:
        fillers_done_at_callback.append(len(seen.of("filler")))
        seen.add(job)

    # No waker (its lock held elsewhere, as when tracking is refused and the holder
    # polls slowly): a wake can only come from the fetcher's relay.
    r.set(callbacks.keys.waker_lock, "someone-else", px=120_000)
    start(pools, callbacks, redis_url, concurrency=2)
    wait_for(lambda: r.scard(callbacks.keys.processes) >= 1, 10, message="the callback pool beating")
    enq = forkq.Enqueuer(redis_url, NS)
    with enq.batch(on_complete="on_end") as b:
        b.enqueue_many("work", [{"i": i} for i in range(50)])
    # Jobs behind the batch keep the member pool fetching while its last member
    # finishes, so that success is acked inside a fetch call, not by ack.lua.
    enq.enqueue_many("filler", [{"i": i} for i in range(2000)])
    start(pools, members, redis_url, concurrency=4)
    # Well under the 60 s poll: only a wake can start it this soon.
    wait_for(lambda: seen.of("on_end"), 15, message="the callback, started by the relayed wake")
    assert len(seen.of("on_end")) == 1 and len(seen.of("work")) == 50
    assert fillers_done_at_callback[0] < 2000  # the batch finished inside a fetch call
    status = forkq.Client(redis_url, NS).batch(b.bid)
    assert status is not None and (status.pending, status.succeeded) == (0, 50)

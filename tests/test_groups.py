"""Fair groups: ``enqueue(name, args, group=...)`` and ``@pool.job(group_concurrency=N)``.

Real Redis and real processes.  Order is read from what ran (a list filled by the
handlers, or a Redis list), never from timings; concurrency per group is observed
with a Redis counter in the job body, across two prefork masters on one Redis.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
from helpers import start
from procs import KEYS as MKEYS
from procs import NS as MNS
from procs import dead_jids, start_forkq, wait_children_ready, write_jobs
from redis_server import wait_for

import forkq
from forkq import job as jobcodec
from forkq import scripts
from forkq.keys import Keys

NS = "grp"
KEYS = Keys(NS)


class Ran:
    """(group, i) of every job, in the order the handlers started them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str | None, int]] = []

    def __call__(self, job: forkq.Job) -> None:
        with self.lock:
            self.items.append((job.group, job.args.get("i", -1)))

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)

    def positions(self, group: str | None) -> list[int]:
        with self.lock:
            return [k for k, (g, _) in enumerate(self.items) if g == group]


def _leftover_group_keys(r: redis.Redis, ns: str = NS) -> list[bytes]:
    """Group bookkeeping that should be gone once every group drained."""
    return sorted(k for pat in ("gqueue:*", "glease:*", "groups:*", "gparked:*")
                  for k in r.scan_iter(match="{" + ns + "}:" + pat) if r.type(k) != b"zset" or r.zcard(k))


# -- round robin -------------------------------------------------------------------------

def test_a_small_group_runs_within_the_first_rounds_behind_a_big_backlog(redis_url: str, pools: list,
                                                                         r: redis.Redis) -> None:
    ran = Ran()
    pool = forkq.WorkerPool(NS)
    pool.register("work", ran)
    e = pool.enqueuer(redis_url)
    for k in range(0, 5000, 1000):
        e.enqueue_many("work", [{"i": i} for i in range(k, k + 1000)], group="A")
    e.enqueue_many("work", [{"i": i} for i in range(10)], group="B")
    # Before anything runs: the queue holds one token per group, not the jobs.
    assert r.llen(KEYS.queue("work")) == 2
    assert r.llen(KEYS.group_queue("work", "A")) == 5000
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: len(ran) == 5010, 30, message="every job")
    b = ran.positions("B")
    assert len(b) == 10
    # Round robin: B's 10 are taken in the first few fetch rounds, not after A's 5000.
    assert max(b) < 100, b
    # A's jobs ran in their order (FIFO within a group).
    a = [i for g, i in ran.items if g == "A"]
    assert a == sorted(a)
    assert _leftover_group_keys(r) == []
    assert r.llen(KEYS.queue("work")) == 0


def test_a_group_enqueued_while_a_backlog_drains_starts_before_the_backlog_moves_on(
        redis_url: str, pools: list) -> None:
    started = threading.Event()
    ran = Ran()

    def work(job: forkq.Job) -> None:
        ran(job)
        started.set()

    pool = forkq.WorkerPool(NS)
    pool.register("work", work)
    e = pool.enqueuer(redis_url)
    e.enqueue_many("work", [{"i": i} for i in range(20000)], group="A")
    start(pools, pool, redis_url, concurrency=4)
    assert started.wait(10)
    e.enqueue_many("work", [{"i": i} for i in range(10)], group="B")
    seen_at_enqueue = len(ran)
    wait_for(lambda: len(ran.positions("B")) == 10, 20, message="group B's jobs")
    # At most a few fetch rounds of A ran between B's enqueue and B's last start
    # (A has thousands still waiting: B did not wait for them).
    assert max(ran.positions("B")) - seen_at_enqueue < 500
    assert len(ran.positions("A")) < 20000


def test_ungrouped_jobs_of_a_grouped_name_still_flow(redis_url: str, pools: list, r: redis.Redis) -> None:
    ran = Ran()
    pool = forkq.WorkerPool(NS)
    pool.register("work", ran)
    e = pool.enqueuer(redis_url)
    e.enqueue_many("work", [{"i": i} for i in range(300)], group="A")
    e.enqueue_many("work", [{"i": i} for i in range(20)])
    e.enqueue("work", {"i": 0}, group="C")
    client = forkq.Client(redis_url, NS)
    (q,) = client.queues()
    assert (q.count, q.groups, q.grouped) == (321, 2, 301)
    assert q.largest_groups == (("A", 300), ("C", 1))
    assert client.stats().enqueued == 321
    assert [(g.group, g.count) for g in client.groups("work")] == [("A", 300), ("C", 1)]
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: len(ran) == 321, 20, message="every job")
    assert len(ran.positions(None)) == 20
    assert client.queues()[0].count == 0 and client.groups("work") == []
    assert _leftover_group_keys(r) == []


def test_grouped_names_and_plain_names_keep_their_keys_apart(redis_url: str, r: redis.Redis) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    e.enqueue("a:b", {"i": 1}, group="c")
    e.enqueue("a", {"i": 2}, group="b-c")
    assert r.llen(KEYS.group_queue("a:b", "c")) == 1
    assert r.llen(KEYS.group_queue("a", "b-c")) == 1
    token = r.lindex(KEYS.queue("a:b"), 0)
    assert jobcodec.token_group(token) == "c"
    # The token is a Sidekiq-shaped job (class, args, jid, queue): views can list it.
    data = orjson.loads(token)
    assert data["class"] == jobcodec.GROUP_TOKEN_CLASS and data["args"] == ["c"] and data["jid"]


# -- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("group", ["{x}", "a:b", "", "tab\there", "x" * 129, 42, None.__class__, b"A"])
def test_a_bad_group_is_one_clear_error_and_enqueues_nothing(redis_url: str, r: redis.Redis,
                                                             group: object) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    for call in (lambda: e.enqueue("work", {}, group=group),  # type: ignore[arg-type]
                 lambda: e.enqueue_many("work", [{}, {}], group=group),  # type: ignore[arg-type]
                 lambda: e.enqueue_in("work", 5, {}, group=group),  # type: ignore[arg-type]
                 lambda: e.enqueue_at_many("work", 1.0, [{}], group=group)):  # type: ignore[arg-type]
        with pytest.raises(forkq.ConfigError, match="bad group"):
            call()
    assert r.keys("*") == []


def test_a_bad_group_concurrency_is_refused_at_registration() -> None:
    pool = forkq.WorkerPool(NS)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(forkq.ConfigError, match="group_concurrency"):
            pool.job(group_concurrency=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("group", [5, "{x}", "a:b", ["A"], ""])
def test_a_wrong_group_from_another_producer_goes_to_dead_with_the_reason(
        redis_url: str, pools: list, r: redis.Redis, group: object) -> None:
    ran = Ran()
    pool = forkq.WorkerPool(NS)
    pool.register("work", ran)
    bad_now = orjson.dumps({"jid": "bad-now", "class": "work", "queue": "work", "args": [{}], "group": group})
    bad_later = orjson.dumps({"jid": "bad-later", "class": "work", "args": [{}], "group": group})
    r.lpush(KEYS.queue("work"), bad_now)
    r.zadd(KEYS.retry, {bad_later: 1.0})  # due: promotion must not crash on it either
    e = pool.enqueuer(redis_url)
    e.enqueue_many("work", [{"i": i} for i in range(5)], group="ok")
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: r.zcard(KEYS.dead) == 2, 15, message="both bad entries in dead")
    wait_for(lambda: len(ran) == 5, 15, message="the good jobs")
    # Each kept with its raw bytes and the reason.
    dead = {orjson.loads(e["raw"])["jid"]: e for e in dead_jids(r, KEYS).values()}
    for jid in ("bad-now", "bad-later"):
        assert "field 'group'" in dead[jid]["error_message"], dead[jid]
    assert ran.positions("ok") == [0, 1, 2, 3, 4]


# -- cancel, retry, promotion ------------------------------------------------------------

def test_cancel_removes_a_queued_grouped_job(redis_url: str, pools: list) -> None:
    ran = Ran()
    pool = forkq.WorkerPool(NS)
    pool.register("work", ran)
    e = pool.enqueuer(redis_url)
    jobs = e.enqueue_many("work", [{"i": i} for i in range(3)], group="A")
    client = forkq.Client(redis_url, NS)
    assert client.result(jobs[1].id).state == "queued"  # type: ignore[union-attr]
    assert client.cancel(jobs[1].id) is True
    assert client.cancel(jobs[1].id) is False
    assert client.groups("work")[0].count == 2
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: len(ran) == 2, 10, message="the two others")
    assert sorted(i for _, i in ran.items) == [0, 2]


def test_a_cancelled_last_job_leaves_a_group_that_enqueues_again_cleanly(
        redis_url: str, pools: list, r: redis.Redis) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    (job,) = e.enqueue_many("work", [{"i": 0}], group="A")
    assert forkq.Client(redis_url, NS).cancel(job.id)
    e.enqueue("work", {"i": 1}, group="A")
    # One token for the group, whatever happened to its list meanwhile.
    assert r.llen(KEYS.queue("work")) == 1
    ran = Ran()
    pool = forkq.WorkerPool(NS)
    pool.register("work", ran)
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: len(ran) == 1, 10, message="the new job")
    wait_for(lambda: _leftover_group_keys(r) == [], 5, message="the group's keys gone")


def test_promotion_puts_a_grouped_retry_back_in_its_group(redis_url: str, r: redis.Redis) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    name, group = "mail/send", "tenant/1é"  # cjson escapes "/": the token must match anyway
    e.enqueue(name, {"i": 0}, group=group)
    assert r.lrange(KEYS.queue(name), 0, -1) == [jobcodec.group_token(name, group)]
    payload = r.rpop(KEYS.group_queue(name, group))
    r.srem(KEYS.groups(name), group)
    r.delete(KEYS.queue(name))
    r.zadd(KEYS.retry, {payload: 1.0})
    moved, _more, bad = scheduler_promote(r)
    assert (moved, bad) == (1, [])
    assert r.lrange(KEYS.group_queue(name, group), 0, -1) == [payload]
    # The token Lua wrote is byte for byte the one enqueue (Python) writes.
    assert r.lrange(KEYS.queue(name), 0, -1) == [jobcodec.group_token(name, group)]
    assert r.smembers(KEYS.groups(name)) == {group.encode()}


def scheduler_promote(r: redis.Redis) -> tuple[int, bool, list[bytes]]:
    from forkq import scheduler

    reply = scripts.run_one(r, scripts.promote_due(KEYS, zset_key=KEYS.retry, limit=100))
    return scheduler.promote_reply(reply)


def test_a_failed_grouped_job_is_retried_in_its_group(redis_url: str, pools: list, r: redis.Redis) -> None:
    ran = Ran()
    tries: dict[int, int] = {}

    def flaky(job: forkq.Job) -> None:
        ran(job)
        i = job.arg_int("i")
        tries[i] = tries.get(i, 0) + 1
        if i == 0 and tries[i] == 1:
            raise RuntimeError("first try fails")

    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=0.2))
    pool.register("work", flaky, forkq.JobOptions(backoff=lambda job: 0.2))
    e = pool.enqueuer(redis_url)
    e.enqueue_many("work", [{"i": i} for i in range(3)], group="A")
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: tries.get(0) == 2, 15, message="the retry of job 0")
    assert ran.positions("A") == list(range(len(ran)))  # every run, the retry too, in group A
    wait_for(lambda: _leftover_group_keys(r) == [], 5, message="the group's keys gone")


def test_retrying_a_dead_grouped_job_puts_it_back_in_its_group(redis_url: str, r: redis.Redis) -> None:
    data = jobcodec.build_payload("work", {"i": 1}, group="T1")
    data.update(error_class="Boom", error_message="x", failed_at=1.0, retry_count=3)
    r.zadd(KEYS.dead, {jobcodec.encode(data): 1.0})
    client = forkq.Client(redis_url, NS)
    client.retry_dead_job(1.0, data["jid"])
    assert r.llen(KEYS.group_queue("work", "T1")) == 1
    assert [jobcodec.token_group(t) for t in r.lrange(KEYS.queue("work"), 0, -1)] == ["T1"]
    assert client.queues()[0].count == 1


# -- group_concurrency -------------------------------------------------------------------

CAPPED_JOBS = '''
OBSERVE = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def _now(r):
    s, us = r.time()
    return s + us / 1e6


@pool.job(group_concurrency=2)
def capped(job):
    g = job.group
    r = R()
    r.eval(OBSERVE, 2, "test:running:" + g, "test:max:" + g)
    r.hset("test:pids", job.id, os.getpid())
    t0 = _now(r)
    # "hold_once": long only on the first run (a run after a kill is short).
    first = not (job.data.get("killed") or job.data.get("recovered"))
    _pause(job.arg_float("s") if first or not job.args.get("hold_once") else 0.05)
    p = r.pipeline(transaction=False)
    p.decr("test:running:" + g)
    p.hincrby("test:runs", job.id, 1)
    p.rpush("test:order", g)
    p.rpush("test:spans:" + g, "%r %r" % (t0, _now(r)))
    p.execute()
'''


def _max(r: redis.Redis, group: str) -> int:
    return int(r.get("test:max:" + group) or 0)


def test_group_concurrency_holds_across_two_masters_and_other_groups_keep_flowing(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list) -> None:
    module = write_jobs(tmp_path, CAPPED_JOBS)
    e = forkq.Enqueuer(redis_url, MNS)
    e.enqueue_many("capped", [{"s": 0.05} for _ in range(24)], group="big")
    e.enqueue_many("capped", [{"s": 0.05} for _ in range(6)], group="small")
    masters = [start_forkq(forkqs, tmp_path, redis_url, module, ["-p", "2", "-c", "4"], tag=str(k))
               for k in range(2)]
    for f in masters:
        wait_children_ready(f, r, 2)
    wait_for(lambda: r.hlen("test:runs") == 30, 60, message="every job")
    # 16 threads, yet never more than 2 of a group at once, cluster-wide; and the cap is
    # reached (the jobs did run side by side).
    assert _max(r, "big") == 2 and _max(r, "small") == 2
    order = [g.decode() for g in r.lrange("test:order", 0, -1)]
    # The small group was not starved behind the big one (both run at their cap).
    assert order.index("small") < 12 and "small" not in order[-6:]
    wait_for(lambda: not r.exists(MKEYS.group_lease("capped", "big"), MKEYS.group_parked("capped")),
             10, message="no group lease or parked group left")


def _max_overlap(r: redis.Redis, group: str) -> int:
    """Most runs of ``group`` that overlapped in time (Redis's clock), from finished runs."""
    events = []
    for span in r.lrange("test:spans:" + group, 0, -1):
        t0, t1 = (float(x) for x in span.split())
        events += [(t0, 1), (t1, -1)]
    best = n = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        n += d
        best = max(best, n)
    return best


def test_group_leases_of_a_killed_child_are_released_and_the_group_runs_at_its_cap_again(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list) -> None:
    module = write_jobs(tmp_path, CAPPED_JOBS)
    e = forkq.Enqueuer(redis_url, MNS)
    long_jobs = e.enqueue_many("capped", [{"s": 60.0, "hold_once": True} for _ in range(2)], group="g")
    # Leases outlive the test's deadlines: only their release can unblock the group.
    f = start_forkq(forkqs, tmp_path, redis_url, module, ["-p", "2", "-c", "4"],
                    env={"FORKQ_LEASE_TTL": "300"})
    wait_children_ready(f, r, 2)
    wait_for(lambda: r.zcard(MKEYS.group_lease("capped", "g")) == 2, 20, message="two leases held")
    e.enqueue_many("capped", [{"s": 0.1} for _ in range(10)], group="g")
    # At its cap: the group is parked, its jobs wait (6 free threads notwithstanding).
    wait_for(lambda: r.zcard(MKEYS.group_parked("capped")) == 1, 10, message="the group parked")
    assert r.llen(MKEYS.group_queue("capped", "g")) == 10
    # SIGKILL the children running the two long jobs, mid-job (once both bodies have
    # recorded their pid: a lease is taken at fetch, before the body starts).
    wait_for(lambda: all(r.hget("test:pids", j.id) for j in long_jobs), 20, message="both bodies running")
    for pid in {int(r.hget("test:pids", j.id) or 0) for j in long_jobs}:
        assert pid > 1, pid
        os.kill(pid, signal.SIGKILL)
    # Recovery drops their leases (else the group stays blocked until they expire) and
    # requeues them to the head of the group: all 12 run, two at a time, at the cap.
    wait_for(lambda: r.hlen("test:runs") == 12, 40, message="every job after the kill")
    assert _max_overlap(r, "g") == 2
    wait_for(lambda: not r.exists(MKEYS.group_lease("capped", "g"), MKEYS.group_parked("capped")),
             10, message="no group lease or parked group left")
    assert r.llen(MKEYS.group_queue("capped", "g")) == 0


# -- views: CLI and dashboard ------------------------------------------------------------

def test_forkq_queues_shows_groups_and_enqueue_takes_a_group(capsys: pytest.CaptureFixture[str],
                                                             redis_url: str) -> None:
    from forkq.admin_cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([argv[0], "--redis", redis_url, "-n", NS, *argv[1:]])
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    e = forkq.Enqueuer(redis_url, NS)
    e.enqueue_many("work", [{}] * 5, group="tenant-1")
    assert run("enqueue", "work", "{}", "--group", "tenant-2")[0] == 0
    code, out, err = run("enqueue", "work", "{}", "--group", "a{b}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bad group" in err, (out, err)
    code, out, _ = run("queues")
    header, row = out.splitlines()[:2]
    assert header.split()[-1] == "groups"
    assert row.split()[:2] == ["work", "6"]
    assert "2 (tenant-1: 5, tenant-2: 1)" in row
    code, out, _ = run("queues", "--json")
    (q,) = orjson.loads(out)
    assert (q["count"], q["groups"], q["largest_groups"]) == (6, 2, [["tenant-1", 5], ["tenant-2", 1]])


def test_the_dashboard_shows_groups_and_refuses_to_delete_a_token(redis_url: str, r: redis.Redis) -> None:
    pytest.importorskip("starlette")
    import urllib.request

    from web_support import start_web

    e = forkq.Enqueuer(redis_url, NS)
    e.enqueue_many("work", [{}] * 7, group="tenant-1")
    e.enqueue("work", {}, group="tenant-2")
    web = start_web(redis_url, namespace=NS)
    try:
        with urllib.request.urlopen(web.url + "/queues", timeout=10) as resp:
            page = resp.read().decode()
        assert "2 (tenant-1: 7, tenant-2: 1)" in page
        with urllib.request.urlopen(web.url + "/queue?name=work", timeout=10) as resp:
            page = resp.read().decode()
        assert 'data-group="tenant-1"' in page and 'id="queue-total"' in page
    finally:
        web.stop()
    from forkq.web import queries

    token = r.lindex(KEYS.queue("work"), -1)
    with pytest.raises(forkq.NotDeleted, match="fair group"):
        queries.delete_queue_job(r, KEYS, "work", token)
    assert queries.clear_queue(r, KEYS, "work") == 8
    assert forkq.Client(redis_url, NS).queues()[0].count == 0
    assert _leftover_group_keys(r) == []


@pytest.mark.slow
def test_group_leases_under_repeated_child_kills_lose_nothing_and_leave_no_lease(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list, chaos) -> None:  # type: ignore[no-untyped-def]
    """Children SIGKILLed every 0.25 s: with a 600 s lease TTL only release by identity
    (recovery's ack) lets the groups finish; the cap holds throughout."""
    from procs import runs

    module = write_jobs(tmp_path, CAPPED_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, module, ["-p", "2", "-c", "4"],
                    env={"FORKQ_STALE_AFTER": "600", "FORKQ_LEASE_TTL": "600", "FORKQ_LOG_LEVEL": "WARNING"})
    wait_children_ready(f, r, 2)
    e = forkq.Enqueuer(redis_url, MNS)
    groups = [f"t{k}" for k in range(4)]
    jids = [j.id for g in groups for j in e.enqueue_many("capped", [{"s": 0.02}] * 150, group=g)]
    killer = chaos(f, every=0.25, seed=11, max_kills=20)
    seen = 0
    t0 = time.monotonic()
    while len(runs(r)) < len(jids) and time.monotonic() - t0 < 120:
        seen = max([seen, *(r.zcard(MKEYS.group_lease("capped", g)) for g in groups)])
        time.sleep(0.02)
    kills = killer.stop()

    def settled() -> bool:
        dead = {e["jid"] for e in dead_jids(r).values()}
        return all(j in dead or j in runs(r) for j in jids)

    wait_for(settled, 60, message="every job ran or is dead")
    assert kills > 0 and seen <= 2
    assert max(_max_overlap(r, g) for g in groups) <= 2
    wait_for(lambda: not any(r.exists(MKEYS.group_lease("capped", g)) for g in groups)
             and not r.exists(MKEYS.group_parked("capped")), 10, message="no group lease left")
    assert f.stop() == 0


def test_a_group_whose_token_was_deleted_by_hand_is_repaired(redis_url: str, pools: list,
                                                              r: redis.Redis) -> None:
    e = forkq.Enqueuer(redis_url, NS)
    e.enqueue_many("work", [{"i": i} for i in range(3)], group="A")
    e.enqueue_many("work", [{"i": i} for i in range(2)], group="B")
    r.lrem(KEYS.queue("work"), 0, jobcodec.group_token("work", "A"))  # Sidekiq Web's delete
    client = forkq.Client(redis_url, NS)
    assert client.repair_groups("work") == 1
    assert client.repair_groups("work") == 0  # nothing left to repair
    assert sorted(jobcodec.token_group(t) for t in r.lrange(KEYS.queue("work"), 0, -1)) == ["A", "B"]
    ran = Ran()
    pool = forkq.WorkerPool(NS)
    pool.register("work", ran)
    start(pools, pool, redis_url, concurrency=2)
    wait_for(lambda: len(ran) == 5, 10, message="both groups' jobs")


def test_heartbeats_renew_group_leases_of_jobs_running_longer_than_the_lease_ttl(
        redis_url: str, pools: list, r: redis.Redis) -> None:
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def long(job: forkq.Job) -> None:
        t0 = time.monotonic()
        time.sleep(job.arg_float("s"))
        with lock:
            spans.append((t0, time.monotonic()))

    # Leases expire 1.5 s after they are taken or renewed; the jobs run 3 s each.
    config = forkq.Config(heartbeat_interval=0.3, lease_ttl=1.5, idle_poll_interval=0.1,
                          stale_after=5.0, shutdown_timeout=5.0)
    pool = forkq.WorkerPool(NS, config=config)
    pool.register("long", long, forkq.JobOptions(group_concurrency=1))
    pool.enqueuer(redis_url).enqueue_many("long", [{"s": 3.0}, {"s": 3.0}], group="A")
    start(pools, pool, redis_url, concurrency=4)
    client = forkq.Client(redis_url, NS)
    # The cap the live pool declares is what forkq queues and the dashboard show.
    wait_for(lambda: [q.limits_text for q in client.queues() if q.job_name == "long"] == ["1 per group"],
             10, message="the declared group_concurrency in the queue view")
    wait_for(lambda: len(spans) == 2, 20, message="both jobs")
    (a0, a1), (b0, b1) = sorted(spans)
    # One at a time: the first job's lease outlived its TTL (renewed), so the second
    # waited for its end instead of starting when the lease would have expired.
    assert b0 >= a1 - 0.05, spans


def test_sidekiqs_own_api_reads_a_queue_with_group_entries(redis_url: str) -> None:
    import test_sidekiq_interop as interop

    if interop._PROBLEM is not None:
        pytest.skip(interop._PROBLEM)
    e = forkq.Enqueuer(redis_url, interop.NS)
    e.enqueue_many("work", [{"i": i} for i in range(3)], group="tenant-1")
    e.enqueue("work", {"i": 9})
    out = interop.sidekiq(redis_url, "read")
    (q,) = [q for q in out["queues"] if q["name"] == "work"]
    # Sidekiq sees the group's entry as a job of class forkq.group (one per group).
    assert q["size"] == 2
    assert sorted(j["class"] for j in q["jobs"]) == ["forkq.group", "work"]
    (token,) = [j for j in q["jobs"] if j["class"] == "forkq.group"]
    assert token["args"] == ["tenant-1"]


@pytest.mark.slow
def test_a_dead_hosts_group_leases_are_released_by_the_reaper_of_another_host(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list) -> None:
    """Master and children SIGKILLed together (a host gone): no one releases their pool at
    once; another master's staleness reaper does, and with it the group leases (their TTL
    is far longer than the test), so the parked group runs again at its cap."""
    module = write_jobs(tmp_path, CAPPED_JOBS)
    env = {"FORKQ_STALE_AFTER": "3", "FORKQ_LEASE_TTL": "300"}
    e = forkq.Enqueuer(redis_url, MNS)
    e.enqueue_many("capped", [{"s": 60.0, "hold_once": True} for _ in range(2)], group="g")
    host_a = start_forkq(forkqs, tmp_path, redis_url, module, ["-p", "1", "-c", "4"], env=env, tag="a")
    wait_children_ready(host_a, r, 1)
    wait_for(lambda: r.zcard(MKEYS.group_lease("capped", "g")) == 2, 20, message="two leases held")
    e.enqueue_many("capped", [{"s": 0.05} for _ in range(6)], group="g")
    wait_for(lambda: r.zcard(MKEYS.group_parked("capped")) == 1, 10, message="the group parked")
    host_a.kill_all()
    host_b = start_forkq(forkqs, tmp_path, redis_url, module, ["-p", "1", "-c", "4"], env=env, tag="b")
    wait_for(lambda: r.hlen("test:runs") == 8, 60, message="every job, on the other host")
    assert _max_overlap(r, "g") == 2
    wait_for(lambda: not r.exists(MKEYS.group_lease("capped", "g"), MKEYS.group_parked("capped")),
             10, message="no group lease or parked group left")
    assert host_b.stop() == 0

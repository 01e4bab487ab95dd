"""``rate_limit="N/s"``: a cluster-wide cap on starts, held in the fetch script (GCRA).

Real Redis; start times are read from Redis (``TIME``) inside the handlers, so the
limit is judged by the clock that enforces it.  The bound checked is GCRA's own:
in any window of W seconds at most ``burst + W * rate`` jobs start.  Upper bounds
on durations are generous (a loaded CI machine).
"""

from __future__ import annotations

import threading
import time

import pytest
import redis
from helpers import start
from procs import NS as MNS
from procs import start_forkq, wait_children_ready, write_jobs
from redis_server import wait_for

import forkq
from forkq import clock
from forkq.spec import RateLimit

NS = "rate"


def _calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def max_in_window(starts: list[float], window: float) -> int:
    s = sorted(starts)
    best, j = 0, 0
    for i in range(len(s)):
        while s[i] - s[j] > window:
            j += 1
        best = max(best, i - j + 1)
    return best


class Starts:
    def __init__(self, url: str) -> None:
        self.conn = redis.Redis.from_url(url)
        self.lock = threading.Lock()
        self.by_name: dict[str, list[float]] = {}

    def add(self, job: forkq.Job) -> None:
        t = clock.parse_time(self.conn.time())
        with self.lock:
            self.by_name.setdefault(job.name, []).append(t)

    def of(self, name: str) -> list[float]:
        with self.lock:
            return list(self.by_name.get(name, []))


@pytest.mark.parametrize("spec,why", [("100/x", "bad rate_limit"), ("0/s", "N > 0"), ("fast", "N/s"),
                                      ("-3/m", "N > 0"), ("nan/s", "N > 0")])
def test_a_bad_rate_limit_is_refused_at_registration(spec: str, why: str) -> None:
    pool = forkq.WorkerPool(NS)
    with pytest.raises(forkq.ConfigError, match=why):
        @pool.job(rate_limit=spec)
        def limited(job: forkq.Job) -> None:
            pass


def test_rate_specs_mean_what_they_say() -> None:
    r = RateLimit.parse("100/s")
    assert (r.interval, r.burst) == (0.01, 100)
    r = RateLimit.parse("30 / m")
    assert (r.interval, r.burst) == (2.0, 1)
    assert RateLimit.parse("7200/h").interval == 0.5


def test_starts_never_exceed_the_rate_and_the_backlog_drains_at_it(redis_url: str, pools: list) -> None:
    seen = Starts(redis_url)
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=30.0))
    pool.register("limited", seen.add, forkq.JobOptions(rate_limit="20/s"))
    e = pool.enqueuer(redis_url)
    e.enqueue_many("limited", [{"i": i} for i in range(70)])
    t0 = time.monotonic()
    start(pools, pool, redis_url, concurrency=8)
    wait_for(lambda: len(seen.of("limited")) == 70, 20, message="70 rate-limited jobs")
    took = time.monotonic() - t0
    starts = seen.of("limited")
    # A full bucket of 20, then one every 50 ms: 50 more take >= 2.45 s.
    assert max_in_window(starts, 1.0) <= 20 + 20 + 1, sorted(starts)
    assert max(starts) - min(starts) >= 2.3
    assert took < 10


def test_other_names_keep_flowing_while_one_is_limited(redis_url: str, pools: list) -> None:
    seen = Starts(redis_url)
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=30.0))
    pool.register("trickle", seen.add, forkq.JobOptions(rate_limit="2/s", priority=100))
    pool.register("free", seen.add)
    e = pool.enqueuer(redis_url)
    e.enqueue_many("trickle", [{"i": i} for i in range(30)])
    e.enqueue_many("free", [{"i": i} for i in range(300)])
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: len(seen.of("free")) == 300, 15, message="the unlimited jobs")
    assert len(seen.of("trickle")) < 30  # still held back by its rate
    assert max_in_window(seen.of("trickle"), 1.0) <= 2 + 2 + 1


def test_a_waiting_limited_name_costs_no_round_trips(redis_url: str, pools: list, r: redis.Redis) -> None:
    seen = Starts(redis_url)
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=30.0, heartbeat_interval=30.0,
                                                      stale_after=90.0, lease_ttl=90.0))
    pool.register("hourly", seen.add, forkq.JobOptions(rate_limit="1/h"))
    pool.enqueuer(redis_url).enqueue_many("hourly", [{"i": i} for i in range(5)])
    start(pools, pool, redis_url, concurrency=4)
    wait_for(lambda: len(seen.of("hourly")) == 1, 10, message="the one job the hour allows")
    time.sleep(0.3)  # its ack
    before = _calls(r)
    time.sleep(2.0)
    spent = _calls(r) - before
    # Four jobs wait an hour: the pool sleeps until then (or its 30 s poll), not spins.
    assert spent <= 2, f"{spent} script calls in 2 s while a limited name waited"
    assert len(seen.of("hourly")) == 1
    assert r.llen(pool.keys.queue("hourly")) == 4


def test_two_pools_share_one_limit(redis_url: str, pools: list) -> None:
    seen = Starts(redis_url)
    for _ in range(2):
        pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=30.0))
        pool.register("shared", seen.add, forkq.JobOptions(rate_limit="10/s", max_concurrency=3))
        start(pools, pool, redis_url, concurrency=4)
    forkq.Enqueuer(redis_url, NS).enqueue_many("shared", [{"i": i} for i in range(40)])
    wait_for(lambda: len(seen.of("shared")) == 40, 20, message="40 jobs over two pools")
    assert max_in_window(seen.of("shared"), 1.0) <= 10 + 10 + 1


RATE_JOBS = '''
@pool.job(rate_limit="40/s")
def limited(job):
    r = R()
    s, us = r.time()
    r.hset("test:starts_at", job.id + ":" + str(os.getpid()) + ":" + str(time.monotonic()), s + us / 1e6)
    _pause(0.02)
    r.hincrby("test:runs", job.id, 1)
'''


@pytest.mark.slow
def test_the_limit_holds_while_children_are_killed(tmp_path, redis_url: str, r: redis.Redis,
                                                   forkqs: list, chaos) -> None:
    mod = write_jobs(tmp_path, RATE_JOBS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"])
    wait_children_ready(f, r, 2)
    e = forkq.Enqueuer(redis_url, MNS)
    jids = [j.id for j in e.enqueue_many("limited", [{"i": i} for i in range(240)])]
    e.close()
    killer = chaos(f, every=0.4, seed=3, max_kills=6)

    def done() -> bool:
        assert f.proc.poll() is None, f.log()[-3000:]
        got = r.hgetall("test:runs")
        return all(j.encode() in got for j in jids)

    wait_for(done, 60, interval=0.1, message="240 rate-limited jobs under kills")
    kills = killer.stop()
    starts = [float(v) for v in r.hvals("test:starts_at")]
    worst = max_in_window(starts, 1.0)
    print(f"\nrate 40/s under {kills} kills: {len(starts)} starts for 240 jobs, "
          f"at most {worst} in any 1 s window, spread {max(starts) - min(starts):.2f}s")
    assert worst <= 40 + 40 + 1
    assert kills >= 3
    assert f.stop() == 0


def test_forkq_queues_and_the_client_show_the_limits_live_pools_declare(
        redis_url: str, pools: list, r: redis.Redis) -> None:
    import io

    from forkq.admin_cli import run as cli

    gate = threading.Event()
    pool = forkq.WorkerPool(NS, config=forkq.Config(idle_poll_interval=0.2))
    pool.register("capped", lambda job: gate.wait(10), forkq.JobOptions(max_concurrency=2, rate_limit="50/m"))
    pool.register("plain", lambda job: None)
    e = pool.enqueuer(redis_url)
    e.enqueue_many("capped", [{"i": i} for i in range(3)])
    e.enqueue("plain")
    start(pools, pool, redis_url, concurrency=4)
    try:
        c = forkq.Client(redis_url, NS)
        wait_for(lambda: next(q for q in c.queues() if q.job_name == "capped").running == 1, 10,
                 message="one capped job running (50/m spreads them: one per 1.2 s)")
        q = {x.job_name: x for x in c.queues()}
        assert (q["capped"].max_concurrency, q["capped"].rate_limit) == (2, "50/m")
        assert (q["plain"].max_concurrency, q["plain"].rate_limit, q["plain"].running) == (0, None, 0)
        out, err = io.StringIO(), io.StringIO()
        assert cli(["queues", "--redis", redis_url, "-n", NS], out, err) == 0, err.getvalue()
        line = next(x for x in out.getvalue().splitlines() if x.startswith("capped"))
        assert "max 2 (1 running), 50/m" in line
        # A pool info written by someone else, with junk limits: shown as none, no error.
        r.hset(pool.keys.process("intruder:1:x"), mapping={
            "beat": "1", "info": b'{"queues":["junk"],"limits":{"junk":{"max_concurrency":"lots"}}}'})
        r.sadd(pool.keys.processes, "intruder:1:x")
        r.sadd(pool.keys.queues, "junk")
        assert next(x for x in c.queues() if x.job_name == "junk").max_concurrency == 0
    finally:
        gate.set()
        r.srem(pool.keys.processes, "intruder:1:x")
        r.delete(pool.keys.process("intruder:1:x"))


TWO_HOST_JOBS = '''
@pool.job(rate_limit="30/s")
def limited(job):
    r = R()
    s, us = r.time()
    r.rpush("test:rate_starts", s + us / 1e6)
    r.hset("test:pids", job.id, os.getpid())
    r.hincrby("test:runs", job.id, 1)
'''


@pytest.mark.slow
def test_two_masters_on_one_redis_share_the_limit(tmp_path, redis_url: str, r: redis.Redis,
                                                  forkqs: list) -> None:
    mod = write_jobs(tmp_path, TWO_HOST_JOBS)
    masters = [start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"],
                           env={"FORKQ_HOSTNAME": host}, tag=host) for host in ("host-a", "host-b")]
    for f in masters:
        wait_children_ready(f, r, 2)
    e = forkq.Enqueuer(redis_url, MNS)
    jids = [j.id for j in e.enqueue_many("limited", [{"i": i} for i in range(150)])]
    e.close()
    wait_for(lambda: r.hlen("test:runs") >= 150, 60, interval=0.1, message="150 jobs over two masters")
    starts = [float(x) for x in r.lrange("test:rate_starts", 0, -1)]
    assert max_in_window(starts, 1.0) <= 30 + 30 + 1
    assert max(starts) - min(starts) >= (150 - 30) / 30 - 0.3  # the rate, not faster
    pids = {int(p) for p in r.hvals("test:pids")}
    assert all(pids & f.child_pids() for f in masters), "both masters ran some"
    assert set(r.hkeys("test:runs")) == {j.encode() for j in jids}
    for f in masters:
        assert f.stop() == 0

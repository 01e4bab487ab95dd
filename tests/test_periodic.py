"""Periodic (cron) jobs: spec validation, occurrence math, and exactly-once enqueueing
across pools in separate processes, restarts and skewed clocks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis_server import wait_for

import forkq
from forkq import cron, scheduler
from forkq import job as jobcodec
from forkq.keys import Keys
from forkq.spec import PeriodicSpec

NS = "per"


# -- registration: bad specs are rejected with a clear message ----------------------

@pytest.mark.parametrize(("spec", "message"), [
    ("* * * * *", "need 6 fields, seconds first"),
    ("* * * * * * *", "need 6 fields, seconds first"),
    ("garbage", "need 6 fields"),
    ("", "need 6 fields"),
    ("a b c d e f", "seconds field 'a'"),
    ("61 * * * * *", "seconds field '61'"),
    ("*/0 * * * * *", "seconds field '*/0'"),
    ("0 60 * * * *", "minutes field '60'"),
    ("0 0 24 * * *", "hours field '24'"),
    ("0 0 0 0 * *", "day of month field '0'"),
    ("0 0 0 32 * *", "day of month field '32'"),
    ("0 0 0 * 13 *", "month field '13'"),
    ("0 0 0 * * 8", "day of week field '8'"),
    ("0 0 0 31 2 *", "never fires"),
])
def test_bad_cron_spec_is_rejected_at_registration_naming_the_problem(spec: str, message: str) -> None:
    pool = forkq.WorkerPool(NS)
    with pytest.raises(forkq.ConfigError, match=re.escape(message)) as info:
        pool.periodically_enqueue(spec, "tick")
    assert repr(spec) in str(info.value)
    assert "\n" not in str(info.value)
    assert pool.periodic == []


def test_non_string_cron_spec_is_rejected() -> None:
    with pytest.raises(forkq.ConfigError, match="must be a string"):
        forkq.WorkerPool(NS).periodically_enqueue(5, "tick")  # type: ignore[arg-type]


def test_periodic_job_name_is_validated() -> None:
    with pytest.raises(forkq.ConfigError, match="forbidden characters"):
        forkq.WorkerPool(NS).periodically_enqueue("* * * * * *", "bad{name}")


@pytest.mark.parametrize("spec", ["* * * * * *", "0 */5 * * * *", "30 0 12 * * mon-fri",
                                  "0 0 0 29 2 *", "0,30 * * * jan-mar *"])
def test_good_cron_specs_are_registered(spec: str) -> None:
    pool = forkq.WorkerPool(NS)
    pool.periodically_enqueue(spec, "tick")
    assert pool.periodic == [PeriodicSpec(spec=spec, name="tick")]


# -- occurrence math: seconds are the FIRST field, interval is (start, end] ---------------

def test_occurrences_take_seconds_as_first_field() -> None:
    assert cron.occurrences("*/5 * * * * *", 0, 20) == [5, 10, 15, 20]
    # "0 */5 ..." is every 5 minutes at second 0, not every 5 seconds.
    assert cron.occurrences("0 */5 * * * *", 0, 1200) == [300, 600, 900, 1200]
    # 12:00:30 UTC daily.
    assert cron.occurrences("30 0 12 * * *", 0, 3 * 86400) == [43230, 129630, 216030]


def test_occurrences_exclude_start_include_end_and_ignore_fractions() -> None:
    assert cron.occurrences("* * * * * *", 100, 103) == [101, 102, 103]
    assert cron.occurrences("* * * * * *", 100.5, 103.2) == [101, 102, 103]
    assert cron.occurrences("* * * * * *", 100, 100) == []


def test_leap_day_spec_fires_only_on_leap_years() -> None:
    # 2024-01-01 .. 2029-01-01 UTC: one Feb 29 (2024) ... and 2028.
    start, end = 1704067200, 1861920000
    got = cron.occurrences("0 0 0 29 2 *", start, end)
    assert [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) for t in got] == [
        "2024-02-29 00:00:00", "2028-02-29 00:00:00"]


# -- schedule_periodic against Redis -----------------------------------------------------

def _scheduled(r: redis.Redis, keys: Keys) -> dict[str, float]:
    out: dict[str, float] = {}
    for member, score in r.zrange(keys.schedule, 0, -1, withscores=True):
        data = jobcodec.decode(member)
        assert data["jid"] not in out, f"occurrence {data['jid']} scheduled twice"
        out[data["jid"]] = score
    return out


def test_each_occurrence_is_scheduled_once_with_a_deterministic_jid(r: redis.Redis) -> None:
    keys = Keys(NS)
    specs = [PeriodicSpec(spec="*/10 * * * * *", name="tick")]
    t0 = 1_900_000_000  # a multiple of 10
    n = scheduler.schedule_periodic(r, keys, specs, now=t0, horizon=60)
    assert n == 7  # t0, t0+10, ..., t0+60
    sched = _scheduled(r, keys)
    assert sched == {f"periodic:tick:{t}": float(t) for t in range(t0, t0 + 61, 10)}
    member = r.zrange(keys.schedule, 0, 0)[0]
    data = jobcodec.decode(member)
    assert data["class"] == "tick" and data["queue"] == "tick" and data["args"] == [{}]
    # A second pool (or a restart) at the same time adds nothing.
    assert scheduler.schedule_periodic(r, keys, specs, now=t0, horizon=60) == 0
    assert len(_scheduled(r, keys)) == 7


def test_skewed_clocks_schedule_only_new_occurrences(r: redis.Redis) -> None:
    keys = Keys(NS)
    specs = [PeriodicSpec(spec="* * * * * *", name="tick")]
    t0 = 1_900_000_000
    assert scheduler.schedule_periodic(r, keys, specs, now=t0, horizon=30) == 31  # t0 .. t0+30
    # A pool whose clock is 3 s ahead adds only the 3 occurrences past the first horizon.
    assert scheduler.schedule_periodic(r, keys, specs, now=t0 + 3, horizon=30) == 3
    # A pool 3 s behind adds only the 3 occurrences before the first window.
    assert scheduler.schedule_periodic(r, keys, specs, now=t0 - 3, horizon=30) == 3
    sched = _scheduled(r, keys)
    assert sorted(sched.values()) == [float(t) for t in range(t0 - 3, t0 + 34)]


def test_a_lagging_clock_does_not_reschedule_an_occurrence_that_already_ran(
        r: redis.Redis, redis_url: str, fast_config: forkq.Config, pools: list[forkq.WorkerPool]) -> None:
    """The guard outlives the run, unlike a unique job's guard."""
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job
    def tick(job: forkq.Job) -> None:
        r.hincrby("test:runs", job.id, 1)

    pool.periodically_enqueue("* * * * * *", "tick")
    pools.append(pool.start(redis_url, concurrency=2))
    wait_for(lambda: r.hlen("test:runs") >= 2, timeout=15, message="two occurrences to run")
    ran = sorted(int(k.decode().rsplit(":", 1)[1]) for k in r.hkeys("test:runs"))
    # A pool whose clock lags (it reads the first run's second as "now") sees the
    # occurrences that already ran as upcoming; their guards still refuse them.
    again = scheduler.schedule_periodic(r, pool.keys, pool.periodic, now=ran[0] + 0.5, horizon=5)
    assert again == 0
    pool.stop(timeout=2)
    runs = {k.decode(): int(v) for k, v in r.hgetall("test:runs").items()}
    assert set(runs.values()) == {1}, runs


# -- several pools in separate processes -----------------------------------------------

CHILD = r'''
import os, signal, sys, threading, time
skew = float(sys.argv[3])
if skew:
    _real = time.time
    time.time = lambda: _real() + skew  # this process's clock is off by `skew` seconds
import redis
import forkq

url, ns, label = sys.argv[1], sys.argv[2], sys.argv[4]
rec = redis.Redis.from_url(url)
config = forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2, stale_after=3.0,
                      lease_ttl=5.0, shutdown_timeout=5.0)
pool = forkq.WorkerPool(ns, config=config)

@pool.job
def tick(job):
    rec.hincrby("test:runs", job.id, 1)
    rec.hset("test:who", job.id, label)

pool.periodically_enqueue("* * * * * *", "tick")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
pool.start(url, concurrency=2)
rec.sadd("test:started", label)
stop.wait()
pool.stop(timeout=3)
rec.sadd("test:stopped", label)
'''


class Children:
    def __init__(self, url: str) -> None:
        self.url = url
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, label: str, skew: float = 0.0) -> None:
        self.procs[label] = subprocess.Popen(
            [sys.executable, "-c", CHILD, self.url, NS, str(skew), label],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})

    def stop(self, label: str) -> None:
        p = self.procs.pop(label)
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0, f"pool {label} exited with {p.returncode}"

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)


@pytest.fixture
def children(redis_url: str) -> Iterator[Children]:
    c = Children(redis_url)
    yield c
    c.kill_all()


@pytest.mark.slow
def test_three_pool_processes_run_each_periodic_occurrence_exactly_once(
        r: redis.Redis, children: Children) -> None:
    """Three pools (one with its clock 3 s ahead, one 2 s behind), one restarted mid-way,
    plus extra scheduling calls with skewed clocks: every second runs exactly once."""
    keys = Keys(NS)
    children.start("ahead", skew=3.0)
    children.start("behind", skew=-2.0)
    children.start("plain")
    wait_for(lambda: r.scard("test:started") == 3, timeout=30, message="three pools to start")
    wait_for(lambda: r.scard(keys.processes) == 3, timeout=10, message="three live pools")
    all_started = time.time()
    wait_for(lambda: r.hlen("test:runs") >= 5 and time.time() > all_started + 2, timeout=15,
             message="five occurrences")

    # A fourth "pool" with clocks 3 s ahead and 3 s behind schedules again: every
    # occurrence in its window was scheduled by a running pool already (the pool
    # 2 s behind started before `all_started`), so the guards refuse them all,
    # including the ones that already ran.
    specs = [PeriodicSpec(spec="* * * * * *", name="tick")]
    now = time.time()
    assert scheduler.schedule_periodic(r, keys, specs, now=now + 3, horizon=60) == 0
    assert scheduler.schedule_periodic(r, keys, specs, now=now - 3, horizon=60) == 0

    # Restart one pool mid-way (graceful stop, then a new process).
    children.stop("plain")
    children.start("plain")
    wait_for(lambda: r.scard("test:started") == 3 and r.scard("test:stopped") == 1
             and r.hlen("test:runs") >= 15, timeout=40, message="fifteen occurrences")
    for label in ("ahead", "behind", "plain"):
        children.stop(label)
    who = [v.decode() for v in r.hvals("test:who")]
    print("occurrences run per pool:", {w: who.count(w) for w in set(who)})

    runs = {k.decode(): int(v) for k, v in r.hgetall("test:runs").items()}
    epochs = sorted(int(jid.rsplit(":", 1)[1]) for jid in runs)
    assert all(jid.startswith("periodic:tick:") for jid in runs)
    assert {jid: n for jid, n in runs.items() if n != 1} == {}, "occurrences that ran more than once"
    # No occurrence was skipped between the first and the last one that ran.
    assert epochs == list(range(epochs[0], epochs[-1] + 1))
    assert 15 <= len(epochs) <= 40
    # Nothing left running or in progress; the remaining occurrences wait in schedule.
    assert r.keys(f"{keys.prefix}inprogress:*") == [] or all(
        r.hlen(k) == 0 for k in r.keys(f"{keys.prefix}inprogress:*"))
    remaining = _scheduled(r, keys)
    assert not set(remaining) & set(runs), "an occurrence that ran is still scheduled"


# -- the real prefork master: two "hosts" with two children each ------------------------

MASTER_JOBS = """
import os
import redis
import forkq

pool = forkq.WorkerPool(namespace="NAMESPACE")
_conns = {}


def R():
    c = _conns.get(os.getpid())
    if c is None:  # one connection per forked child
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    return c


@pool.job
def tick(job):
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:who", job.id, os.getpid())
    p.execute()


pool.periodically_enqueue("* * * * * *", "tick")
""".replace("NAMESPACE", NS)


class Master:
    """``python -m forkq -p 2 -c 2 periodic_jobs`` in its own session."""

    def __init__(self, tmp_path: Path, url: str, tag: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
               "TEST_REDIS_URL": url, "FORKQ_HEARTBEAT_INTERVAL": "0.5",
               "FORKQ_IDLE_POLL_INTERVAL": "0.2", "FORKQ_STALE_AFTER": "30", "FORKQ_LOG_LEVEL": "WARNING"}
        self.log = open(tmp_path / f"master-{tag}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "forkq", "-p", "2", "-c", "2", "--redis", url,
                                      "periodic_jobs"], cwd=tmp_path, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def child_pids(self) -> set[int]:
        try:
            return {c.pid for c in psutil.Process(self.proc.pid).children()}
        except psutil.NoSuchProcess:
            return set()

    def kill(self) -> None:
        if self.proc.poll() is None:
            for p in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children()]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def masters() -> Iterator[list[Master]]:
    started: list[Master] = []
    yield started
    for m in started:
        m.kill()


@pytest.mark.slow
def test_two_prefork_masters_run_each_periodic_occurrence_once_across_a_rolling_restart(
        tmp_path: Path, redis_url: str, r: redis.Redis, masters: list[Master]) -> None:
    """Four pools (2 masters x 2 children) each pre-schedule the same occurrences; a HUP
    rolls one master's children mid-way (new pools schedule again)."""
    keys = Keys(NS)
    (tmp_path / "periodic_jobs.py").write_text(MASTER_JOBS)
    a, b = Master(tmp_path, redis_url, "a"), Master(tmp_path, redis_url, "b")
    masters += [a, b]
    wait_for(lambda: r.scard(keys.processes) == 4, timeout=60, interval=0.05, message="four live pools")
    wait_for(lambda: r.hlen("test:runs") >= 4, timeout=20, message="first occurrences")
    old = a.child_pids()
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(a.child_pids()) == 2 and not (a.child_pids() & old), timeout=60,
             interval=0.05, message="master a to roll both children")
    start_new = r.hlen("test:runs")
    wait_for(lambda: r.hlen("test:runs") >= max(10, start_new + 4), timeout=30,
             message="occurrences after the HUP")
    for m in (a, b):
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(30) == 0
    runs = {k.decode(): int(v) for k, v in r.hgetall("test:runs").items()}
    assert {jid: n for jid, n in runs.items() if n != 1} == {}, "occurrences that ran more than once"
    epochs = sorted(int(jid.rsplit(":", 1)[1]) for jid in runs)
    assert epochs == list(range(epochs[0], epochs[-1] + 1)), "an occurrence was skipped"
    assert len(epochs) >= 10
    pids = {int(p) for p in r.hvals("test:who")}
    print(f"{len(epochs)} occurrences run by {len(pids)} children")
    assert not set(_scheduled(r, keys)) & set(runs)

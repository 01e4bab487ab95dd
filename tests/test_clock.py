"""One clock, Redis's (issue 9): real masters, real children, a time shim, real kills.

A host whose wall clock is off is simulated by ``tests/timeshim/timeshim.c``,
LD_PRELOADed into that master's process tree only: it moves CLOCK_REALTIME
(``time.time()``) and leaves CLOCK_MONOTONIC and every sleep alone.  (Debian's
libfaketime 0.9.10 breaks Python's sleeps and waits; see the shim's header.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from redis_server import RedisServer, wait_for
from test_master import (
    KEYS,
    NS,
    ForkqProc,
    forkq_procs,
    identity_of,
    inprogress_total,
    runs,
    start_forkq,
    wait_all_done,
    wait_children_ready,
    write_jobs,
)

import forkq
from forkq import clock

SHIM_SRC = Path(__file__).resolve().parent / "timeshim" / "timeshim.c"

# Beats every 0.5 s, stale after 3 s: reapers judge often during these tests.
LIVE_ENV = {"FORKQ_STALE_AFTER": "3", "FORKQ_LEASE_TTL": "5", "FORKQ_HEARTBEAT_INTERVAL": "0.5"}

JOBS = '''
import ctypes


def _mono_pause(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.02)


def _redis_time():
    s, us = R().time()
    return s + us / 1e6


@pool.job(max_concurrency=2)
def limited(job):
    r = R()
    now = r.incr("test:running")
    r.eval("if tonumber(redis.call('GET', KEYS[1]) or 0) < tonumber(ARGV[1]) then "
           "redis.call('SET', KEYS[1], ARGV[1]) end", 1, "test:max_running", now)
    _mono_pause(job.arg_float("s"))
    r.decr("test:running")
    r.hincrby("test:runs", job.id, 1)


@pool.job
def stamped(job):
    R().hset("test:started_at", job.id, repr(_redis_time()))
    R().hincrby("test:runs", job.id, 1)


@pool.job
def tick(job):
    R().hset("test:started_at", job.id, repr(_redis_time()))
    R().hincrby("test:ticks", job.id, 1)


@pool.job(timeout=6)
def timed(job):
    R().hincrby("test:starts", job.id, 1)
    _mono_pause(job.arg_float("s"))
    R().hincrby("test:runs", job.id, 1)


@pool.job
def gil(job):
    R().hincrby("test:starts", job.id, 1)
    # libc sleep() through PyDLL keeps the GIL: no other thread of this process runs.
    ctypes.PyDLL(None).sleep(int(job.arg_float("s")))
    R().hincrby("test:runs", job.id, 1)


pool.periodically_enqueue("* * * * * *", "tick")
'''


@pytest.fixture
def forkqs() -> Iterator[list[ForkqProc]]:
    yield from forkq_procs()


@pytest.fixture(scope="session")
def timeshim(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("timeshim") / "timeshim.so"
    cc = os.environ.get("CC", "cc")
    res = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(SHIM_SRC), "-ldl"],
                         capture_output=True, text=True)
    assert res.returncode == 0, f"building the time shim failed (scripts/test.sh installs gcc):\n{res.stderr}"
    return str(out)


def shim_env(shim: str, *, offset: float | None = None, file: Path | None = None) -> dict[str, str]:
    env = {"LD_PRELOAD": shim}
    if offset is not None:
        env["FORKQ_TIMESHIM_OFFSET"] = repr(offset)
    if file is not None:
        env["FORKQ_TIMESHIM_FILE"] = str(file)
    return env


def redis_now(r: redis.Redis) -> float:
    return clock.parse_time(r.time())


def test_the_shim_moves_only_the_wall_clock(timeshim: str) -> None:
    code = ("import time,threading;t=time.monotonic();time.sleep(0.1);threading.Event().wait(0.1);"
            "print(time.time(), time.monotonic()-t)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **shim_env(timeshim, offset=-120)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert abs(float(out[0]) - (time.time() - 120)) < 5
    assert 0.2 <= float(out[1]) < 2


@pytest.mark.slow
@pytest.mark.parametrize("offset", [120.0, -120.0])
def test_a_host_whose_clock_is_two_minutes_off_breaks_nothing(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                              forkqs: list[ForkqProc], timeshim: str,
                                                              offset: float) -> None:
    """No live pool reaped, no lease dropped (max_concurrency held), scheduled jobs not
    early, each periodic occurrence once: before, a host 70 s ahead reaped a live pool at
    start, dropped its leases (a limit of 3 ran 6) and ran a +60 s job after 11 s."""
    mod = write_jobs(tmp_path, JOBS)
    good = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "4"], env=LIVE_ENV, tag="good")
    wait_children_ready(good, r, 1)
    bad = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "4"],
                      env={**LIVE_ENV, **shim_env(timeshim, offset=offset)}, tag="bad")
    wait_children_ready(bad, r, 1)
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        limited = [j.id for j in enq.enqueue_many("limited", [{"s": 0.4}] * 16)]
        scheduled = [enq.enqueue_in("stamped", d) for d in (1.0, 2.0, 3.0)]
    finally:
        enq.close()
    done = wait_all_done(r, limited + [s.job.id for s in scheduled], good, timeout=60)
    time.sleep(2.0)  # several more reaper judgements and periodic ticks on both hosts
    assert all(done[j] == 1 for j in limited), done
    assert int(r.get("test:max_running") or 0) <= 2
    started = {k.decode(): float(v) for k, v in r.hgetall("test:started_at").items()}
    for s in scheduled:
        assert started[s.job.id] >= s.run_at, (s.run_at, started[s.job.id])
    ticks = {k.decode(): int(v) for k, v in r.hgetall("test:ticks").items()}
    assert len(ticks) >= 3 and set(ticks.values()) == {1}, ticks
    for jid in ticks:
        assert started[jid] >= int(jid.rsplit(":", 1)[1]), jid
    logs = good.log() + bad.log()
    assert "reaped pool" not in logs and "recovered the jobs" not in logs, logs[-3000:]
    assert r.zcard(KEYS.pools) == 2
    assert good.stop() == 0 and bad.stop() == 0


def test_a_wall_clock_step_during_running_jobs_changes_no_timeout(tmp_path: Path, redis_url: str,
                                                                  r: redis.Redis, forkqs: list[ForkqProc],
                                                                  timeshim: str) -> None:
    """Before, a +400 s step made jobs with timeout=300 raise JobTimeout after 2 s."""
    mod = write_jobs(tmp_path, JOBS)
    step = tmp_path / "offset"
    step.write_text("0\n")
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "4"],
                    env={**LIVE_ENV, **shim_env(timeshim, file=step)})
    wait_children_ready(f, r, 1)
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        jids = [j.id for j in enq.enqueue_many("timed", [{"s": 2.0}] * 4)]
    finally:
        enq.close()
    wait_for(lambda: len(runs(r, "test:starts")) == 4, timeout=20, message="all four running")
    step.write_text("400\n")  # +400 s on this host's wall clock, jobs half done
    done = wait_all_done(r, jids, f, timeout=30)
    assert all(v == 1 for v in done.values())
    assert r.zcard(KEYS.retry) == 0 and r.zcard(KEYS.dead) == 0
    assert "JobTimeout" not in f.log() and "timeout" not in f.log().lower().replace("shutdown-timeout", "")
    assert f.stop() == 0


@pytest.mark.slow
def test_a_job_holding_the_gil_for_longer_than_stale_after_is_not_reaped(tmp_path: Path, redis_url: str,
                                                                        r: redis.Redis,
                                                                        forkqs: list[ForkqProc]) -> None:
    """The child's own beat thread is frozen; its master beats for it (heartbeat.py).

    ``stale_after`` 6 s: the master notices a child that sent no status report for
    3 s; the GIL is held 10 s."""
    env = {**LIVE_ENV, "FORKQ_STALE_AFTER": "6", "FORKQ_LEASE_TTL": "8"}
    mod = write_jobs(tmp_path, JOBS)
    a = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"], env=env, tag="a")
    wait_children_ready(a, r, 1)
    b = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"], env=env, tag="b")
    wait_children_ready(b, r, 1)
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        jids = [j.id for j in enq.enqueue_many("gil", [{"s": 10}] * 2)]
    finally:
        enq.close()
    done = wait_all_done(r, jids, a, timeout=40)
    assert all(v == 1 for v in done.values())
    assert all(v == 1 for v in runs(r, "test:starts").values())
    assert "reaped pool" not in a.log() + b.log()
    assert a.stop() == 0 and b.stop() == 0


def _kill_host(f: ForkqProc) -> None:
    procs = [psutil.Process(f.pid), *f.children()]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    f.proc.wait(10)


@pytest.mark.slow
def test_whole_host_killed_its_jobs_come_back_within_stale_after_plus_a_few_seconds(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, JOBS)
    victim = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"], env=LIVE_ENV, tag="v")
    (pid,) = wait_children_ready(victim, r, 1)
    ident = identity_of(r, pid)
    enq = forkq.Enqueuer(redis_url, NS)
    try:
        jids = [j.id for j in enq.enqueue_many("slow", [{"s": 1.0}] * 2)]
    finally:
        enq.close()
    wait_for(lambda: r.hlen(KEYS.inprogress(ident)) == 2, timeout=20, message="victim holds both jobs")
    survivor = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"], env=LIVE_ENV, tag="s")
    wait_children_ready(survivor, r, 1)
    _kill_host(victim)
    killed = time.monotonic()
    wait_for(lambda: r.hlen(KEYS.inprogress(ident)) == 0, timeout=30, message="victim's jobs requeued")
    took = time.monotonic() - killed
    assert took < 3.0 + 4.0, took  # stale_after 3 s + beat interval + scheduling slack
    done = wait_all_done(r, jids, survivor, timeout=30)
    assert all(v == 1 for v in done.values())
    # The survivor's acks of plain successes may wait for a fetch (ACK_WINDOW, 20 ms).
    wait_for(lambda: inprogress_total(r) == 0, timeout=5, message="the survivor acked both")
    assert survivor.stop() == 0


@pytest.mark.slow
def test_a_redis_stall_longer_than_stale_after_reaps_no_live_pool(tmp_path: Path, forkqs: list[ForkqProc]) -> None:
    server = RedisServer().start()
    try:
        url = server.url
        r = server.client()
        mod = write_jobs(tmp_path, JOBS)
        a = start_forkq(forkqs, tmp_path, url, mod, ["-p", "2", "-c", "2"], env=LIVE_ENV, tag="a")
        wait_children_ready(a, r, 2)
        enq = forkq.Enqueuer(url, NS)
        try:
            jids = [j.id for j in enq.enqueue_many("slow", [{"s": 3.0}] * 4)]
        finally:
            enq.close()
        wait_for(lambda: len(runs(r, "test:starts")) == 4, timeout=20, message="all four running")
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        time.sleep(5.0)  # longer than stale_after: every beat is old when Redis comes back
        os.kill(server.proc.pid, signal.SIGCONT)
        done = wait_all_done(r, jids, a, timeout=60)
        time.sleep(4.0)  # a full stale_after of judgements after the stall
        assert all(v == 1 for v in done.values())
        assert all(v == 1 for v in runs(r, "test:starts").values())
        assert "reaped pool" not in a.log()
        assert a.stop() == 0
        r.close()
    finally:
        server.cleanup()


def test_liveness_settings_that_cannot_work_are_refused_in_one_line(tmp_path: Path, redis_url: str) -> None:
    for kwargs, word in (({"lease_ttl": 2.0}, "lease_ttl"), ({"stale_after": 6.0}, "stale_after"),
                         ({"heartbeat_interval": 0.0}, "heartbeat_interval")):
        with pytest.raises(forkq.ConfigError, match=word) as info:
            forkq.Config(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    mod = write_jobs(tmp_path, JOBS)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FORKQ_LEASE_TTL": "2", "FORKQ_HEARTBEAT_INTERVAL": "5"}
    res = subprocess.run([sys.executable, "-m", "forkq", "--redis", redis_url, mod], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "lease_ttl" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1, res.stderr

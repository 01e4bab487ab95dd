"""Children replaced on purpose: recycling by job count and by memory, hard timeouts,
and jobs that kill their process (the poison cap)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import psutil
import redis
from procs import (
    KEYS,
    ForkqProc,
    enqueue,
    inprogress_total,
    runs,
    start_forkq,
    wait_all_done,
    wait_children_ready,
    write_jobs,
)
from redis_server import wait_for


def test_children_are_recycled_after_max_jobs_and_no_job_is_lost(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod,
                    ["-p", "2", "-c", "2", "--max-jobs-per-child", "40"])
    first = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 0.03}] * 300)  # ~2 s: several recycles, 1 s apart
    most = 0

    def all_done() -> bool:
        nonlocal most
        most = max(most, len(f.child_pids()))
        return len(runs(r)) == len(jids)

    wait_for(all_done, timeout=60, interval=0.005, message="300 jobs done")
    # One at a time: never more than one child draining next to the two active ones.
    assert most <= 3, most
    done = runs(r)
    assert all(v == 1 for v in done.values())
    pids = {int(p) for p in r.hvals("test:pids")}
    # Without recycling 2 children would do all 300; with a limit of ~40 (a child keeps
    # working until its replacement is up, so a few more) it takes several generations.
    assert len(pids) >= 4, pids
    assert not (f.child_pids() & first)
    assert "recycling child" in f.log()
    wait_children_ready(f, r, 2)
    assert f.stop() == 0
    assert inprogress_total(r) == 0


HOG = '''
_hoard = []


@pool.job
def hog(job):
    _hoard.append(bytearray(job.arg_int("mb") * 1024 * 1024))
    R().hset("test:hog", job.id, os.getpid())
    R().hincrby("test:runs", job.id, 1)
'''


def test_child_above_max_memory_is_recycled(tmp_path: Path, redis_url: str, r: redis.Redis,
                                            forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, HOG)
    f = start_forkq(forkqs, tmp_path, redis_url, mod,
                    ["-p", "1", "-c", "2", "--max-memory-per-child", "150"])
    (pid,) = wait_children_ready(f, r, 1)
    assert psutil.Process(pid).memory_info().rss < 150 * 1024 * 1024
    jids = enqueue(redis_url, "hog", [{"mb": 200}])
    wait_all_done(r, jids, f)
    assert int(r.hget("test:hog", jids[0]) or 0) == pid
    wait_for(lambda: f.child_pids() and pid not in f.child_pids(), timeout=30, message="hog recycled")
    (new,) = wait_children_ready(f, r, 1)
    assert psutil.Process(new).memory_info().rss < 150 * 1024 * 1024
    later = enqueue(redis_url, "record", [{}] * 10)
    wait_all_done(r, later, f)
    assert "RSS" in f.log()
    assert f.stop() == 0


STUCK = '''
@pool.job(timeout=1)
def stuck(job):
    R().hincrby("test:starts", job.id, 1)
    time.sleep(120)  # in C: the soft JobTimeout cannot land until it returns
    R().hincrby("test:runs", job.id, 1)
'''


def test_job_past_its_hard_timeout_fails_and_its_child_is_replaced(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, STUCK)
    f = start_forkq(forkqs, tmp_path, redis_url, mod,
                    ["-p", "1", "-c", "3", "--shutdown-timeout", "0.5"],
                    env={"FORKQ_HARD_TIMEOUT_GRACE": "1"})
    (pid,) = wait_children_ready(f, r, 1)
    sibling = enqueue(redis_url, "slow", [{"s": 4.0}])
    wait_for(lambda: runs(r, "test:starts"), timeout=20, message="sibling running")
    (stuck,) = enqueue(redis_url, "stuck", [{}])
    wait_for(lambda: r.zcard(KEYS.retry) == 1, timeout=30, message="stuck job in retry")
    (entry,) = r.zrange(KEYS.retry, 0, -1)
    data = orjson.loads(entry)
    assert data["jid"] == stuck
    assert data["error_class"] == "JobTimeout" and "hard timeout" in data["error_message"]
    assert data["retry_count"] == 0
    wait_for(lambda: f.child_pids() and pid not in f.child_pids(), timeout=30, message="child replaced")
    # The sibling was interrupted by the replacement and requeued, not failed: it runs again.
    done = wait_all_done(r, sibling, f)
    assert done[sibling[0]] == 1
    assert runs(r, "test:starts")[sibling[0]] == 2
    assert r.zcard(KEYS.dead) == 0 and r.zcard(KEYS.retry) == 1
    assert f.stop() == 0
    assert inprogress_total(r) == 0


CRASH = '''
import signal


@pool.job
def crash(job):
    R().hincrby("test:starts", job.id, 1)
    # A crash (SIGABRT) is blamed on the job at once; a SIGKILL from anywhere has a
    # higher bar (test_hostile_payloads.py::test_a_job_that_sigkills_its_own_child_...).
    os.kill(os.getpid(), signal.SIGABRT)
'''


def test_job_that_keeps_killing_its_child_goes_to_dead_as_poison(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, CRASH)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_children_ready(f, r, 1)
    (jid,) = enqueue(redis_url, "crash", [{}])
    wait_for(lambda: r.zcard(KEYS.dead) == 1, timeout=60, message="poison job in dead")
    data = orjson.loads(r.zrange(KEYS.dead, 0, -1)[0])
    assert data["jid"] == jid and data["error_class"] == "Poison"
    # Recovered 3 times (run 4 times); the 4th recovery buries it.
    assert runs(r, "test:starts")[jid] == 4
    assert r.llen(KEYS.queue("crash")) == 0
    # The master is still up with a fresh child and keeps working.
    later = enqueue(redis_url, "record", [{}] * 5)
    wait_all_done(r, later, f)
    assert f.proc.poll() is None
    assert f.stop() == 0
    assert os.path.exists(f.log_path)


# A reporter that records every event in Redis, in order.
EVENTS_REPORTER = '''

class Events:
    def started(self, job):
        R().rpush("test:events", f"started:{job.id}")

    def success(self, job, duration):
        R().rpush("test:events", f"success:{job.id}")

    def failure(self, job, error, traceback):
        R().rpush("test:events", f"failure:{job.id}:{type(error).__name__}")

    def aborted(self, job, reason):
        R().rpush("test:events", f"aborted:{job.id}:{reason}")

    def stopped(self, job):
        R().rpush("test:events", f"stopped:{job.id}")


pool.reporter(Events())
'''

STUCK_REPORTED = STUCK + EVENTS_REPORTER


def test_hard_timeout_reports_aborted_timeout_then_stopped(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """The stuck thread never reports; the child does it for it before it is replaced."""
    mod = write_jobs(tmp_path, STUCK_REPORTED)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2", "--shutdown-timeout", "0.5"],
                    env={"FORKQ_HARD_TIMEOUT_GRACE": "1"})
    wait_children_ready(f, r, 1)
    (stuck,) = enqueue(redis_url, "stuck", [{}])
    wait_for(lambda: r.zcard(KEYS.retry) == 1, timeout=30, message="stuck job in retry")
    wait_for(lambda: len([e for e in r.lrange("test:events", 0, -1) if stuck in e.decode()]) >= 3,
             timeout=10, message="three events for the stuck job")
    events = [e.decode() for e in r.lrange("test:events", 0, -1) if stuck in e.decode()]
    assert events[:3] == [f"started:{stuck}", f"aborted:{stuck}:timeout", f"stopped:{stuck}"]
    assert f.stop() == 0


CRASH_REPORTED = CRASH + EVENTS_REPORTER


def test_poison_job_is_reported_aborted_poison_then_stopped(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """Its last child died with it, so the master tells the reporters."""
    mod = write_jobs(tmp_path, CRASH_REPORTED)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_children_ready(f, r, 1)
    (jid,) = enqueue(redis_url, "crash", [{}])
    wait_for(lambda: r.zcard(KEYS.dead) == 1, timeout=60, message="poison job in dead")

    def master_events() -> list[str]:
        # "started" comes from the child's reporter thread, which dies with the child a
        # moment later: how many arrive varies, and one the dying child had already
        # written to its socket can reach Redis after the master's two (CI saw aborted,
        # started, stopped).  And SIGABRT dumps core: until the thread the kernel gives
        # it to has done so, the job's own thread runs on, so a run can return and its
        # child report success and stopped before it dies (CI saw that "stopped" when
        # the job reached dead, before the master's two).  Those two come last, in order.
        return [e.decode() for e in r.lrange("test:events", 0, -1) if not e.startswith(b"started:")]

    try:
        wait_for(lambda: master_events()[-2:] == [f"aborted:{jid}:poison", f"stopped:{jid}"],
                 timeout=10, message="aborted(poison) then stopped")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; events: {master_events()}\n{f.log()[-4000:]}") from None
    events = master_events()
    assert events.count(f"aborted:{jid}:poison") == 1
    assert f.stop() == 0


def test_a_stale_pools_poison_job_is_reported_by_the_master_that_reaps_it(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """A host died with the job (its fourth death): the master that reaps that host's pool
    at its start buries the job and tells its own reporters, so the failure is not silent."""
    identity = "gonehost:7:poison"
    (jid,) = enqueue(redis_url, "crash", [{}])
    data = orjson.loads(r.rpop(KEYS.queue("crash")))
    data["recovered"] = 3  # --max-recoveries' default: this death is one too many
    r.hset(KEYS.inprogress(identity), jid, orjson.dumps(data))
    seconds, _ = r.time()
    r.zadd(KEYS.pools, {identity: seconds - 100})
    r.sadd(KEYS.processes, identity)
    mod = write_jobs(tmp_path, CRASH_REPORTED)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    wait_for(lambda: len(r.lrange("test:events", 0, -1)) >= 2, timeout=30, message="two events")
    assert [e.decode() for e in r.lrange("test:events", 0, -1)] == [f"aborted:{jid}:poison", f"stopped:{jid}"]
    dead = orjson.loads(r.zrange(KEYS.dead, 0, -1)[0])
    assert dead["jid"] == jid and dead["error_class"] == "Poison"
    assert runs(r, "test:starts") == {}  # buried, never run again
    assert f.stop() == 0


def test_children_reaching_their_job_limit_together_are_recycled_one_after_the_other(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    import time

    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod,
                    ["-p", "2", "-c", "2", "--max-jobs-per-child", "20"])
    first = wait_children_ready(f, r, 2)
    enqueue(redis_url, "record", [{}] * 200)   # both reach 20 within milliseconds
    gone_at: dict[int, float] = {}

    def both_gone() -> bool:
        now = time.monotonic()
        for pid in first - f.child_pids():
            gone_at.setdefault(pid, now)
        return len(gone_at) == 2

    wait_for(both_gone, timeout=30, interval=0.01, message="both first children recycled")
    a, b = sorted(gone_at.values())
    assert b - a >= 0.8, f"recycled {b - a:.3f}s apart"
    assert "recycling child" in f.log()

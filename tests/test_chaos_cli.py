"""Chaos through the real CLI: ``python -m forkq -p 2 -c 4 <module>`` as a subprocess,
children and masters SIGKILLed for real, handlers that hang, exit, segfault or leak.

Jobs record completions in ``test:runs`` (jid -> completed runs) and starts in
``test:starts``, outside the forkq namespace, so "lost" (a jid never completed
and not in dead) and "duplicates" (completions beyond one) are read from Redis.
The figures printed with ``-s`` are the ones in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis
from procs import (
    KEYS,
    ForkqProc,
    alive,
    dead_jids,
    enqueue,
    inprogress_total,
    runs,
    start_forkq,
    wait_children_ready,
    write_jobs,
)
from redis_server import wait_for

pytestmark = pytest.mark.slow


def wait_settled(r: redis.Redis, jids: list[str], f: ForkqProc | None, timeout: float) -> dict[str, int]:
    """Every jid completed or dead; nothing queued or held.  Returns completions."""
    want = set(jids)

    def check() -> tuple[dict[str, int]] | None:
        if f is not None and f.proc.poll() is not None:
            raise AssertionError(f"forkq exited with {f.proc.returncode}:\n{f.log()[-4000:]}")
        done = runs(r)
        if not want <= set(done) | set(dead_jids(r)):
            return None
        return (done,)  # a tuple: truthy even when nothing completed (all dead)

    return wait_for(check, timeout=timeout, interval=0.1, message=f"{len(jids)} jobs settled")[0]


def requeued_by_master(log: str) -> int:
    """Sum of "N jobs requeued" the master logged when it reaped killed children."""
    return sum(int(m) for m in re.findall(r": (\d+) jobs requeued, \d+ to dead", log))


def test_twenty_thousand_jobs_while_a_random_child_is_sigkilled_every_100ms(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc], chaos) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"],
                    env={"FORKQ_STALE_AFTER": "600", "FORKQ_LOG_LEVEL": "WARNING"})
    wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "record", [{"i": i} for i in range(20_000)])
    t0 = time.monotonic()
    want = set(jids)
    killer = chaos(f, every=0.1, seed=6)  # 20,000 no-op jobs take ~2.5 s now
    while len(runs(r)) < len(want) and time.monotonic() - t0 < 150:
        assert f.proc.poll() is None, f.log()[-4000:]
        time.sleep(0.1)
    kills = killer.stop()
    elapsed = time.monotonic() - t0
    done = wait_settled(r, jids, f, timeout=60)
    dead = dead_jids(r)
    lost = want - set(done) - set(dead)
    duplicates = sum(v - 1 for k, v in done.items() if k in want)
    wait_for(lambda: inprogress_total(r) == 0, timeout=30, message="in-progress empty")
    assert f.stop() == 0
    requeued = requeued_by_master(f.log())
    print(f"\nCHAOS-KILL: jobs={len(jids)} kills={kills} seconds={elapsed:.1f} lost={len(lost)} "
          f"duplicates={duplicates} requeued_at_kills={requeued} dead={len(dead)}")
    assert kills >= 10
    assert lost == set()
    # A job runs twice only if it was held by a killed child (requeued by the master).
    assert duplicates <= requeued
    assert r.llen(KEYS.queue("record")) == 0


LIMITED = '''


@pool.job(max_concurrency=3)
def limited(job):
    r = R()
    r.hincrby("test:starts", job.id, 1)
    time.sleep(0.01)
    p = r.pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:pids", job.id, os.getpid())
    p.execute()
'''


def test_leased_jobs_under_child_kills_lose_nothing_and_leave_no_lease_behind(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc], chaos) -> None:
    """max_concurrency leases of killed children are dropped by identity: no drift, no stall."""
    mod = write_jobs(tmp_path, LIMITED)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"],
                    env={"FORKQ_STALE_AFTER": "600", "FORKQ_LEASE_TTL": "600", "FORKQ_LOG_LEVEL": "WARNING"})
    wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "limited", [{"i": i} for i in range(2000)])
    max_leases = 0
    t0 = time.monotonic()
    killer = chaos(f, every=0.25, seed=7, max_kills=40)
    while len(runs(r)) < len(jids) and time.monotonic() - t0 < 120:
        max_leases = max(max_leases, r.zcard(KEYS.lease("limited")))
        time.sleep(0.05)
    kills = killer.stop()
    # With a 600 s lease TTL, only dropping leases by identity lets the queue finish.
    done = wait_settled(r, jids, f, timeout=60)
    lost = set(jids) - set(done) - set(dead_jids(r))
    assert lost == set()
    wait_for(lambda: r.zcard(KEYS.lease("limited")) == 0, timeout=10, message="no lease left")
    assert max_leases <= 3
    assert f.stop() == 0
    print(f"\nLEASED-KILL: jobs={len(jids)} kills={kills} lost={len(lost)} "
          f"duplicates={sum(v - 1 for v in done.values())} max_leases_seen={max_leases} leases_left=0")


def test_master_and_children_sigkilled_mid_run_then_restart_recovers_every_job(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    env = {"FORKQ_STALE_AFTER": "5"}
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"], env=env)
    kids = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 0.05} for _ in range(2000)])
    wait_for(lambda: len(runs(r)) >= 200, timeout=60, message="200 jobs done")
    f.signal(signal.SIGSTOP)  # the master cannot react while everything dies
    for pid in kids | f.child_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    f.signal(signal.SIGKILL)
    f.wait(10)
    killed_at = time.monotonic()
    orphans = {k.decode() for k in r.scan_iter(match=KEYS.inprogress("") + "*")}
    stranded = inprogress_total(r)
    assert stranded > 0
    g = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"], env=env, tag="2")
    wait_for(lambda: not any(r.exists(k) for k in orphans), timeout=120, interval=0.1,
             message="the dead pools' in-progress jobs requeued")
    recovered_after = time.monotonic() - killed_at
    done = wait_settled(r, jids, g, timeout=120)
    all_done_after = time.monotonic() - killed_at
    lost = set(jids) - set(done) - set(dead_jids(r))
    duplicates = sum(v - 1 for v in done.values())
    assert g.stop() == 0
    print(f"\nKILL-ALL: jobs={len(jids)} stranded={stranded} recovered_in={recovered_after:.1f}s "
          f"all_done_in={all_done_after:.1f}s lost={len(lost)} duplicates={duplicates} "
          f"stale_after={env['FORKQ_STALE_AFTER']}s")
    assert lost == set()
    assert duplicates <= stranded
    assert inprogress_total(r) == 0


def test_master_alone_sigkilled_children_stop_requeue_and_a_restart_finishes_the_work(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """Children notice their master is gone, stop gracefully and give their jobs back."""
    mod = write_jobs(tmp_path)
    env = {"FORKQ_STALE_AFTER": "600"}  # no reaper help: only the children's own requeue counts
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4", "--shutdown-timeout", "1"],
                    env=env)
    kids = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 2.0 if i % 10 == 0 else 0.1} for i in range(160)])
    wait_for(lambda: len(runs(r)) >= 20 and inprogress_total(r) > 0, timeout=60, message="work under way")
    f.signal(signal.SIGKILL)
    f.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: not any(alive(p) for p in kids), timeout=30, message="orphaned children exit")
    children_gone = time.monotonic() - killed_at
    assert inprogress_total(r) == 0, "orphaned children left jobs in progress"
    assert r.scard(KEYS.processes) == 0
    g = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"], env=env, tag="2")
    done = wait_settled(r, jids, g, timeout=120)
    lost = set(jids) - set(done) - set(dead_jids(r))
    assert lost == set()
    assert g.stop() == 0
    print(f"\nMASTER-ONLY-KILL: jobs={len(jids)} children_exited_in={children_gone:.1f}s lost={len(lost)} "
          f"duplicates={sum(v - 1 for v in done.values())}")


def test_redis_restarted_twice_under_the_cli_loses_nothing_and_no_child_crashes(
        tmp_path: Path, forkqs: list[ForkqProc]) -> None:
    from redis_server import RedisServer

    server = RedisServer(extra=["--appendonly", "yes", "--appendfsync", "everysec"]).start()
    try:
        r = server.client()
        mod = write_jobs(tmp_path)
        f = start_forkq(forkqs, tmp_path, server.url, mod, ["-p", "2", "-c", "4"])
        kids = wait_children_ready(f, r, 2)
        jids = enqueue(server.url, "slow", [{"s": 0.002} for _ in range(5000)])
        for n in (1, 2):
            wait_for(lambda c=r, t=1000 * n: c.hlen("test:runs") > t, 60, interval=0.05,
                     message="progress before a restart")
            server.restart()
            r = server.client()
        done = wait_settled(r, jids, f, timeout=120)
        lost = set(jids) - set(done)
        duplicates = sum(v - 1 for v in done.values())
        assert lost == set()
        assert f.child_pids() == kids, "children were replaced: a crash loop"
        wait_for(lambda: inprogress_total(r) == 0, timeout=30, message="in-progress empty")
        assert f.stop() == 0
        print(f"\nCLI-REDIS-RESTART: jobs={len(jids)} restarts=2 lost={len(lost)} duplicates={duplicates} "
              f"children_replaced=0")
    finally:
        server.cleanup()


def test_redis_unreachable_at_start_exits_non_zero_with_one_clear_line(tmp_path: Path) -> None:
    mod = write_jobs(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FORKQ_LOG_LEVEL="WARNING")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "forkq", "-p", "1", "--redis-wait", "3", "--redis",
                           "redis://:Top-Secret-9@127.0.0.1:1/0", mod],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    print(f"\nREDIS-DOWN-AT-START: exit={proc.returncode} after {took:.1f}s")
    assert proc.returncode == 5 and took >= 3.0  # it kept trying for the bounded wait
    # The start failed: its held log lines (waiting for Redis, children exiting) are
    # dropped, the one error line says it all (issue 10: no noise before it).
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("forkq: error:"), proc.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in errors[0] and "gave up after 3s" in errors[0]
    assert "Traceback" not in proc.stderr and "Top-Secret-9" not in proc.stderr + proc.stdout


def test_redis_that_comes_up_shortly_after_the_cli_starts_is_waited_for(
        tmp_path: Path, forkqs: list[ForkqProc]) -> None:
    from redis_server import RedisServer, free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, url, mod, ["-p", "1", "-c", "2"])
    time.sleep(2.0)
    server = RedisServer(port=port).start()
    try:
        r = server.client()
        jids = enqueue(url, "record", [{}] * 10)
        wait_settled(r, jids, f, timeout=60)
        assert f.stop() == 0
    finally:
        server.cleanup()


# -- handlers that misbehave -------------------------------------------------------------

BAD_HANDLERS = '''
import ctypes
import signal

_hog = []


@pool.job(timeout=0.5)
def hang(job):
    R().hincrby("test:starts", job.id, 1)
    while True:          # ignores JobTimeout: a C-level sleep keeps it from landing promptly
        try:
            time.sleep(3600)
        except BaseException:
            pass


@pool.job
def exit_now(job):
    R().hincrby("test:starts", job.id, 1)
    os._exit(3)


@pool.job
def segfault(job):
    R().hincrby("test:starts", job.id, 1)
    ctypes.string_at(0)


@pool.job
def leak(job):
    _hog.append(bytearray(64 * 1024 * 1024))
    for i in range(0, len(_hog[-1]), 4096):
        _hog[-1][i] = 1
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:pids", job.id, os.getpid())
    p.execute()
'''


def _bad_handler_run(tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc],
                     bad: str, args: list[str], env: dict[str, str] | None = None
                     ) -> tuple[ForkqProc, list[str], str, dict[str, int]]:
    mod = write_jobs(tmp_path, BAD_HANDLERS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "3", *args], env=env)
    wait_children_ready(f, r, 2)
    good = enqueue(redis_url, "record", [{"i": i} for i in range(300)])
    (culprit,) = enqueue(redis_url, bad, [{}])
    good += enqueue(redis_url, "slow", [{"s": 0.02} for _ in range(300)])
    done = wait_settled(r, good, f, timeout=90)
    return f, good, culprit, done


def test_handler_that_never_returns_is_failed_by_hard_timeout_and_nothing_else_is_lost(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    f, good, culprit, done = _bad_handler_run(tmp_path, redis_url, r, forkqs, "hang", [],
                                              env={"FORKQ_HARD_TIMEOUT_GRACE": "1"})
    entry = wait_for(lambda: r.zrange(KEYS.retry, 0, -1), timeout=30, message="hung job in retry")
    data = orjson.loads(entry[0])
    assert data["jid"] == culprit and data["error_class"] == "JobTimeout"
    assert set(good) <= set(done)
    assert f.stop() == 0
    assert inprogress_total(r) == 0
    print(f"\nHANG: good={len(good)} lost={len(set(good) - set(done))} "
          f"duplicates={sum(done[j] - 1 for j in good)} culprit=retry({data['error_message']!r})")


@pytest.mark.parametrize("bad", ["exit_now", "segfault"])
def test_handler_that_kills_its_child_ends_as_poison_and_nothing_else_is_lost(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc], bad: str) -> None:
    f, good, culprit, done = _bad_handler_run(tmp_path, redis_url, r, forkqs, bad, [])
    dead = wait_for(lambda: dead_jids(r).get(culprit), timeout=60, message="culprit in dead")
    assert dead["error_class"] == "Poison"
    assert runs(r, "test:starts")[culprit] == 4
    graves = dead_jids(r)
    # Every good job completed: jobs that shared a child with the culprit are not buried
    # with it (a job that saw two crashes runs apart from other suspects).
    buried = {j for j in good if j not in done}
    assert buried == set(), {j: graves.get(j, {}).get("error_class") for j in buried}
    assert f.proc.poll() is None
    assert f.stop() == 0
    assert inprogress_total(r) == 0 and r.llen(KEYS.queue(bad)) == 0
    print(f"\n{bad.upper()}: good={len(good)} lost={len(buried - set(graves))} "
          f"innocents_buried_as_poison={len(buried)} "
          f"duplicates={sum(done[j] - 1 for j in good if j in done)} culprit=dead(Poison after 4 runs)")


def test_handler_leaking_past_max_memory_recycles_its_child_and_nothing_is_lost(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    f, good, culprit, done = _bad_handler_run(tmp_path, redis_url, r, forkqs, "leak",
                                              ["--max-memory-per-child", "60"])
    assert culprit in done
    wait_for(lambda: "recycling child" in f.log(), timeout=30, message="the leaking child recycled")
    leaker = int(r.hget("test:pids", culprit))
    wait_for(lambda: leaker not in f.child_pids(), timeout=30, message="leaking child gone")
    assert len(f.child_pids()) == 2 or wait_children_ready(f, r, 2)
    assert set(good) <= set(done)
    assert f.stop() == 0
    assert inprogress_total(r) == 0
    print(f"\nLEAK: good={len(good)} lost={len(set(good) - set(done))} "
          f"duplicates={sum(done[j] - 1 for j in good)} culprit=done, child recycled")


def test_term_during_a_burst_exits_zero_and_requeues_every_unfinished_job(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4", "--shutdown-timeout", "0.5"])
    wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 0.3 if i % 2 else 5.0} for i in range(3000)])
    wait_for(lambda: len(runs(r)) >= 20, timeout=60, message="burst under way")
    f.signal(signal.SIGTERM)
    assert f.wait(60) == 0
    done = set(runs(r))
    queued = {orjson.loads(p)["jid"] for p in r.lrange(KEYS.queue("slow"), 0, -1)}
    started_not_done = set(runs(r, "test:starts")) - done
    print(f"\nTERM-BURST: jobs={len(jids)} done={len(done)} requeued_or_never_taken={len(queued)} "
          f"interrupted={len(started_not_done)} lost={len(set(jids) - done - queued)}")
    assert set(jids) == done | queued
    assert started_not_done and started_not_done <= queued
    assert inprogress_total(r) == 0
    assert r.scard(KEYS.processes) == 0


def test_jobs_that_share_a_child_with_a_poison_job_are_not_buried_with_it(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    """One child, three threads: two innocent jobs and one that kills its process are
    fetched together after every crash.  Only the culprit may end as Poison."""
    mod = write_jobs(tmp_path, BAD_HANDLERS)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "3"])
    wait_children_ready(f, r, 1)
    innocent = enqueue(redis_url, "slow", [{"s": 0.5}, {"s": 0.5}])
    (culprit,) = enqueue(redis_url, "exit_now", [{}])
    dead = wait_for(lambda: dead_jids(r).get(culprit), timeout=60, message="culprit in dead")
    assert dead["error_class"] == "Poison"
    done = wait_settled(r, innocent, f, timeout=60)
    buried = {j: dead_jids(r)[j]["error_class"] for j in innocent if j in dead_jids(r)}
    assert buried == {}, f"innocent jobs buried with the poison job: {buried}"
    assert all(done[j] >= 1 for j in innocent)
    assert f.stop() == 0

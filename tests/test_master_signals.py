"""Signals to the master: TERM/INT, TSTP, HUP, TTIN/TTOU, and Ctrl-C to the whole group."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import redis
from procs import (
    KEYS,
    ForkqProc,
    enqueue,
    identity_of,
    inprogress_total,
    live_identities,
    runs,
    start_forkq,
    title,
    wait_all_done,
    wait_children_ready,
    write_jobs,
)
from redis_server import wait_for


def test_term_while_jobs_run_exits_zero_and_requeues_unfinished_jobs(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    shutdown = 1.0
    f = start_forkq(forkqs, tmp_path, redis_url, mod,
                    ["-p", "2", "-c", "2", "--shutdown-timeout", str(shutdown)])
    wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 4.0}] * 8)
    wait_for(lambda: len(runs(r, "test:starts")) == 4, timeout=20, message="4 jobs running")
    f.signal(signal.SIGTERM)
    # Bounded wait: the shutdown timeout, the master's kill grace and slack for a loaded box.
    assert f.wait(shutdown + 5 + 10) == 0
    assert inprogress_total(r) == 0
    assert runs(r) == {}  # nothing finished: all 4 were interrupted
    assert r.llen(KEYS.queue("slow")) == 8  # 4 never started + 4 requeued
    assert r.zcard(KEYS.retry) == 0 and r.zcard(KEYS.dead) == 0
    assert r.scard(KEYS.processes) == 0
    assert "requeued" in f.log()
    # A new master runs every one of them exactly once.
    g = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "8"], tag="2")
    done = wait_all_done(r, jids, g)
    assert all(v == 1 for v in done.values())
    assert g.stop() == 0


def test_ctrl_c_to_the_process_group_stops_gracefully(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                       forkqs: list[ForkqProc]) -> None:
    """A terminal sends SIGINT to every process of the group; children wait for the master."""
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2", "--shutdown-timeout", "20"])
    wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 1.0}] * 4)
    wait_for(lambda: len(runs(r, "test:starts")) == 4, timeout=20, message="4 jobs running")
    os.killpg(f.pid, signal.SIGINT)  # our own session: master + its children only
    assert f.wait(30) == 0
    # Running jobs finished (children were not interrupted by the terminal's signal).
    done = runs(r)
    assert set(done) == set(jids) and all(v == 1 for v in done.values())
    assert inprogress_total(r) == 0


def test_tstp_makes_children_quiet(tmp_path: Path, redis_url: str, r: redis.Redis,
                                   forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"])
    kids = wait_children_ready(f, r, 2)
    first = enqueue(redis_url, "slow", [{"s": 1.0}] * 4)
    wait_for(lambda: len(runs(r, "test:starts")) == 4, timeout=20, message="4 jobs running")
    f.signal(signal.SIGTSTP)
    wait_for(lambda: all(r.hget(KEYS.process(i.decode()), "quiet") == b"true"
                         for i in r.smembers(KEYS.processes)), timeout=20, message="quiet beats")
    later = enqueue(redis_url, "record", [{}] * 5)
    wait_all_done(r, first, f)  # running jobs finish
    # A child started while the master is quiet is born quiet.
    f.signal(signal.SIGTTIN)
    wait_children_ready(f, r, 3)
    # No fixed wait: every child beats twice more (a beat is 0.5 s, an idle poll 0.2 s,
    # so a fetching child would have taken the jobs by then).
    idents = live_identities(r)
    assert len(idents) == 3
    for _ in range(2):
        before = {i: r.zscore(KEYS.pools, i) for i in idents}
        wait_for(lambda b=before: all(r.zscore(KEYS.pools, i) != s for i, s in b.items()),
                 timeout=20, message="a beat from every child")
    assert r.llen(KEYS.queue("record")) == 5
    assert not any(j in runs(r) for j in later)
    assert kids < f.child_pids()  # still running, just quiet
    assert all(r.hget(KEYS.process(i.decode()), "quiet") == b"true" for i in r.smembers(KEYS.processes))
    assert f.stop() == 0


def test_ttin_and_ttou_change_the_number_of_children(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                     forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    one = wait_children_ready(f, r, 1)
    f.signal(signal.SIGTTIN)
    two = wait_children_ready(f, r, 2)
    assert one < two
    f.signal(signal.SIGTTIN)
    wait_children_ready(f, r, 3)
    # One at a time: a second signal sent before the first is handled would merge with it.
    f.signal(signal.SIGTTOU)
    wait_for(lambda: len(f.child_pids()) == 2, timeout=30, message="two children")
    f.signal(signal.SIGTTOU)
    wait_for(lambda: len(f.child_pids()) == 1 and r.scard(KEYS.processes) == 1, timeout=30,
             message="back to one child")
    assert f.child_pids() == one  # the newest children went first
    jids = enqueue(redis_url, "record", [{}] * 20)
    wait_all_done(r, jids, f)
    assert f.stop() == 0


VERSIONED = '''
VERSION = "{v}"


@pool.job
def versioned(job):
    _pause(job.arg_float("s"))
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:version", job.id, VERSION)
    p.execute()
'''


def test_hup_rolls_children_onto_new_code_without_losing_jobs(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, VERSIONED.format(v="v1"))
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"])
    old = wait_children_ready(f, r, 2)
    first = enqueue(redis_url, "versioned", [{"s": 0.3}] * 40)
    wait_for(lambda: len(runs(r)) >= 4, timeout=20, message="jobs running")
    write_jobs(tmp_path, VERSIONED.format(v="v2"))
    f.signal(signal.SIGHUP)
    most = 0

    def replaced() -> bool:
        nonlocal most
        pids = f.child_pids()
        most = max(most, len(pids))
        return not (pids & old) and len(pids) == 2

    wait_for(replaced, timeout=60, interval=0.005, message="every child replaced")
    assert most <= 3, most  # one at a time: a new child, then its old one stops
    wait_children_ready(f, r, 2)
    second = enqueue(redis_url, "versioned", [{"s": 0.0}] * 10)
    done = wait_all_done(r, first + second, f)
    assert all(v == 1 for v in done.values()), "a job ran twice or was lost"
    versions = {k.decode(): v.decode() for k, v in r.hgetall("test:version").items()}
    assert {versions[j] for j in second} == {"v2"}
    assert "v1" in {versions[j] for j in first}
    assert f.stop() == 0
    assert inprogress_total(r) == 0


def test_hup_with_broken_new_code_keeps_the_running_children(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path, VERSIONED.format(v="v1"))
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2"])
    old = wait_children_ready(f, r, 1)
    (tmp_path / f"{mod}.py").write_text("this is not python(\n")
    f.signal(signal.SIGHUP)
    wait_for(lambda: "reloading" in f.log() and "failed" in f.log(), timeout=20, message="reload error logged")
    jids = enqueue(redis_url, "versioned", [{"s": 0.0}] * 5)
    wait_all_done(r, jids, f)
    assert f.child_pids() == old
    assert f.stop() == 0


def test_second_term_kills_children_at_once_and_requeues_their_jobs(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "2", "--shutdown-timeout", "120"])
    wait_children_ready(f, r, 1)
    jids = enqueue(redis_url, "slow", [{"s": 60.0}] * 2)
    wait_for(lambda: len(runs(r, "test:starts")) == 2, timeout=20, message="2 jobs running")
    f.signal(signal.SIGTERM)
    wait_for(lambda: "stopping" in title(psutil.Process(f.pid)), timeout=10,
             message="master stopping")
    f.signal(signal.SIGTERM)
    assert f.wait(30) == 0  # far less than the 120 s shutdown timeout
    assert inprogress_total(r) == 0
    assert sorted(r.lrange(KEYS.queue("slow"), 0, -1)) and r.llen(KEYS.queue("slow")) == len(jids)


def test_sidekiq_web_ui_stop_on_a_child_stops_the_service_gracefully(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"])
    kids = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 1.0}] * 2)
    wait_for(lambda: len(runs(r, "test:starts")) == 2, timeout=20, message="2 jobs running")
    # What Sidekiq's Web UI does for "Stop": push TERM to the process's signal list.
    r.lpush(KEYS.process_signals(identity_of(r, sorted(kids)[0])), "TERM")
    assert f.wait(30) == 0
    assert "Web UI asked child" in f.log()
    done = runs(r)
    assert set(done) == set(jids)  # running jobs finished first
    assert inprogress_total(r) == 0

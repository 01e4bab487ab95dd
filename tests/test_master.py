"""The prefork master for real: ``python -m forkq`` as a subprocess, real signals, real Redis.

Each test writes a small jobs module to ``tmp_path`` (see tests/procs.py, which owns
the process helpers and documents the ``test:*`` hashes the jobs write).  The names
re-exported here keep old ``from test_master import ...`` lines working; new code
imports from ``procs``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import redis
from procs import (  # noqa: F401  (re-exported for modules that import from test_master)
    FAST_ENV,
    JOBS_HEADER,
    KEYS,
    NS,
    ChildKiller,
    ForkqProc,
    alive,
    dead_jids,
    enqueue,
    forkq_procs,
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

import forkq
from forkq import reaper

# ---------------------------------------------------------------------------------------


def test_two_thousand_jobs_run_each_exactly_once_through_two_children(tmp_path: Path, redis_url: str,
                                                                      r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    jids = enqueue(redis_url, "record", [{"i": i} for i in range(2000)])
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "4"])
    done = wait_all_done(r, jids, f)
    assert set(done) == set(jids)
    assert all(v == 1 for v in done.values()), {k: v for k, v in done.items() if v != 1}
    # The master stays single-threaded and holds no Redis connection while all is well.
    master = psutil.Process(f.pid)
    assert master.num_threads() == 1
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    assert not [c for c in master.net_connections(kind="tcp") if c.raddr and c.raddr.port == port]
    # Process titles say who is who.
    wait_for(lambda: title(master) == "forkq master tm [2 children] running",
             timeout=10, message="master title")
    wait_for(lambda: sorted(title(p) for p in f.children()) ==
             ["forkq child 1 tm [0/4 busy]", "forkq child 2 tm [0/4 busy]"],
             timeout=10, message="idle child titles")
    # Both children took part (2,000 jobs cannot all go to one fetcher's batches first).
    assert len({int(p) for p in r.hvals("test:pids")}) == 2
    assert f.stop() == 0
    assert r.llen(KEYS.queue("record")) == 0
    assert inprogress_total(r) == 0
    assert r.scard(KEYS.processes) == 0  # children removed their liveness records
    # (stat:processed is not compared exactly: PoolRuntime.stop can race its own
    # housekeeper's last beat, losing or repeating one flush; reported to the lead.)
    assert int(r.get(KEYS.stat_processed) or 0) > 0
    assert "Traceback" not in f.log()


def test_sigkilled_child_has_its_jobs_requeued_at_once_and_is_replaced(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    # Stale-after far away: only the master's reaping can explain a quick requeue.
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "3"],
                    env={"FORKQ_STALE_AFTER": "600"})
    before = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 1.0}] * 30)
    victim = sorted(before)[0]
    ident = identity_of(r, victim)

    def running() -> list[bytes] | None:
        fields = r.hkeys(KEYS.inprogress(ident))
        return fields if fields and all(r.hexists("test:starts", x) for x in fields) else None

    held = wait_for(running, timeout=20, message="victim running jobs")
    t0 = time.monotonic()  # before the kill: the master may run before kill() returns to us
    os.kill(victim, signal.SIGKILL)
    while r.exists(KEYS.inprogress(ident)):
        assert time.monotonic() - t0 < 10, "in-progress hash of the killed child not requeued"
        time.sleep(0.001)
    elapsed_ms = (time.monotonic() - t0) * 1000
    print(f"\nSIGKILL -> {len(held)} in-progress jobs requeued in {elapsed_ms:.1f} ms")
    assert ident not in live_identities(r)  # its liveness records went with it
    after = wait_children_ready(f, r, 2)
    assert victim not in after and len(after - before) == 1
    done = wait_all_done(r, jids, f)
    assert all(v == 1 for v in done.values())
    starts = runs(r, "test:starts")
    held_jids = {h.decode() for h in held}
    # The jobs it was running ran again elsewhere (started twice, completed once).
    assert held_jids and all(starts[j] >= 2 for j in held_jids)
    assert f.stop() == 0
    assert inprogress_total(r) == 0


def test_whole_master_sigkilled_then_next_forkq_recovers_every_inprogress_job(
        tmp_path: Path, redis_url: str, r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    env = {"FORKQ_STALE_AFTER": "2"}
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"], env=env)
    kids = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 1.5}] * 10)
    wait_for(lambda: inprogress_total(r) == 4, timeout=20, message="4 jobs in progress")
    # Freeze the master first so it cannot react, then kill everything.
    f.signal(signal.SIGSTOP)
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
    f.signal(signal.SIGKILL)
    f.wait(10)
    assert inprogress_total(r) == 4
    # Wait until those pools' beats are older than the staleness window.
    wait_for(lambda: all(s < time.time() - 2.5 for _, s in r.zrange(KEYS.pools, 0, -1, withscores=True)),
             timeout=20, message="beats stale")
    g = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "4"], env=env, tag="2")
    done = wait_all_done(r, jids, g)
    assert all(v == 1 for v in done.values())
    assert g.stop() == 0
    assert inprogress_total(r) == 0
    assert r.zcard(KEYS.pools) == 0
    assert "dead pools at start" in g.log() or "recovered" in g.log()


def test_child_with_late_heartbeat_keeps_its_jobs(tmp_path: Path, redis_url: str, r: redis.Redis,
                                                   forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    config = forkq.Config(stale_after=4.0, heartbeat_interval=0.5)
    f = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "2", "-c", "2"],
                    env={"FORKQ_STALE_AFTER": "4"})
    kids = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 1.0}] * 8)
    victim = sorted(kids)[0]
    ident = identity_of(r, victim)
    wait_for(lambda: r.hlen(KEYS.inprogress(ident)) == 2, timeout=20, message="victim busy")
    os.kill(victim, signal.SIGSTOP)
    try:
        held = set(r.hkeys(KEYS.inprogress(ident)))
        end = time.monotonic() + 2.5  # several beats missed, still inside the 4 s window
        while time.monotonic() < end:
            assert reaper.reap_stale_pools(r, KEYS, config) == []
            time.sleep(0.2)
        assert set(r.hkeys(KEYS.inprogress(ident))) == held
    finally:
        os.kill(victim, signal.SIGCONT)
    done = wait_all_done(r, jids, f)
    assert all(v == 1 for v in done.values())
    # Nobody ran the stopped child's jobs a second time.
    assert all(v == 1 for v in runs(r, "test:starts").values())
    assert f.child_pids() == kids
    assert f.stop() == 0


def test_children_stop_by_themselves_when_the_master_dies(tmp_path: Path, redis_url: str,
                                                           r: redis.Redis, forkqs: list[ForkqProc]) -> None:
    mod = write_jobs(tmp_path)
    f = start_forkq(forkqs, tmp_path, redis_url, mod,
                    ["-p", "2", "-c", "2", "--shutdown-timeout", "0.5"])
    kids = wait_children_ready(f, r, 2)
    jids = enqueue(redis_url, "slow", [{"s": 5.0}] * 6)
    wait_for(lambda: len(runs(r, "test:starts")) == 4, timeout=20, message="4 jobs running")
    f.signal(signal.SIGKILL)
    f.wait(10)

    def gone() -> bool:
        return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                       for p in kids)

    wait_for(gone, timeout=20, message="orphaned children exit")
    # They requeued what they could not finish and removed their liveness records.
    assert inprogress_total(r) == 0
    assert r.llen(KEYS.queue("slow")) == 6
    assert r.scard(KEYS.processes) == 0
    g = start_forkq(forkqs, tmp_path, redis_url, mod, ["-p", "1", "-c", "6"], tag="2")
    done = wait_all_done(r, jids, g)
    assert all(v == 1 for v in done.values())
    assert g.stop() == 0

"""The prefork master for real: ``python -m forkq`` as a subprocess, real signals, real Redis.

Each test writes a small jobs module to ``tmp_path``.  Jobs record what they did
in plain Redis hashes outside the forkq namespace (``test:runs`` jid -> completed
runs, ``test:starts`` jid -> starts, ``test:pids`` jid -> pid of the last run),
so "each exactly once" and "none lost" are read straight from Redis.

The helpers here (``ForkqProc``, ``write_jobs``) are shared by the other
``test_master_*`` files and by ``test_cli_run``/``test_systemd``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
import redis
from redis_server import wait_for

import forkq
from forkq import reaper
from forkq.keys import Keys

NS = "tm"
KEYS = Keys(NS)

# Fast timings for tests; documented in forkq/cli.py.
FAST_ENV = {
    "FORKQ_HEARTBEAT_INTERVAL": "0.5",
    "FORKQ_IDLE_POLL_INTERVAL": "0.2",
    "FORKQ_STALE_AFTER": "30",
    "FORKQ_LEASE_TTL": "10",
    "FORKQ_LOG_LEVEL": "INFO",
}

JOBS_HEADER = '''
import os
import time

import redis

import forkq

pool = forkq.WorkerPool(namespace="{ns}")
_conns = {{}}


def R():
    """One connection per process (children are forked)."""
    c = _conns.get(os.getpid())
    if c is None:
        c = _conns[os.getpid()] = redis.Redis.from_url(os.environ["TEST_REDIS_URL"])
    return c


def _pause(seconds):
    # Small sleeps: a Python-level loop, so JobTimeout/Shutdown land promptly.
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(0.02)


@pool.job
def record(job):
    p = R().pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:pids", job.id, os.getpid())
    p.execute()


@pool.job
def slow(job):
    r = R()
    r.hincrby("test:starts", job.id, 1)
    _pause(job.arg_float("s"))
    p = r.pipeline(transaction=False)
    p.hincrby("test:runs", job.id, 1)
    p.hset("test:pids", job.id, os.getpid())
    p.execute()
'''


def write_jobs(tmp_path: Path, extra: str = "", name: str = "tjobs", ns: str = NS) -> str:
    """Write the standard jobs module (+ ``extra`` code) to ``tmp_path``; return its name."""
    (tmp_path / f"{name}.py").write_text(JOBS_HEADER.format(ns=ns) + textwrap.dedent(extra))
    return name


class ForkqProc:
    """``python -m forkq ... MODULE`` in its own session, stderr to a log file."""

    def __init__(self, tmp_path: Path, redis_url: str, module: str, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, tag: str = "") -> None:
        self.log_path = tmp_path / f"forkq{tag}.log"
        full_env = dict(os.environ)
        full_env.update(FAST_ENV)
        full_env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), full_env.get("PYTHONPATH", "")])
        full_env["PYTHONDONTWRITEBYTECODE"] = "1"
        full_env["TEST_REDIS_URL"] = redis_url
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("WATCHDOG_USEC", None)
        full_env.update(env or {})
        self.cmd = [sys.executable, "-m", "forkq", *args, "--redis", redis_url, module]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=tmp_path, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[psutil.Process]:
        try:
            # Children only: not the short-lived recovery helpers (forkq/recovery.py).
            return [p for p in psutil.Process(self.pid).children() if not _is_helper(p)]
        except psutil.NoSuchProcess:
            return []

    def child_pids(self) -> set[int]:
        return {p.pid for p in self.children()}

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"forkq did not exit in {timeout}s; log:\n{self.log()[-4000:]}") from None

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill_all(self) -> None:
        """Clean-up: SIGKILL the master and its children (by pid) if still there."""
        if self.proc.poll() is None:
            kids = self.children()
            for p in [psutil.Process(self.pid), *kids]:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            self.proc.wait(10)
        self._log.close()


def _is_helper(p: psutil.Process) -> bool:
    """Not a child: a recovery helper, or a fork too young to say (its title is still the
    master's).  Children name themselves ``forkq child ...`` before they beat."""
    try:
        return not " ".join(a for a in p.cmdline() if a).startswith("forkq child")
    except psutil.Error:
        return True


def forkq_procs() -> Iterator[list[ForkqProc]]:
    """Body of the ``forkqs`` fixture (each test module declares it with this)."""
    started: list[ForkqProc] = []
    yield started
    for f in started:
        f.kill_all()


@pytest.fixture
def forkqs() -> Iterator[list[ForkqProc]]:
    """Masters started by a test are killed afterwards even when it fails."""
    yield from forkq_procs()


def start_forkq(forkqs: list[ForkqProc], tmp_path: Path, redis_url: str, module: str,
                args: Sequence[str] = (), env: dict[str, str] | None = None, tag: str = "") -> ForkqProc:
    f = ForkqProc(tmp_path, redis_url, module, args, env, tag)
    forkqs.append(f)
    return f


def title(p: psutil.Process) -> str:
    """A process title as ``ps`` shows it (setproctitle pads argv with NULs)."""
    return " ".join(a for a in p.cmdline() if a)


def live_identities(r: redis.Redis) -> set[str]:
    return {m.decode() for m in r.smembers(KEYS.processes)}


def wait_children_ready(f: ForkqProc, r: redis.Redis, n: int, timeout: float = 30.0) -> set[int]:
    """Wait until ``n`` children of this master beat; return their pids."""
    def ready() -> set[int] | None:
        if f.proc.poll() is not None:
            raise AssertionError(f"forkq exited with {f.proc.returncode}:\n{f.log()[-4000:]}")
        pids = f.child_pids()
        beating = {int(i.split(":")[1]) for i in live_identities(r)}
        ok = pids & beating
        return ok if len(pids) == n and len(ok) == n else None

    return wait_for(ready, timeout=timeout, interval=0.05, message=f"{n} children ready")


def identity_of(r: redis.Redis, pid: int) -> str:
    for ident in live_identities(r):
        if int(ident.split(":")[1]) == pid:
            return ident
    raise AssertionError(f"no live pool for pid {pid}")


def runs(r: redis.Redis, key: str = "test:runs") -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(key).items()}


def inprogress_total(r: redis.Redis) -> int:
    return sum(r.hlen(k) for k in r.scan_iter(match=KEYS.inprogress("") + "*"))


def enqueue(redis_url: str, name: str, args_list: list[dict[str, object]]) -> list[str]:
    e = forkq.Enqueuer(redis_url, NS)
    try:
        out: list[str] = []
        for i in range(0, len(args_list), 500):
            out += [j.id for j in e.enqueue_many(name, args_list[i:i + 500])]
        return out
    finally:
        e.close()


def wait_all_done(r: redis.Redis, jids: list[str], f: ForkqProc | None = None,
                  timeout: float = 60.0) -> dict[str, int]:
    def done() -> dict[str, int] | None:
        if f is not None and f.proc.poll() is not None:
            raise AssertionError(f"forkq exited with {f.proc.returncode}:\n{f.log()[-4000:]}")
        got = runs(r)
        return got if all(j in got for j in jids) else None

    return wait_for(done, timeout=timeout, interval=0.05, message=f"{len(jids)} jobs done")


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
    config = forkq.Config(stale_after=4.0)
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

"""Process helpers for tests: real ``python -m forkq`` masters as subprocesses.

One module owns everything a test needs to drive the prefork CLI for real: write a
jobs module to ``tmp_path`` (``write_jobs``), start a master (``start_forkq`` into
the ``forkqs`` fixture's list, so it is SIGKILLed by pid even when the test fails),
wait for its children (``wait_children_ready``), signal or kill it, read its log,
and SIGKILL random children meanwhile (``ChildKiller``, the ``chaos`` fixture).

Jobs record what they did in plain Redis hashes outside the forkq namespace
(``test:runs`` jid -> completed runs, ``test:starts`` jid -> starts, ``test:pids``
jid -> pid of the last run), so "each exactly once" and "none lost" are read
straight from Redis.  The fixtures themselves live in conftest.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import psutil
import redis
from redis_server import wait_for

import forkq
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
    """Body of the ``forkqs`` fixture in conftest.py (kept as a function for old imports)."""
    started: list[ForkqProc] = []
    yield started
    for f in started:
        f.kill_all()


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


def dead_jids(r: redis.Redis, keys: Keys = KEYS) -> dict[str, dict]:
    """The dead set as jid -> entry (entries that are not JSON objects are skipped)."""
    out: dict[str, dict] = {}
    for raw in r.zrange(keys.dead, 0, -1):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(data, dict) and isinstance(data.get("jid"), str):
            out[data["jid"]] = data
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ChildKiller(threading.Thread):
    """SIGKILLs a random child of a master every ``every`` seconds until stopped.

    The one chaos helper: tests start it through the ``chaos`` fixture, which stops
    it at teardown even when the test fails.  ``kills`` counts signals delivered.
    """

    def __init__(self, f: ForkqProc, every: float = 0.25, seed: int = 6,
                 max_kills: int | None = None) -> None:
        super().__init__(daemon=True, name="chaos-child-killer")
        self.f = f
        self.every = every
        self.rnd = random.Random(seed)
        self.max_kills = max_kills
        self.kills = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            if self.f.proc.poll() is not None:
                return
            if self.max_kills is not None and self.kills >= self.max_kills:
                return
            kids = sorted(self.f.child_pids())
            if not kids:
                continue
            try:
                os.kill(self.rnd.choice(kids), signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                pass

    def stop(self) -> int:
        """Stop killing; return how many children were killed."""
        self.halt.set()
        if self.is_alive():
            self.join(10)
        return self.kills

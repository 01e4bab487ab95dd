"""Async benchmark: 10 ms ``asyncio.sleep`` jobs, 1,000 in flight per worker process,
forkq (``--async-concurrency 1000``, one child) against arq (``max_jobs=1000``, one
process).  A backlog of N jobs is filled first (not timed); the rate is measured
from the first completion to the last, so start-up is not counted.  Redis cost is
the server's ``total_commands_processed`` over the run, per job, minus the
harness's own polls and the completion counter's flushes (same for both).

    .venv/bin/python -m bench.async_bench [--n 20000] [--systems forkq,arq]

arq runs from bench/.peers-venv/arq (``python -m bench.run`` creates it), or the
interpreter named by ``BENCH_ARQ_PYTHON``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.peers._counter import DONE_KEY, URL_ENV

ROOT = Path(__file__).resolve().parent.parent
ARQ_PY = Path(os.environ.get("BENCH_ARQ_PYTHON", ROOT / "bench" / ".peers-venv" / "arq" / "bin" / "python"))
IN_FLIGHT = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(url: str, **extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e[URL_ENV] = url
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    e.pop("VIRTUAL_ENV", None)
    e.update(extra)
    return e


def fill(system: str, url: str, n: int) -> None:
    if system == "forkq":
        import forkq

        enq = forkq.Enqueuer(url, "bench")
        for i in range(0, n, 5000):
            enq.enqueue_many("asleep10", [{} for _ in range(min(5000, n - i))])
        enq.close()
        return
    code = f"from bench.peers.producers import make; p = make('arq', {url!r}); p.fill('sleep10', {n}); p.close()"
    subprocess.run([str(ARQ_PY), "-c", code], check=True, env=env(url), cwd=ROOT)


def worker(system: str, url: str) -> subprocess.Popen[bytes]:
    if system == "forkq":
        cmd = [sys.executable, "-m", "forkq", "-p", "1", "-c", "1", "--async-concurrency", str(IN_FLIGHT),
               "--redis", url, "bench.async_jobs"]
        e = env(url, FORKQ_LOG_LEVEL="WARNING")
    else:
        cmd = [str(ARQ_PY), "-m", "bench.peers.arq_tasks"]
        e = env(url, BENCH_THREADS=str(IN_FLIGHT))
    return subprocess.Popen(cmd, env=e, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def run(system: str, url: str, r: redis.Redis, n: int) -> tuple[float, float]:
    r.flushall()
    fill(system, url, n)
    before = int(r.info("stats")["total_commands_processed"])
    polls = 0
    proc = worker(system, url)
    try:
        first = None
        end = time.monotonic() + 300
        while time.monotonic() < end:
            got = int(r.get(DONE_KEY) or 0)
            polls += 1
            now = time.monotonic()
            if got and first is None:
                first, first_count = now, got
            if got >= n:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{system} worker exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.005)
        else:
            raise RuntimeError(f"{system}: {r.get(DONE_KEY)} of {n} done in 300 s")
        took = now - (first or now)
        after = int(r.info("stats")["total_commands_processed"])
        rate = (n - first_count) / took if took > 0 else float("inf")
        # The counter flushes (one INCRBY per 10 ms per process) and our polls are not the system's.
        flushes = (took + 1) * 100
        return rate, (after - before - 2 * polls - flushes) / n
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--systems", default="forkq,arq")
    a = ap.parse_args()
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="forkq-async-bench-")
    rs = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        r = redis.Redis.from_url(url)
        for _ in range(200):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        print(f"10 ms asyncio.sleep jobs, {IN_FLIGHT} in flight, one worker process, n={a.n}")
        print("| system | jobs/s | Redis client commands/job |")
        print("|---|---:|---:|")
        for system in a.systems.split(","):
            if system == "arq" and not ARQ_PY.exists():
                print(f"| arq | (no {ARQ_PY}: run python -m bench.run once) | |")
                continue
            rate, cost = run(system, url, r, a.n)
            print(f"| {system} | {rate:,.0f} | {cost:.2f} |", flush=True)
    finally:
        rs.kill()
        rs.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

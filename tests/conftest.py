"""Fixtures: one real redis-server per test session on a free loopback port, flushed
between tests; helpers to build pools with fast timings."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import redis

sys.path.insert(0, os.path.dirname(__file__))

from redis_server import RedisServer, wait_for  # noqa: E402

import forkq  # noqa: E402


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


__all__ = ["wait_for"]

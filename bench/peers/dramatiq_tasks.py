"""Dramatiq actors on the Redis broker (run by ``dramatiq bench.peers.dramatiq_tasks -p P -t T``)."""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers._counter import URL_ENV, done, work
from bench.peers._counter import probe as _probe

broker = RedisBroker(url=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def incr() -> None:
    work()
    done()


@dramatiq.actor(max_retries=0)
def sleep10incr() -> None:
    time.sleep(0.01)
    work()
    done()


@dramatiq.actor(max_retries=0)
def sleep100incr() -> None:
    time.sleep(0.1)
    work()
    done()


@dramatiq.actor(max_retries=0)
def noop() -> None:
    done()


@dramatiq.actor(max_retries=0)
def sleep10() -> None:
    time.sleep(0.01)
    done()


@dramatiq.actor(max_retries=0)
def probe(enqueued_at: float) -> None:
    _probe(enqueued_at)

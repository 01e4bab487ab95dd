"""huey tasks on RedisHuey (blocking BRPOP), run by ``huey_consumer ... -k thread -w T -q``."""

from __future__ import annotations

import os
import time

from huey import RedisHuey

from bench.peers._counter import URL_ENV, done, work
from bench.peers._counter import probe as _probe

huey = RedisHuey("bench", url=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))


@huey.task()
def incr() -> None:
    work()
    done()


@huey.task()
def sleep10incr() -> None:
    time.sleep(0.01)
    work()
    done()


@huey.task()
def sleep100incr() -> None:
    time.sleep(0.1)
    work()
    done()


@huey.task()
def noop() -> None:
    done()


@huey.task()
def sleep10() -> None:
    time.sleep(0.01)
    done()


@huey.task()
def probe(enqueued_at: float) -> None:
    _probe(enqueued_at)

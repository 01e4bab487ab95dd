"""Celery tasks on the Redis broker (prefork pool, default acks/prefetch, no result backend)."""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.peers._counter import URL_ENV, done, work
from bench.peers._counter import probe as _probe

app = Celery("bench", broker=os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop() -> None:
    done()


@app.task(name="sleep10")
def sleep10() -> None:
    time.sleep(0.01)
    done()


@app.task(name="incr")
def incr() -> None:
    work()
    done()


@app.task(name="sleep10incr")
def sleep10incr() -> None:
    time.sleep(0.01)
    work()
    done()


@app.task(name="sleep100incr")
def sleep100incr() -> None:
    time.sleep(0.1)
    work()
    done()


@app.task(name="probe")
def probe(enqueued_at: float) -> None:
    _probe(enqueued_at)

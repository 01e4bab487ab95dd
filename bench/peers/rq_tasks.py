"""RQ jobs (run by ``rq worker-pool``; RQ forks a work horse per job).

Counted with ``BENCH_COUNTER_DIRECT=1`` (the horse exits before a buffered
count could be flushed), see ``_counter``.
"""

from __future__ import annotations

import time

from bench.peers._counter import done, work
from bench.peers._counter import probe as _probe


def noop() -> None:
    done()


def sleep10() -> None:
    time.sleep(0.01)
    done()


def incr() -> None:
    work()
    done()


def sleep10incr() -> None:
    time.sleep(0.01)
    work()
    done()


def sleep100incr() -> None:
    time.sleep(0.1)
    work()
    done()


def probe(enqueued_at: float) -> None:
    _probe(enqueued_at)

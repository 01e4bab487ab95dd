"""The forkq job module the benchmark runs: ``forkq -p 2 -c 10 bench.jobs``.

``BENCH_NAMES=N`` (environment, read at import, so the prefork master and its
children agree) registers N no-op names ``noop_000``.. besides the standard
ones, for the 1-vs-100-job-names scaling workload.
"""

from __future__ import annotations

import os
import time

from forkq import Job, WorkerPool

from .peers._counter import done, probe, work

NAMESPACE = "bench"

pool = WorkerPool(NAMESPACE)


@pool.job("noop")
def noop(job: Job) -> None:
    done()


@pool.job("sleep10")
def sleep10(job: Job) -> None:
    time.sleep(0.01)
    done()


@pool.job("incr")
def incr(job: Job) -> None:
    work()
    done()


@pool.job("sleep10incr")
def sleep10incr(job: Job) -> None:
    time.sleep(0.01)
    work()
    done()


@pool.job("sleep100incr")
def sleep100incr(job: Job) -> None:
    time.sleep(0.1)
    work()
    done()


@pool.job("probe")
def probe_job(job: Job) -> None:
    # enqueued_at comes from the payload (set by Enqueuer), so no argument is needed.
    probe(job.enqueued_at)


def extra_names(count: int) -> list[str]:
    return [f"noop_{i:03d}" for i in range(count)]


def _register_extra() -> None:
    count = int(os.environ.get("BENCH_NAMES", "0") or 0)
    for name in extra_names(count):
        pool.register(name, noop)


_register_extra()
